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


def save_labelled_rows(rows: dict[str, torch.Tensor], path: str | Path, *, columns: int = 8,
                       scale: int = 3, title: str | None = None) -> Path:
    """Write one labelled row of images per entry of ``rows`` as one PNG.

    :param rows: row label -> images in [-1, 1], ``[B, 1 or 3, H, W]`` (grey rows are
        shown in grey beside colour rows); the first ``columns`` of each are shown, and a
        row with fewer images leaves its last places empty.
    :param title: an optional line above the rows.

    The labels are drawn on the image itself, left of each row, so the figure
    explains itself wherever it is copied.
    """
    from PIL import Image, ImageDraw, ImageFont

    k = min(columns, max(len(v) for v in rows.values()))
    tiles = [to_uint8(v[:k].detach().float().cpu().expand(-1, 3, -1, -1) if v.shape[1] == 1 else v[:k])
             for v in rows.values()]
    h, w = tiles[0].shape[1] * scale, tiles[0].shape[2] * scale
    font = ImageFont.load_default(size=max(12, min(h // 3, 18)))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = 12 + max(int(measure.textlength(name, font=font)) for name in rows)
    top = 28 if title else 4
    gap = 4
    width = max(label_w + k * (w + gap), 12 + int(measure.textlength(title, font=font)) if title else 0)
    sheet = Image.new("RGB", (width, top + len(rows) * (h + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((6, 6), title, fill="black", font=font)
    for r, (name, pixels) in enumerate(zip(rows, tiles)):
        y = top + r * (h + gap)
        draw.text((6, y + h // 2), name, fill="black", font=font, anchor="lm")
        for i, tile in enumerate(pixels.numpy()):
            image = Image.fromarray(tile).resize((w, h), Image.NEAREST)
            sheet.paste(image, (label_w + i * (w + gap), y))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
