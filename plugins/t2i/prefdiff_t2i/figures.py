"""The before/after figure: a row of prompts drawn as text, then one labelled row of samples per model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch.nn import functional as F

from prefdiff.api import save_labelled_rows


def prompt_tile(text: str, side: int) -> torch.Tensor:
    """``text`` wrapped onto a white ``side`` x ``side`` tile, as an image ``[3, side, side]`` in [-1, 1]."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (side, side), "white")
    pen = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(9, side // 7))
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and pen.textlength(trial, font=font) > side - 6:
            lines.append(line)
            line = word
        else:
            line = trial
    lines.append(line)
    height = font.size + 2
    top = max(2, (side - height * len(lines)) // 2)
    for i, text_line in enumerate(lines):
        pen.text((3, top + i * height), text_line, fill="black", font=font)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 127.5 - 1.0


def first_of_each_prompt(prompts: Sequence[str], columns: int) -> list[int]:
    """Indices of up to ``columns`` items, skipping repeats of the previous prompt (several
    samples per held-out prompt sit next to each other)."""
    picked = [i for i, p in enumerate(prompts) if i == 0 or p != prompts[i - 1]]
    return picked[:columns]


def render(rows: dict[str, torch.Tensor], cond: Any, png_path: Path, columns: int = 8, scale: int = 3,
           title: str = "held-out prompts (top) and each model's sample from the same noise") -> None:
    """Write the prompts' row, then one labelled row of samples per model.

    :param rows: row name (``base``, a method) -> decoded samples ``[B, 3, H, W]``.
    :param cond: the prompts, one per sample.
    """
    prompts = [cond] if isinstance(cond, str) else list(cond)
    index = first_of_each_prompt(prompts, columns)
    side = next(iter(rows.values())).shape[-1] * scale
    shown = {"prompt": torch.stack([prompt_tile(prompts[i], side) for i in index])}
    for name, images in rows.items():
        picked = images[index].detach().float().cpu().clamp(-1, 1)
        shown[name] = F.interpolate(picked, scale_factor=scale, mode="nearest")
    save_labelled_rows(shown, png_path, columns=len(index), scale=1, title=title)
