"""Binary-mask operations that editing tasks share: dilation and connected components."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def dilate(mask: torch.Tensor, pixels: int = 1) -> torch.Tensor:
    """Binary dilation of a mask ``[..., H, W]`` by a ``(2 * pixels + 1)`` square; returns bool.

    The square (8-connected) element is what a one-cell margin around a region
    means on a raster; it runs as a max-pool, on any device.
    """
    if pixels <= 0:
        return mask.bool()
    shape = mask.shape
    x = mask.reshape(-1, 1, *shape[-2:]).float()
    return (F.max_pool2d(x, 2 * pixels + 1, stride=1, padding=pixels) > 0).reshape(shape)


def connected_components(mask: np.ndarray | torch.Tensor, *, diagonal: bool = True) -> list[np.ndarray]:
    """The connected regions of a binary ``[H, W]`` mask, each as a bool array, in scan order.

    :param diagonal: 8-connectivity (cells touching at a corner belong together); False for 4.
    """
    from scipy import ndimage

    array = mask.detach().cpu().numpy() if torch.is_tensor(mask) else np.asarray(mask)
    structure = np.ones((3, 3), dtype=bool) if diagonal else None
    labels, count = ndimage.label(array.astype(bool), structure=structure)
    return [labels == k for k in range(1, count + 1)]


def component_at(mask: np.ndarray | torch.Tensor, cell: tuple[int, int], *, diagonal: bool = True) -> np.ndarray:
    """The connected region of ``mask`` holding ``cell`` (empty where the cell is outside the mask)."""
    from scipy import ndimage

    array = mask.detach().cpu().numpy() if torch.is_tensor(mask) else np.asarray(mask)
    structure = np.ones((3, 3), dtype=bool) if diagonal else None
    labels, _ = ndimage.label(array.astype(bool), structure=structure)
    found = labels[cell]
    return labels == found if found else np.zeros(array.shape, dtype=bool)
