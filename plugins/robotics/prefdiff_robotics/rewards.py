"""Rewards: feasibility executed in MuJoCo, its success flag, and a differentiable surrogate.

``robot_feasibility`` (the training reward and the held-out judge) runs every
trajectory in the simulator with the tracking controller and scores it in
[0, 1]::

    score = clear * (0.6 * reach + 0.2 * within_limits + 0.2 * smooth)

- ``clear = exp(-10 * f)``, ``f`` the fraction of physics steps in contact with an obstacle;
- ``reach = exp(-max(d - 0.1, 0) / 0.2)``, ``d`` the simulated final distance to the goal (m);
- ``within_limits``: the fraction of steps that keep the joint limits (room) and
  the velocity limits, both as planned and as executed;
- ``smooth = exp(-J / 0.25)``, ``J`` the mean squared change of the normalised command.

A trajectory with a NaN or Inf scores 0 and is counted in ``info["nonfinite"]``.

``robot_success`` is 1 for a run that ends within 0.1 m of the goal without
touching an obstacle, else 0; its mean is the success rate.

``robot_feasibility_surrogate`` is for reward-backprop methods (DRaFT, AlignProp,
ReFL) only. It is a *surrogate*: the same terms computed on the planned
positions with differentiable geometry (penetration of the waypoints into the
inflated obstacles, planned end point to goal, planned start to start), no
simulator. It is never used for evaluation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from prefdiff.api import UserError
from prefdiff_robotics.scene import (CHANNELS, COND_DIM, DT, GOAL_TOLERANCE, JOINT_LIMIT,
                                     MAX_OBSTACLES, ROBOT_RADIUS, ROOM, VMAX, Layout, decode_trajectory)

REACH_SCALE = 0.2
CONTACT_WEIGHT = 10.0
SMOOTH_SCALE = 0.25


def check_batch(samples: torch.Tensor, conditions: Any, who: str) -> torch.Tensor:
    """The conditions as a ``[B, COND_DIM]`` tensor; a clear error for shapes the task cannot run."""
    if samples.ndim != 3 or samples.shape[1] != CHANNELS or samples.shape[2] < 2:
        raise UserError(f"{who} scores trajectories of shape [B, {CHANNELS}, T] (x, y, vx, vy over time), "
                        f"got {list(samples.shape)}; build the model with channels={CHANNELS}")
    if not torch.is_tensor(conditions) or conditions.shape != (samples.shape[0], COND_DIM):
        shape = list(conditions.shape) if torch.is_tensor(conditions) else type(conditions).__name__
        raise UserError(f"{who} needs conditions of shape [B, {COND_DIM}] (start, goal, "
                        f"{MAX_OBSTACLES} obstacle slots) from the robot_demos dataset, got {shape}")
    return conditions


def score_execution(execution, positions: np.ndarray, actions: np.ndarray) -> dict[str, float]:
    """The feasibility terms of one simulated run (see the module docstring)."""
    steps = len(positions)
    bad = (np.abs(actions) > 1.02).any(axis=1)
    bad |= (np.abs(positions) > JOINT_LIMIT + 0.02).any(axis=1)
    speed = np.abs(np.diff(positions, axis=0)) / DT
    bad[1:] |= (speed > VMAX * 1.05).any(axis=1)
    within = 1.0 - min(1.0, (bad.sum() + execution.limit_steps) / steps)
    jerk = float(np.mean(np.sum(np.diff(actions, axis=0) ** 2, axis=1)))
    clear = float(np.exp(-CONTACT_WEIGHT * execution.contact_substeps / execution.substeps))
    reach = float(np.exp(-max(execution.final_distance - GOAL_TOLERANCE, 0.0) / REACH_SCALE))
    smooth = float(np.exp(-jerk / SMOOTH_SCALE))
    score = clear * (0.6 * reach + 0.2 * within + 0.2 * smooth)
    success = float(not execution.collided and execution.final_distance < GOAL_TOLERANCE)
    return {"score": score, "clear": clear, "reach": reach, "within_limits": within, "smooth": smooth,
            "success": success, "collided": float(execution.collided),
            "final_distance": execution.final_distance}


def simulate_batch(sim, samples: torch.Tensor, conditions: torch.Tensor) -> tuple[list[dict | None], int]:
    """Execute each trajectory; ``None`` for one with a NaN or Inf (never run)."""
    x = samples.detach().cpu().double().numpy()
    c = conditions.detach().cpu().double().numpy()
    results, nonfinite = [], 0
    for traj, cond in zip(x, c):
        if not (np.isfinite(traj).all() and np.isfinite(cond).all()):
            results.append(None)
            nonfinite += 1
            continue
        positions, actions = decode_trajectory(traj)
        layout = Layout.from_vector(cond)
        results.append(score_execution(sim.execute(layout, positions, actions), positions, actions))
    return results, nonfinite


def _summary(results: list[dict | None], nonfinite: int) -> dict[str, float]:
    ran = [r for r in results if r is not None]
    mean = lambda key: float(np.mean([r[key] for r in ran])) if ran else 0.0  # noqa: E731
    return {"success_rate": sum(r["success"] for r in ran) / max(1, len(results)),
            "collision_rate": mean("collided"), "final_distance": mean("final_distance"),
            "nonfinite": nonfinite}


def _simulated(key: str, name: str, mjcf: str | None):
    """A reward that executes each trajectory in MuJoCo and reads ``key`` off the run."""
    from prefdiff_robotics.sim import Simulator

    sim = Simulator(mjcf)

    def reward(samples: torch.Tensor, conditions: Any):
        cond = check_batch(samples, conditions, f"reward '{name}'")
        results, nonfinite = simulate_batch(sim, samples, cond)
        scores = [0.0 if r is None else r[key] for r in results]
        dtype = samples.dtype if samples.is_floating_point() else torch.float32
        return torch.tensor(scores, dtype=dtype, device=samples.device), _summary(results, nonfinite)

    return reward


def feasibility(mjcf: str | None = None):
    """Feasibility of trajectories executed in MuJoCo, in [0, 1] (see the module docstring).

    :param mjcf: the scene file; default the plugin's assets/point_room.xml.
    """
    return _simulated("score", "robot_feasibility", mjcf)


def success(mjcf: str | None = None):
    """1 when the executed run ends at the goal without touching an obstacle, else 0."""
    return _simulated("success", "robot_success", mjcf)


def feasibility_surrogate(margin: float = 0.02):
    """A differentiable stand-in for feasibility, for reward backpropagation only.

    :param margin: clearance (m) added to each obstacle's radius and the robot's.
    """

    def reward(samples: torch.Tensor, conditions: Any):
        cond = check_batch(samples, conditions, "reward 'robot_feasibility_surrogate'")
        finite = torch.isfinite(samples).flatten(1).all(1) & torch.isfinite(cond).all(1)
        x = torch.where(finite.view(-1, 1, 1), samples, torch.zeros_like(samples))
        c = torch.where(finite.view(-1, 1), cond, torch.zeros_like(cond)).to(x.dtype) * ROOM
        pos, act = x[:, :2] * ROOM, x[:, 2:4]                       # [B, 2, T]
        start, goal = c[:, 0:2], c[:, 2:4]
        slots = c[:, 4:].view(-1, MAX_OBSTACLES, 4)
        centres, radii, present = slots[..., :2], slots[..., 2], (slots[..., 3] > 0.5).to(x.dtype)
        gap = torch.linalg.vector_norm(pos.transpose(1, 2)[:, :, None, :] - centres[:, None], dim=-1)
        depth = torch.relu(radii[:, None] + ROBOT_RADIUS + margin - gap) * present[:, None]   # [B, T, K]
        clear = torch.exp(-20.0 * depth.sum(dim=(1, 2)))
        end = torch.linalg.vector_norm(pos[:, :, -1] - goal, dim=1)
        begin = torch.linalg.vector_norm(pos[:, :, 0] - start, dim=1)
        reach = torch.exp(-torch.relu(end - GOAL_TOLERANCE) / REACH_SCALE) * torch.exp(-begin / REACH_SCALE)
        over = torch.relu(act.abs() - 1.0).sum(dim=(1, 2)) + torch.relu(pos.abs() - JOINT_LIMIT).sum(dim=(1, 2))
        over = over + torch.relu((pos.diff(dim=2).abs() / DT) - VMAX).sum(dim=(1, 2))
        within = torch.exp(-5.0 * over)
        jerk = act.diff(dim=2).pow(2).sum(dim=1).mean(dim=1)
        smooth = torch.exp(-jerk / SMOOTH_SCALE)
        scores = clear * (0.6 * reach + 0.2 * within + 0.2 * smooth)
        scores = torch.where(finite, scores, torch.zeros_like(scores))
        return scores, {"nonfinite": int((~finite).sum()), "surrogate_clear": float(clear.detach().mean())}

    return reward
