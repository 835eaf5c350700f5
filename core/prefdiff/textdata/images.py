"""Decoding training images: bytes or files to ``[3, H, W]`` float tensors in [-1, 1]."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

from prefdiff.errors import UserError


def check_resolution(resolution: int) -> int:
    """Images are made ``resolution`` pixels square."""
    if resolution < 1:
        raise UserError(f"dataset resolution must be >= 1, got {resolution}")
    return resolution


class Picture(NamedTuple):
    """A training image as read: its pixels, and where they came from (SDXL's size and crop conditioning)."""

    pixels: torch.Tensor
    """``[3, resolution, resolution]`` in [-1, 1]."""
    original_size: tuple[int, int]
    """``(height, width)`` of the image as stored, before resizing."""
    crop_top_left: tuple[int, int]
    """``(top, left)`` of the centre crop in the resized image."""


def read_image(source: bytes | str | Path, resolution: int, where: str | Callable[[], str]) -> Picture:
    """Decode an image and make it ``[3, resolution, resolution]`` in [-1, 1].

    The shorter side is resized to ``resolution`` and the centre cropped, as
    diffusers' text-to-image and Diffusion-DPO training scripts do, so the
    aspect ratio is kept. ``where`` (or what it returns, asked only then) names
    the image in the error a broken one raises: its file and the line or row
    that named it.
    """
    import numpy as np
    from PIL import Image

    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as opened:
            image = opened.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        where = where() if callable(where) else where
        raise UserError(f"{where} is not a readable image ({type(exc).__name__}: {exc}); "
                        f"replace it or remove its entry") from None
    original = (image.height, image.width)
    scale = resolution / min(image.size)
    width, height = (max(resolution, round(side * scale)) for side in image.size)
    image = image.resize((width, height), Image.BILINEAR)
    left, top = (width - resolution) // 2, (height - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 127.5 - 1
    return Picture(pixels, original, (top, left))


def geometry(picture: Picture) -> dict[str, torch.Tensor]:
    """A dataset item's ``original_size`` and ``crop_top_left`` entries for ``picture`` (read by SDXL's
    prompt encoder through :func:`~prefdiff.models.text.sized_prompts`)."""
    return {"original_size": torch.tensor(picture.original_size), "crop_top_left": torch.tensor(picture.crop_top_left)}
