"""Rewards over generated agent rasters, each ``reward(samples, conditions) -> (scores, info)``.

* ``planner_feasibility``: the lattice planner's best PDM-style score in the scene
  (:mod:`prefdiff_driving.planner`), the training reward.
* ``planner_judge``: the same planner with the stricter held-out configuration
  ``planner.JUDGE``; the benchmark evaluates with it and training never queries it.
* ``planner_feasibility_surrogate``: a smooth stand-in for reward backpropagation only.
* ``layout_consistency``: IoU of generated vehicles with the vehicles the condition gives,
  averaged with the share of generated vehicle cells on the drivable area.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from prefdiff.errors import UserError
from prefdiff_driving import bev


def _check(samples: torch.Tensor, cond: Any, who: str) -> None:
    if samples.ndim != 4 or samples.shape[1] != bev.AGENT_CHANNELS:
        raise UserError(f"reward '{who}' scores agent rasters [B, {bev.AGENT_CHANNELS}, R, R], got "
                        f"{list(samples.shape)}; use the driving model preset")
    if not isinstance(cond, dict) or not {"layout", "route", "speed"} <= set(cond):
        raise UserError(f"reward '{who}' needs the nuscenes_bev conditions (layout, route, speed)")


def _planner_reward(config, who: str, **overrides: Any):
    from prefdiff_driving.planner import PlannerConfig, score_scenes

    try:
        cfg = replace(config, **overrides)
    except TypeError as exc:
        known = ", ".join(PlannerConfig.__dataclass_fields__)
        raise UserError(f"--reward_options for '{who}': {exc}; known options: {known}") from None

    def reward(samples: torch.Tensor, cond: Any):
        _check(samples, cond, who)
        out = score_scenes(samples, cond, cfg)
        info = {"collision_free": out["nc"].any(-1).float().mean().item(),
                "drivable_compliant": out["dac"].any(-1).float().mean().item(),
                "feasible": (out["score"] > 0).float().mean().item()}
        return out["score"].to(samples.device, samples.dtype), info

    return reward


def planner_feasibility(**overrides: Any):
    """The training reward: best plan's PDM-style score with ``planner.TRAINING`` (options override fields)."""
    from prefdiff_driving.planner import TRAINING

    return _planner_reward(TRAINING, "planner_feasibility", **overrides)


def planner_judge(**overrides: Any):
    """The held-out judge: ``planner.JUDGE``, a longer, stricter, differently spaced lattice."""
    from prefdiff_driving.planner import JUDGE

    return _planner_reward(JUDGE, "planner_judge", **overrides)


def planner_feasibility_surrogate(sharpness: float = 16.0, sigma: float = 1.5):
    """Differentiable surrogate of ``planner_feasibility`` (see ``planner.soft_feasibility``)."""
    from prefdiff_driving.planner import soft_feasibility

    def reward(samples: torch.Tensor, cond: Any):
        _check(samples, cond, "planner_feasibility_surrogate")
        scores = soft_feasibility(samples, cond, sharpness=sharpness, sigma=sigma)
        return scores.to(samples.dtype), {}

    return reward


def consistency_terms(samples: torch.Tensor, layout: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per scene: ``iou`` of generated vehicles near the given ones with the given ones (1 when
    none are given) and ``on_road``, the share of generated vehicle cells on the drivable area."""
    vehicles = samples[:, bev.VEHICLE] > bev.OCCUPIED
    given = layout[:, bev.GIVEN] > 0.5
    # only generated vehicles touching a given box count against it: others are free traffic
    near = torch.nn.functional.max_pool2d(given[:, None].float(), 3, 1, 1)[:, 0] > 0
    matched = vehicles & near
    inter = (matched & given).sum((1, 2)).float()
    union = (matched | given).sum((1, 2)).float()
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    count = vehicles.sum((1, 2)).float()
    on = (vehicles & (layout[:, bev.DRIVABLE] >= 0.25)).sum((1, 2)).float()
    on_road = torch.where(count > 0, on / count.clamp_min(1), torch.ones_like(count))
    return {"iou": iou, "on_road": on_road}


def layout_consistency():
    """Mean of the given-vehicle IoU and the on-road share, in [0, 1]."""

    def reward(samples: torch.Tensor, cond: Any):
        _check(samples, cond, "layout_consistency")
        terms = consistency_terms(samples.detach(), cond["layout"].to(samples.device))
        scores = (terms["iou"] + terms["on_road"]) / 2
        return scores.to(samples.dtype), {"iou": terms["iou"].mean().item(), "on_road": terms["on_road"].mean().item()}

    return reward


def agent_density(samples: torch.Tensor) -> torch.Tensor:
    """Per scene, the share of cells holding a vehicle or a pedestrian."""
    return ((samples[:, bev.VEHICLE] > bev.OCCUPIED) | (samples[:, bev.PEDESTRIAN] > bev.OCCUPIED)).float().mean((1, 2))


def density_drift(samples: torch.Tensor, real: torch.Tensor) -> float:
    """Drift from real scenes: relative difference of agent density, ``|d_gen - d_real| / d_real``.

    0 means as much traffic as the real held-out scenes; an aligned model that
    clears the road to please the planner shows up here.
    """
    d_real = float(agent_density(real).mean())
    return abs(float(agent_density(samples).mean()) - d_real) / max(d_real, 1e-6)
