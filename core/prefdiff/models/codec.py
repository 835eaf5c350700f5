"""Codecs between samples and the model's space: the identity (pixel space) or a frozen VAE (latent).

Rewards score decoded samples and objectives work on latents, so a latent
model encodes its training images once (the encodings are cached by content,
up to a memory budget) and decodes what it samples. The decode is differentiable
for reward backpropagation, optionally checkpointed, and runs in slices so its memory
stays flat as the batch grows.
"""

from __future__ import annotations

import hashlib

import torch
import torch.utils.checkpoint
from torch import nn

from prefdiff.models.memo import BUDGET_MB, BoundedMemo


class IdentityCodec(nn.Module):
    """Pixel-space models: the sample is the model's space."""

    latent = False

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The sample itself."""
        return x

    def decode(self, z: torch.Tensor, *, checkpoint: bool = False) -> torch.Tensor:
        """The sample itself."""
        return z


class VaeCodec(nn.Module):
    """A frozen diffusers ``AutoencoderKL``: images in [-1, 1] <-> scaled latents.

    :param vae: the autoencoder; its parameters are frozen here.
    :param slice_size: images decoded (and encoded) per VAE call.
    :param cache_mb: host memory for cached latents (a :class:`~prefdiff.models.memo.BoundedMemo`; 8 GB is
        131 thousand SD-1.5 latents at 512 px); once it is full, new images are encoded each time they are
        read (0: no cache).

    Latents are ``(mode of q(z|x) - shift_factor) * scaling_factor``, the
    convention of the Stable Diffusion, SD3 and FLUX pipelines (a missing
    ``shift_factor`` is 0). The encoder uses the posterior's mode rather
    than a sample, so an image always has the same latent and the cache is exact.
    """

    latent = True

    def __init__(self, vae: nn.Module, slice_size: int = 8, cache_mb: float = BUDGET_MB) -> None:
        super().__init__()
        self.vae = vae.requires_grad_(False).eval()
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)
        self.slice_size = slice_size
        self.cache = BoundedMemo(cache_mb, "latent cache (--model.init_args.latent_cache_mb)")

    def train(self, mode: bool = True) -> "VaeCodec":
        # Frozen: Lightning's module.train() must not switch the VAE out of eval mode.
        super().train(False)
        return self

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled latents of images ``[B, 3, H, W]`` in [-1, 1]; each image is encoded once per process
        while the cache has room (``cache_mb``)."""
        keys = [hashlib.blake2b(item.detach().float().cpu().contiguous().numpy().tobytes(), digest_size=16).hexdigest()
                for item in x]
        found = {i: self.cache[key] for i, key in enumerate(keys) if key in self.cache}
        missing = [i for i in range(len(keys)) if i not in found]
        dtype = next(self.vae.parameters()).dtype
        for start in range(0, len(missing), self.slice_size):
            part = missing[start:start + self.slice_size]
            posterior = self.vae.encode(x[part].to(dtype)).latent_dist
            latents = (posterior.mode() - self.shift_factor) * self.scaling_factor
            for i, latent in zip(part, latents):
                found[i] = self.cache.keep(keys[i], latent.float())
        return torch.stack([found[i].to(x.device) for i in range(len(keys))]).to(dtype=x.dtype)

    def decode(self, z: torch.Tensor, *, checkpoint: bool = False) -> torch.Tensor:
        """Images in [-1, 1] (unclamped) for scaled latents; gradients flow when enabled.

        :param checkpoint: recompute each slice's decoder activations in backward
            (reward backpropagation through the decoder at a fraction of the memory).
        """
        dtype = next(self.vae.parameters()).dtype
        parts = []
        for start in range(0, z.shape[0], self.slice_size):
            latent = z[start:start + self.slice_size].to(dtype) / self.scaling_factor + self.shift_factor
            if checkpoint and torch.is_grad_enabled():
                parts.append(torch.utils.checkpoint.checkpoint(self._decode, latent, use_reentrant=False))
            else:
                parts.append(self._decode(latent))
        return torch.cat(parts).to(z.dtype)

    def _decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent).sample
