"""The robotics figures: planned and simulated paths per model, and the editing task's re-plans."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from prefdiff_robotics.scene import ROOM, Layout, decode_trajectory


def distinct_conditions(cond: torch.Tensor, count: int) -> list[int]:
    """Indices of the first ``count`` rows of ``cond`` that differ from the row before.

    The runner repeats each held-out condition once per noise draw; figures show
    different layouts side by side, not draws of one.
    """
    picks = [i for i in range(len(cond)) if i == 0 or not torch.equal(cond[i], cond[i - 1])]
    return picks[:count]


def draw_scene(ax, layout: Layout, extra: np.ndarray | None = None) -> None:
    """The room, its obstacles (``extra``, an added one, in red), start (dot) and goal (star)."""
    import matplotlib.patches as patches

    ax.add_patch(patches.Rectangle((-ROOM, -ROOM), 2 * ROOM, 2 * ROOM, fill=False, lw=1.5, ec="0.3"))
    for x, y, r in layout.obstacles:
        ax.add_patch(patches.Circle((x, y), r, color="#8c5a3c"))
    if extra is not None:
        ax.add_patch(patches.Circle(extra[:2], extra[2], color="#d62728", alpha=0.8))
    ax.plot(*layout.start, "o", color="#1f77b4", ms=6)
    ax.plot(*layout.goal, "*", color="#2ca02c", ms=12)
    ax.set_xlim(-ROOM * 1.05, ROOM * 1.05)
    ax.set_ylim(-ROOM * 1.05, ROOM * 1.05)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def render_rows(rows: dict[str, torch.Tensor], cond: torch.Tensor, png_path: Path, columns: int = 6) -> None:
    """Top-down plots, one row per model: planned path dashed, simulated run solid
    (green: success, red: not), for the first ``columns`` distinct held-out layouts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prefdiff_robotics.rewards import score_execution
    from prefdiff_robotics.sim import Simulator

    sim = Simulator()
    shown = distinct_conditions(cond, columns)
    fig, axes = plt.subplots(len(rows), len(shown), figsize=(2.2 * len(shown), 2.3 * len(rows)), squeeze=False)
    for r, (name, samples) in enumerate(rows.items()):
        for column, i in enumerate(shown):
            ax = axes[r, column]
            layout = Layout.from_vector(cond[i].cpu().numpy())
            draw_scene(ax, layout)
            if column == 0:
                ax.set_ylabel(name)
            traj = samples[i].detach().cpu().double().numpy()
            if not np.isfinite(traj).all():
                continue
            positions, actions = decode_trajectory(traj)
            run = sim.execute(layout, positions, actions)
            color = "#2ca02c" if score_execution(run, positions, actions)["success"] else "#d62728"
            ax.plot(positions[:, 0], positions[:, 1], "--", color="0.5", lw=1)
            ax.plot(run.path[:, 0], run.path[:, 1], "-", color=color, lw=1.8)
    fig.suptitle("planned (dashed) and simulated (solid; green = success) trajectories", fontsize=9, wrap=True)
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)
    plt.close(fig)


def render_edit(result: dict[str, Any], png_path: Path, columns: int = 6) -> None:
    """Original plan (grey), kept steps (dots), edited plan (blue) around the added obstacle (red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = min(columns, len(result["edited"]))
    fig, axes = plt.subplots(1, k, figsize=(2.2 * k, 2.4), squeeze=False)
    for i in range(k):
        layout = Layout.from_vector(result["cond"][i].numpy())
        ax = axes[0, i]
        draw_scene(ax, Layout(layout.start, layout.goal, layout.obstacles[:-1]), extra=result["obstacles"][i])
        before, _ = decode_trajectory(result["original"][i].numpy())
        after, _ = decode_trajectory(result["edited"][i].numpy())
        kept = result["masks"][i, 0].numpy() > 0.5
        ax.plot(before[:, 0], before[:, 1], "-", color="0.6", lw=1)
        ax.plot(after[:, 0], after[:, 1], "-", color="#1f77b4", lw=1.5)
        ax.plot(after[kept, 0], after[kept, 1], ".", color="#1f77b4", ms=3)
    fig.suptitle("editing: original (grey), re-planned around the new obstacle (blue; dots kept)", fontsize=9)
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
