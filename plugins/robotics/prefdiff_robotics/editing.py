"""Planning with start and goal pinned, and the editing task: re-plan around a new obstacle.

The benchmark's recipe pins start and goal in every sample through its conditioner
(``layout_timeline`` with ``pin_endpoints``), so training, mining and the held-out
numbers all see pinned plans. :func:`plan` pins them by inpainting whatever the
conditioner's option; editing uses it and also keeps the steps away from the new obstacle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from prefdiff.api import inpaint
from prefdiff_robotics.conditioner import LayoutTimeline
from prefdiff_robotics.scene import CHANNELS, HORIZON, MAX_OBSTACLES, ROBOT_RADIUS, ROOM, Layout, decode_trajectory

NUM_STEPS = 20


def pin_start_goal(cond: torch.Tensor, horizon: int = HORIZON) -> tuple[torch.Tensor, torch.Tensor]:
    """``(known, keep_mask)`` pinning the first position to the start and the last to the goal."""
    return LayoutTimeline(horizon, pin_endpoints=True).pinned(cond)


@torch.no_grad()
def plan(denoiser, scheduler, cond: torch.Tensor, *, seed: int = 0, num_steps: int = NUM_STEPS,
         eta: float = 1.0) -> torch.Tensor:
    """Trajectories ``[B, 4, H]`` for layouts ``cond`` with start and goal pinned by inpainting.

    ``eta=1`` (stochastic steps) as the benchmark evaluates: on this task the
    deterministic sampler leaves more high-frequency noise in the plans.
    """
    denoiser.eval()
    known, mask = pin_start_goal(cond, denoiser.preset.sample_size)
    g = torch.Generator().manual_seed(seed)
    return inpaint(denoiser, scheduler, known, mask, cond, num_steps=num_steps, eta=eta, generator=g)


def add_obstacle_on_path(layout: Layout, positions: np.ndarray, radius: float = 0.1) -> np.ndarray | None:
    """An obstacle ``(x, y, r)`` across the middle of a planned path; None if it would cover start or goal."""
    if len(layout.obstacles) >= MAX_OBSTACLES:
        return None
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(positions, axis=0), axis=1))])
    k = int(np.searchsorted(arc, arc[-1] / 2))
    centre = positions[min(k, len(positions) - 1)]
    gaps = np.linalg.norm(np.stack([layout.start, layout.goal]) - centre, axis=1)
    if (gaps < radius + ROBOT_RADIUS + 0.15).any() or (np.abs(centre) > ROOM - radius).any():
        return None
    return np.array([*centre, radius])


def edit_around_new_obstacle(denoiser, scheduler, cond: torch.Tensor, *, seed: int = 0,
                             num_steps: int = NUM_STEPS, mjcf: str | None = None) -> dict[str, Any]:
    """Plan, add an obstacle on each plan, re-plan only the steps near it (inpainting along time).

    Returns the edited and original trajectories, the new conditions, the keep masks and
    the metrics: feasibility and success of the edit on the new layout (and of the
    unedited plan there, for comparison), and preservation, the fraction of steps whose
    position stays within 5 cm of the original plan.
    """
    from prefdiff_robotics.rewards import simulate_batch
    from prefdiff_robotics.sim import Simulator

    original = plan(denoiser, scheduler, cond, seed=seed, num_steps=num_steps)
    new_cond, masks, picked, obstacles = [], [], [], []
    for i, (traj, c) in enumerate(zip(original.numpy(), cond.numpy())):
        layout = Layout.from_vector(c)
        positions, _ = decode_trajectory(traj)
        extra = add_obstacle_on_path(layout, positions)
        if extra is None:
            continue
        moved = Layout(layout.start, layout.goal, np.vstack([layout.obstacles, extra]))
        near = np.linalg.norm(positions - extra[:2], axis=1) < extra[2] + ROBOT_RADIUS + 0.2
        keep = torch.from_numpy(~near).float().expand(CHANNELS, -1).clone()
        keep[0:2, 0] = keep[0:2, -1] = 1.0  # start and goal stay pinned
        picked.append(i)
        new_cond.append(torch.from_numpy(moved.to_vector()))
        masks.append(keep)
        obstacles.append(extra)
    if not picked:
        return {"metrics": {"reward_mean": 0.0, "preservation": 0.0, "success_rate": 0.0, "kept_fraction": 0.0,
                            "n": 0}}
    new_cond, masks, before = torch.stack(new_cond), torch.stack(masks), original[picked]
    known = before.clone()
    known[:, 0:2, -1] = new_cond[:, 2:4]
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        edited = inpaint(denoiser, scheduler, known, masks, new_cond, num_steps=num_steps, eta=1.0, generator=g)
    sim = Simulator(mjcf)
    after, _ = simulate_batch(sim, edited, new_cond)
    unedited, _ = simulate_batch(sim, before, new_cond)
    close = (torch.linalg.vector_norm((edited[:, 0:2] - before[:, 0:2]) * ROOM, dim=1) < 0.05).float()
    mean = lambda rs, key: float(np.mean([0.0 if r is None else r[key] for r in rs]))  # noqa: E731
    return {"edited": edited, "original": before, "cond": new_cond, "masks": masks, "obstacles": obstacles,
            "metrics": {"reward_mean": mean(after, "score"), "preservation": float(close.mean()),
                        "success_rate": mean(after, "success"), "kept_fraction": float(masks[:, 0].mean()),
                        "unedited_reward_mean": mean(unedited, "score"),
                        "unedited_success_rate": mean(unedited, "success"), "n": len(picked)}}


def edit_task(denoiser, scheduler, out_dir: Path, *, path: str, n: int, num_steps: int) -> dict[str, Any]:
    """The benchmark's editing task on the first ``n`` held-out layouts of the demonstrations at ``path``;
    writes ``edit.png`` into ``out_dir`` and returns the metrics."""
    from prefdiff_robotics.demos import RobotDemos
    from prefdiff_robotics.figures import render_edit

    cond = RobotDemos("test", path=path).cond[:n]
    result = edit_around_new_obstacle(denoiser, scheduler, cond, num_steps=num_steps)
    if "edited" in result:
        render_edit(result, Path(out_dir) / "edit.png")
    return result["metrics"]
