"""PNG grids: coloured conditioning masks above grey-scale samples, one row per model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# Background black, then one distinct colour per class (in [-1, 1] RGB).
PALETTE = torch.tensor([[-1, -1, -1], [1, -0.2, -0.2], [-0.2, 1, -0.2], [-0.2, -0.2, 1],
                        [1, 1, -0.6], [1, -0.6, 1], [-0.6, 1, 1]])


def colour_masks(masks: torch.Tensor) -> torch.Tensor:
    """Class-index masks ``[B, 1, H, W]`` -> RGB ``[B, 3, H, W]`` in [-1, 1]."""
    index = masks[:, 0].round().long().clamp(min=0) % len(PALETTE)
    return PALETTE[index.cpu()].permute(0, 3, 1, 2)


def render(rows: dict[str, torch.Tensor], cond: Any, png_path: Path, columns: int = 8) -> None:
    """Write the mask row(s) and one row per model; the row names go to a .txt beside the PNG.

    :param rows: row name -> generated images ``[B, 1, H, W]``.
    :param cond: the conditioning masks ``[B, 1, H, W]``, or a dict of named mask rows.
    """
    from prefdiff.viz import save_grid

    masks = cond if isinstance(cond, dict) else {"conditioning mask": cond}
    k = min(columns, *(len(v) for v in rows.values()), *(len(v) for v in masks.values()))
    tiles = [colour_masks(m[:k]) for m in masks.values()]
    tiles += [v[:k].detach().float().cpu().clamp(-1, 1).expand(-1, 3, -1, -1) for v in rows.values()]
    png_path = Path(png_path)
    save_grid(torch.cat(tiles), png_path, nrow=k, scale=3)
    png_path.with_suffix(".txt").write_text("rows, top to bottom: " + ", ".join([*masks, *rows]) + "\n")
