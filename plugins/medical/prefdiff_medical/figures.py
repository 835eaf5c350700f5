"""Figures: coloured conditioning masks above grey-scale samples, one labelled row per model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from prefdiff.api import save_labelled_rows

# Background black, then one distinct colour per class (in [-1, 1] RGB).
PALETTE = torch.tensor([[-1, -1, -1], [1, -0.2, -0.2], [-0.2, 1, -0.2], [-0.2, -0.2, 1],
                        [1, 1, -0.6], [1, -0.6, 1], [-0.6, 1, 1]])


def colour_masks(masks: torch.Tensor) -> torch.Tensor:
    """Class-index masks ``[B, 1, H, W]`` -> RGB ``[B, 3, H, W]`` in [-1, 1]."""
    index = masks[:, 0].round().long().clamp(min=0) % len(PALETTE)
    return PALETTE[index.cpu()].permute(0, 3, 1, 2)


def render(rows: dict[str, torch.Tensor], cond: Any, png_path: Path, columns: int = 8, every: bool = False) -> None:
    """Write the mask row(s), then one labelled row per model.

    :param rows: row name -> generated images ``[B, 1, H, W]``.
    :param cond: the conditioning masks ``[B, 1, H, W]``, or a dict of named mask rows.
    """
    masks = cond if isinstance(cond, dict) else {"conditioning mask": cond}
    # every: all samples (`prefdiff sample --n 16`), else the first `columns` (the benchmark's figures)
    count = max(len(v) for v in [*masks.values(), *rows.values()]) if every else columns
    shown = {}
    for start in range(0, count, columns):  # every sample: a block of rows per `columns` of them
        part = slice(start, start + columns)
        suffix = f" {start + 1}-{min(start + columns, count)}" if count > columns else ""
        shown.update({name + suffix: colour_masks(m[part]) for name, m in masks.items()})
        shown.update({name + suffix: v[part].detach().float().cpu().clamp(-1, 1) for name, v in rows.items()})
    save_labelled_rows(shown, png_path, columns=columns)
