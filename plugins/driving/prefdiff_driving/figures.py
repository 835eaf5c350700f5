"""BEV figures: the map, the agents, the ego, its route and the planner's best plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from prefdiff.api import select
from prefdiff_driving import bev


def map_image(layout: torch.Tensor) -> np.ndarray:
    """An RGB image ``[R, R, 3]`` of one layout: road grey, walkways sand, dividers white, given vehicles cyan."""
    lay = layout.detach().cpu().float().numpy()
    img = np.ones((*lay.shape[1:], 3)) * np.array([0.18, 0.32, 0.18])        # verge
    img = img * (1 - lay[bev.WALKWAY, ..., None]) + lay[bev.WALKWAY, ..., None] * np.array([0.80, 0.74, 0.58])
    img = img * (1 - lay[bev.DRIVABLE, ..., None]) + lay[bev.DRIVABLE, ..., None] * np.array([0.45, 0.45, 0.47])
    img = np.where(lay[bev.DIVIDER, ..., None] > 0.5, 0.5 * img + 0.5 * np.array([0.95, 0.95, 0.9]), img)
    return img


def scene_image(sample: torch.Tensor, layout: torch.Tensor) -> np.ndarray:
    """The map with vehicles (blue) and pedestrians (orange) painted over it."""
    img = map_image(layout)
    x = sample.detach().cpu().float().numpy()
    img[x[bev.VEHICLE] > bev.OCCUPIED] = np.array([0.15, 0.35, 0.95])
    img[x[bev.PEDESTRIAN] > bev.OCCUPIED] = np.array([1.0, 0.55, 0.1])
    given = layout[bev.GIVEN].cpu().numpy() > 0.5
    img[given & (x[bev.VEHICLE] <= bev.OCCUPIED)] = np.array([0.3, 0.9, 0.95])       # a given vehicle left out
    return img


def draw_scene(ax, sample: torch.Tensor, cond: dict[str, torch.Tensor], plan: np.ndarray | None = None,
               score: float | None = None, region: np.ndarray | None = None) -> None:
    """One BEV panel: scene raster, ego box, route (dashed) and the best plan (green feasible, red not)."""
    import matplotlib.patches as patches

    half = bev.EXTENT / 2
    ax.imshow(scene_image(sample, cond["layout"]), origin="lower", extent=(-half, half, -half, half),
              interpolation="nearest")
    route = cond["route"].cpu().numpy()
    ax.plot(route[:, 0], route[:, 1], "--", color="white", lw=0.8)
    ax.add_patch(patches.Rectangle((-2.25, -0.95), 4.5, 1.9, color="#2ca02c"))
    if plan is not None:
        ax.plot(plan[:, 0], plan[:, 1], "-", color="#2ca02c" if (score or 0) > 0 else "#d62728", lw=1.6)
    if region is not None:
        ys, xs = np.nonzero(region)
        if len(xs):
            cell = bev.CELL
            ax.add_patch(patches.Rectangle((xs.min() * cell - half, ys.min() * cell - half),
                                           (xs.max() - xs.min() + 1) * cell, (ys.max() - ys.min() + 1) * cell,
                                           fill=False, ec="magenta", lw=1.2))
    if score is not None:
        ax.set_title(f"{score:.2f}", fontsize=7, pad=2)
    ax.set_xlim(-half, half)
    ax.set_ylim(-half, half)
    ax.set_xticks([])
    ax.set_yticks([])


def render(rows: dict[str, torch.Tensor], cond: dict[str, torch.Tensor], png_path: str | Path,
           columns: int = 6, real: torch.Tensor | None = None) -> None:
    """One row per model (base first: before; methods: after), the same held-out scenes in each column,
    with the training planner's best plan and its score above each panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prefdiff_driving.planner import score_scenes

    all_rows = ({"real": real} if real is not None else {}) | dict(rows)
    n = next(iter(all_rows.values())).shape[0]
    k = min(columns, n)
    # spread the columns over the held-out set: neighbouring keyframes look alike
    idx = torch.linspace(0, n - 1, k).round().long()
    part = select(cond, idx)
    fig, axes = plt.subplots(len(all_rows), k, figsize=(1.7 * k, 1.8 * len(all_rows)), squeeze=False)
    for r, (name, samples) in enumerate(all_rows.items()):
        samples = samples[idx]
        out = score_scenes(samples, part)
        for i in range(k):
            plan = out["plans"][i, out["best"][i]].numpy()
            draw_scene(axes[r, i], samples[i], select(part, i), plan, float(out["score"][i]))
        axes[r, 0].set_ylabel(name, fontsize=8)
    fig.suptitle("BEV scenes (ego green, vehicles blue, pedestrians orange); route dashed, best plan solid "
                 "(green feasible, red not); planner score above", fontsize=7, wrap=True)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def render_edit(result: dict[str, Any], png_path: str | Path, columns: int = 6) -> None:
    """Before and after of the edits: the region regenerated outlined in magenta."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = min(columns, len(result["kinds"]))
    fig, axes = plt.subplots(2, k, figsize=(1.7 * k, 3.8), squeeze=False)
    for i in range(k):
        cond_before = select(result["cond_before"], i)
        cond_after = select(result["cond"], i)
        region = result["regions"][i].numpy()
        draw_scene(axes[0, i], result["original"][i], cond_before, region=region)
        draw_scene(axes[1, i], result["edited"][i], cond_after, region=region)
        ok = "ok" if result["success"][i] else "failed"
        axes[0, i].set_title(f"{result['kinds'][i]}", fontsize=7, pad=2)
        axes[1, i].set_title(ok, fontsize=7, pad=2)
    axes[0, 0].set_ylabel("before", fontsize=8)
    axes[1, 0].set_ylabel("after", fontsize=8)
    fig.suptitle("editing by masked inpainting: insert or remove a vehicle in the magenta region", fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
