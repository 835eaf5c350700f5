"""Segmentation-consistency rewards, the held-out judge and the realism guard.

A generated image is consistent with its conditioning mask when a segmenter
trained on real images finds that mask in it. The training reward uses one
segmenter (a MONAI UNet); the judge that scores the benchmark is a second
one of another architecture and seed (a BasicUNet), which training never
queries, so reward hacking of the first shows up as a gap to the second.
"""

from __future__ import annotations

from typing import Any

import torch

from prefdiff.api import UserError


def _check(samples: torch.Tensor, conditions: Any, meta: dict[str, Any], name: str) -> torch.Tensor:
    if not torch.is_tensor(conditions):
        raise UserError(f"reward '{name}' needs the label masks as conditions ([B, 1, H, W] class indices), "
                        f"got {type(conditions).__name__}; use the 'decathlon' dataset's cond")
    if samples.ndim != 4 or samples.shape[1] != 1:
        raise UserError(f"reward '{name}' scores single-channel images [B, 1, H, W], got {tuple(samples.shape)}")
    if tuple(conditions.shape[-2:]) != tuple(samples.shape[-2:]):
        raise UserError(f"reward '{name}': masks of size {tuple(conditions.shape[-2:])} do not match images of "
                        f"size {tuple(samples.shape[-2:])}; generate at the dataset's resolution")
    if int(meta["resolution"]) != samples.shape[-1]:
        raise UserError(f"reward '{name}': the segmenter was trained at {meta['resolution']} px, the images are "
                        f"{samples.shape[-1]} px; retrain it at this resolution")
    return conditions.reshape(samples.shape[0], 1, *samples.shape[-2:])


def _segmentation_reward(checkpoint: str | None, soft: bool, name: str, sharpness: float = 3.0):
    from prefdiff_medical.segmenters import hard_dice, load_segmenter, soft_dice

    net, meta = load_segmenter(checkpoint)
    k = int(meta["num_classes"])

    def reward(samples: torch.Tensor, conditions: Any):
        masks = _check(samples, conditions, meta, name)
        net.to(samples.device)
        x = samples.float()
        if soft:
            scores = soft_dice(net(x), masks, k, sharpness=sharpness)
        else:
            with torch.no_grad():
                # Clamped to the display range the segmenter was trained on.
                scores = hard_dice(net(x.clamp(-1, 1)), masks, k)
        return scores.to(device=samples.device, dtype=samples.dtype), {"segmenter": meta["arch"]}

    return reward


def segmentation_consistency(checkpoint: str | None = None):
    """Mean Dice (MONAI DiceMetric) between a segmenter's mask of the image and the conditioning mask.

    :param checkpoint: a segmenter written by ``prefdiff medical train-segmenter``.
    """
    return _segmentation_reward(checkpoint, soft=False, name="segmentation_consistency")


def segmentation_consistency_soft(checkpoint: str | None = None, sharpness: float = 3.0):
    """The differentiable form of :func:`segmentation_consistency`: soft Dice of the softmax,
    for reward backpropagation (DRaFT, AlignProp, ReFL).

    :param checkpoint: a segmenter written by ``prefdiff medical train-segmenter``.
    :param sharpness: logits are scaled by it before the softmax (see ``soft_dice``).
    """
    if sharpness <= 0:
        raise UserError(f"reward option sharpness must be > 0, got {sharpness}")
    return _segmentation_reward(checkpoint, soft=True, name="segmentation_consistency_soft", sharpness=sharpness)


def segmentation_judge(checkpoint: str | None = None):
    """The held-out judge: :func:`segmentation_consistency` with a segmenter that training never sees
    (another architecture and seed; the benchmark trains a BasicUNet for it).

    :param checkpoint: the judge's segmenter checkpoint.
    """
    return _segmentation_reward(checkpoint, soft=False, name="segmentation_judge")


# ------------------------------------------------------------ realism ----


def _w1(a: torch.Tensor, b: torch.Tensor, quantiles: int = 512) -> float:
    """Wasserstein-1 distance between two 1-D empirical distributions (by quantiles)."""
    q = torch.linspace(0, 1, quantiles, dtype=torch.float64)
    return float((torch.quantile(a.double().flatten(), q) - torch.quantile(b.double().flatten(), q)).abs().mean())


def _gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    dx = x[..., :, 1:] - x[..., :, :-1]
    dy = x[..., 1:, :] - x[..., :-1, :]
    return (dx[..., :-1, :] ** 2 + dy[..., :, :-1] ** 2).sqrt()


def intensity_drift(samples: torch.Tensor, real: torch.Tensor) -> float:
    """The realism guard: how far generated images moved from real held-out ones.

    The sum of two Wasserstein-1 distances between pooled distributions: of
    pixel intensities (brightness and contrast, which reward hacking shifts
    first) and of gradient magnitudes (sharpness and noise texture). 0 means
    the same histograms; both terms are in intensity units of the [-1, 1] range.
    """
    samples, real = samples.detach().float().cpu(), real.detach().float().cpu()
    return _w1(samples, real) + _w1(_gradient_magnitude(samples), _gradient_magnitude(real))
