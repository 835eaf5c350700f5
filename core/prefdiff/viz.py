"""Sample grids as PNG."""

from __future__ import annotations

from pathlib import Path

import torch


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images [B, C, H, W] -> uint8 [B, H, W, C]."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8, scale: int = 2) -> Path:
    """Write images in [-1, 1] ([B, 1 or 3, H, W]) as one PNG grid."""
    from PIL import Image

    pixels = to_uint8(images).cpu()
    b, h, w, c = pixels.shape
    nrow = min(nrow, b)
    rows = (b + nrow - 1) // nrow
    grid = torch.full((rows * (h + 2), nrow * (w + 2), c), 255, dtype=torch.uint8)
    for i in range(b):
        r, col = divmod(i, nrow)
        grid[r * (h + 2):r * (h + 2) + h, col * (w + 2):col * (w + 2) + w] = pixels[i]
    array = grid.numpy()
    image = Image.fromarray(array[..., 0] if c == 1 else array)
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
