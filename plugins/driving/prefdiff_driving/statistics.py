"""Traffic statistics of BEV scenes, measured the same way on generated and real ones.

A judge score says whether a planner can drive a scene; it does not say the
scene looks like real traffic. These statistics do, in the spirit of the
scene-realism measures of traffic generators (SceneGen, Tan et al. 2021;
TrafficGen, Feng et al. 2023): how much traffic of each class, how big the
vehicles are, where they head, and how far they keep from the lane lines.
The benchmark reports them for the real held-out scenes, the base and each
aligned model, and each model's relative gap to the real scenes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from prefdiff_driving import bev

MOVING = 0.1
"""A vehicle cell moves when its speed exceeds this share of ``SPEED_SCALE`` (1 m/s)."""

STATISTICS = ("vehicle_density", "pedestrian_density", "vehicles_per_scene", "vehicle_cells",
              "lateral_heading", "distance_to_divider_m")


def scene_statistics(samples: torch.Tensor, layout: torch.Tensor) -> dict[str, float]:
    """The statistics of a set of scenes ``[B, 4, R, R]`` with their layouts ``[B, 4, R, R]``.

    - ``vehicle_density``, ``pedestrian_density``: share of cells holding each class;
    - ``vehicles_per_scene``: vehicles (8-connected groups of vehicle cells) per scene;
    - ``vehicle_cells``: mean cells per vehicle (its footprint on the grid);
    - ``lateral_heading``: mean ``|sin|`` of the heading of moving vehicle cells against the
      ego's axis (0: all along the ego's road, 1: all across it);
    - ``distance_to_divider_m``: mean distance from a vehicle cell to the nearest divider cell.
    """
    from scipy import ndimage

    agents = samples.detach().float().cpu()
    vehicles = (agents[:, bev.VEHICLE] > bev.OCCUPIED).numpy()
    density = bev.traffic(agents)
    dividers = (layout[:, bev.DIVIDER] > 0.5).cpu().numpy()
    sizes, distances = [], []
    for scene, divider in zip(vehicles, dividers):
        labels, count = ndimage.label(scene, structure=np.ones((3, 3)))
        sizes += list(np.bincount(labels.ravel())[1:count + 1])
        if scene.any() and divider.any():
            distances += list(ndimage.distance_transform_edt(~divider)[scene] * bev.CELL)
    speed = agents[:, [bev.VX, bev.VY]].norm(dim=1)
    moving = torch.from_numpy(vehicles) & (speed > MOVING)
    lateral = (agents[:, bev.VY].abs() / speed.clamp_min(1e-9))[moving]
    return {"vehicle_density": float(density[:, 0].mean()), "pedestrian_density": float(density[:, 1].mean()),
            "vehicles_per_scene": len(sizes) / max(len(vehicles), 1),
            "vehicle_cells": float(np.mean(sizes)) if sizes else 0.0,
            "lateral_heading": float(lateral.mean()) if len(lateral) else 0.0,
            "distance_to_divider_m": float(np.mean(distances)) if distances else 0.0}


def traffic_statistics(rows: dict[str, torch.Tensor], cond: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The benchmark's metrics hook: each row's statistics and, beside the real row, each
    statistic's relative gap to the real scenes (``|model - real| / |real|``) and their mean."""
    stats = {name: scene_statistics(samples, cond["layout"]) for name, samples in rows.items()}
    if "real" in stats:
        real = stats["real"]
        for name, s in stats.items():
            if name == "real":
                continue
            gaps = {key: abs(s[key] - real[key]) / max(abs(real[key]), 1e-9) for key in STATISTICS}
            s.update({f"gap_{key}": gap for key, gap in gaps.items()})
            s["gap_mean"] = float(np.mean(list(gaps.values())))
    return stats
