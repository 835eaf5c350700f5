"""Conditioners: the label mask as model input.

``mask_onehot`` turns a class-index mask into one channel per foreground class,
for channel concatenation (``conditioning="concat"``, ``cond_channels=K``).
``mask_controlnet`` gives diffusers' ControlNetModel what it consumes
(``conditioning="controlnet"`` on a ``unet2d_condition`` preset): the one-hot
mask as the control image and one context token embedding which classes the
mask contains.
"""

from __future__ import annotations

import torch
from torch import nn

from prefdiff.api import UserError


def _one_hot_foreground(mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    if mask.ndim == 3:
        mask = mask.unsqueeze(1)
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise UserError(f"a mask conditioner expects class-index masks [B, 1, H, W], got {tuple(mask.shape)}")
    index = mask.round().long()
    top = int(index.max()) if index.numel() else 0
    if top > num_classes:  # its one-hot would have no channel for it: the class would read as background
        raise UserError(f"a mask holds class {top}, but the mask conditioner has num_classes={num_classes}; set "
                        f"its option num_classes to {top} (fit: conditioner_options; sample and edit: "
                        f"--conditioner-option num_classes={top}) and the model preset's cond_channels to match")
    classes = torch.arange(1, num_classes + 1, device=mask.device).view(1, -1, 1, 1)
    return (index == classes).float()


class MaskOneHot(nn.Module):
    """Class-index masks ``[B, 1, H, W]`` -> ``[B, K, H, W]`` one-hot foreground channels.

    :param num_classes: foreground classes K (background gets no channel, so the
        all-zero null condition of classifier-free guidance means "no mask").
    """

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        if num_classes < 1:
            raise UserError(f"conditioner option num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        return _one_hot_foreground(mask, self.num_classes)


class MaskControlNet(nn.Module):
    """Class-index masks -> ``{"image": one-hot [B, K, H, W], "context": [B, 1, D]}`` for a ControlNet.

    :param num_classes: foreground classes K; the preset's ``cond_channels`` must equal it.
    :param context_dim: the preset's ``cross_attention_dim``.
    """

    def __init__(self, num_classes: int = 2, context_dim: int = 32) -> None:
        super().__init__()
        if num_classes < 1 or context_dim < 1:
            raise UserError(f"conditioner options num_classes and context_dim must be >= 1, got {num_classes}, {context_dim}")
        self.num_classes = num_classes
        # Which classes are present, as one learned token: the UNet's cross-attention
        # needs a context and the mask's content is the only one there is.
        self.presence = nn.Linear(num_classes, context_dim)

    def forward(self, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        image = _one_hot_foreground(mask, self.num_classes)
        present = image.amax(dim=(2, 3))
        return {"image": image, "context": self.presence(present).unsqueeze(1)}
