"""Rewards over generated agent rasters, each ``reward(samples, conditions) -> (scores, info)``.

* ``planner_feasibility``: the lattice planner's best PDM-style score in the scene
  (:mod:`prefdiff_driving.planner`).
* ``planner_judge``: the same planner with the stricter held-out configuration
  ``planner.JUDGE``; training never queries it.
* ``planner_feasibility_surrogate``: a smooth stand-in for reward backpropagation only.
* ``layout_consistency``: IoU of generated vehicles with the vehicles the condition gives,
  averaged with the share of generated vehicle cells on the drivable area.
* ``scenario_feasibility``: the benchmark's training reward, the planner's score times how
  well the scene is the one asked for: ``traffic_match`` (the asked traffic density is there)
  times ``(1 + IoU) / 2`` of the given vehicles. The planner alone scores an empty road highest (0.98
  against 0.89 for real scenes on the judge), and a model aligned to it learns to clear
  the road; these two factors make that worth nothing while leaving every way of placing
  the asked traffic so the ego can drive open.
* ``scenario_judge``: the same product with the held-out planner; ``scenario_feasibility_surrogate``
  the differentiable surrogate times a soft ``traffic_match``, for reward backpropagation.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from prefdiff.api import UserError
from prefdiff_driving import bev


TRAFFIC_FLOOR = 4 / bev.RESOLUTION ** 2
"""Added to both densities of ``traffic_match``: about half a car's cells, so a scene asked
for no pedestrians is not failed by one stray cell."""
SCENARIO_KEYS = ("layout", "route", "speed", "traffic")
"""The conditions the scenario rewards read: the planner's, and the asked traffic."""


def _check(samples: torch.Tensor, cond: Any, who: str, keys: tuple[str, ...] = ("layout", "route", "speed")) -> None:
    if samples.ndim != 4 or samples.shape[1] != bev.AGENT_CHANNELS:
        raise UserError(f"reward '{who}' scores agent rasters [B, {bev.AGENT_CHANNELS}, R, R], got "
                        f"{list(samples.shape)}; use the driving model preset")
    if not isinstance(cond, dict) or not set(keys) <= set(cond):
        raise UserError(f"reward '{who}' needs the nuscenes_bev conditions ({', '.join(keys)})")


def _planner_reward(config, who: str, **overrides: Any):
    from prefdiff_driving.planner import PlannerConfig, score_scenes

    try:
        cfg = replace(config, **overrides)
    except TypeError as exc:
        known = ", ".join(PlannerConfig.__dataclass_fields__)
        raise UserError(f"reward options for '{who}': {exc}; known options: {known}") from None

    def reward(samples: torch.Tensor, cond: Any):
        _check(samples, cond, who)
        out = score_scenes(samples, cond, cfg)
        info = {"collision_free": out["nc"].any(-1).float().mean().item(),
                "drivable_compliant": out["dac"].any(-1).float().mean().item(),
                "feasible": (out["score"] > 0).float().mean().item()}
        return out["score"].to(samples.device, samples.dtype), info

    return reward


def planner_feasibility(**overrides: Any):
    """The best plan's PDM-style score with ``planner.TRAINING`` (options override fields).

    Alone it scores an empty road highest; the benchmark trains on ``scenario_feasibility``."""
    from prefdiff_driving.planner import TRAINING

    return _planner_reward(TRAINING, "planner_feasibility", **overrides)


def planner_judge(**overrides: Any):
    """The planner with ``planner.JUDGE``, a longer, stricter, differently spaced lattice
    (the held-out planner inside ``scenario_judge``)."""
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


def traffic_match(samples: torch.Tensor, traffic: torch.Tensor, sharpness: float | None = None) -> torch.Tensor:
    """Per scene in (0, 1]: how closely the generated traffic density matches the asked one.

    For vehicles and pedestrians apart, ``min(d_gen, d_ask) / max(d_gen, d_ask)`` with
    ``TRAFFIC_FLOOR`` added to both, multiplied: 1 when the scene holds as much traffic of
    each kind as asked, about 0.1 for an empty road where real traffic was asked for, and
    about half for a scene that drops one of two vehicles. ``sharpness`` makes it
    differentiable (soft occupancy, ``bev.traffic``).
    """
    got = bev.traffic(samples, sharpness) + TRAFFIC_FLOOR
    want = traffic.to(samples).reshape(-1, 2) + TRAFFIC_FLOOR
    return (torch.minimum(got, want) / torch.maximum(got, want)).prod(-1)


def _scenario_reward(config, who: str, **overrides: Any):
    planner = _planner_reward(config, who, **overrides)

    def reward(samples: torch.Tensor, cond: Any):
        _check(samples, cond, who, SCENARIO_KEYS)
        pdm, info = planner(samples, cond)
        match = traffic_match(samples.detach(), cond["traffic"]).to(pdm)
        iou = consistency_terms(samples.detach(), cond["layout"].to(samples.device))["iou"].to(pdm)
        info.update(planner=pdm.mean().item(), traffic_match=match.mean().item(), given_iou=iou.mean().item())
        return pdm * match * (1 + iou) / 2, info

    return reward


def scenario_feasibility(**overrides: Any):
    """The benchmark's training reward: ``planner_feasibility x traffic_match x (1 + given IoU) / 2``."""
    from prefdiff_driving.planner import TRAINING

    return _scenario_reward(TRAINING, "scenario_feasibility", **overrides)


def scenario_judge(**overrides: Any):
    """The benchmark's judge: ``planner_judge x traffic_match x (1 + given IoU) / 2`` (held-out planner)."""
    from prefdiff_driving.planner import JUDGE

    return _scenario_reward(JUDGE, "scenario_judge", **overrides)


def scenario_feasibility_surrogate(sharpness: float = 16.0, sigma: float = 1.5):
    """Differentiable: ``planner_feasibility_surrogate x`` a soft ``traffic_match``."""
    from prefdiff_driving.planner import soft_feasibility

    def reward(samples: torch.Tensor, cond: Any):
        _check(samples, cond, "scenario_feasibility_surrogate", SCENARIO_KEYS)
        feasible = soft_feasibility(samples, cond, sharpness=sharpness, sigma=sigma)
        match = traffic_match(samples, cond["traffic"], sharpness=sharpness)
        return (feasible * match).to(samples.dtype), {}

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
