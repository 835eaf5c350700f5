"""Editing samples through a model's codec: SDEdit and masked inpainting, in pixel or latent space.

A field's model works on its samples directly, so an edit is the sampler's
:func:`~prefdiff.sampling.sdedit` or :func:`~prefdiff.sampling.inpaint`. A
latent pipeline edits the VAE's encoding of the image: the keep mask is
brought to the latent grid (a latent cell is regenerated when any pixel it
covers is), the edit runs there, and the decoded result is composited with
the input so every kept pixel is returned exactly.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from prefdiff.sampling import inpaint, sdedit


def latent_keep(keep: torch.Tensor, latent_shape: tuple[int, ...]) -> torch.Tensor:
    """A pixel keep mask ``[B, 1 or C, H, W]`` on the latent grid: 0 wherever any covered pixel is regenerated."""
    regenerate = (keep.amin(dim=1, keepdim=True) < 0.5).float()
    return 1 - F.adaptive_max_pool2d(regenerate, latent_shape[-2:])


@torch.no_grad()
def edit_samples(denoiser, scheduler, x: torch.Tensor, cond: Any, *, strength: float = 0.6,
                 keep: torch.Tensor | None = None, num_steps: int = 20, eta: float = 0.0,
                 generator: torch.Generator | None = None, guidance_scale: float = 1.0) -> torch.Tensor:
    """Edit samples ``x`` towards ``cond``: SDEdit with ``strength``, or inpainting where ``keep`` is 0.

    :param keep: 1 keeps the input, broadcastable to ``x``; None edits the whole sample.
    """
    uncond = denoiser.null_condition(cond) if guidance_scale != 1 else None
    options = dict(num_steps=num_steps, eta=eta, generator=generator, guidance_scale=guidance_scale, uncond=uncond)
    z = denoiser.encode(x)
    if keep is None:
        return denoiser.decode(sdedit(denoiser, scheduler, z, cond, strength, **options))
    if not getattr(denoiser.codec, "latent", False):
        return inpaint(denoiser, scheduler, z, keep, cond, strength=strength, **options)
    mask = latent_keep(keep.expand_as(x), z.shape)
    edited = denoiser.decode(inpaint(denoiser, scheduler, z, mask, cond, strength=strength, **options))
    return keep * x + (1 - keep) * edited
