"""Traffic statistics: counted on rasters drawn from known boxes, and the gap to the real scenes."""

import numpy as np
import pytest
import torch

from prefdiff_driving import bev
from prefdiff_driving.statistics import scene_statistics, traffic_statistics

ALONG = {"xy": (10.0, -3.0), "yaw": 0.0, "size": (2.0, 4.5, 1.5), "velocity": (5.0, 0.0), "kind": "vehicle"}
ACROSS = {"xy": (-10.0, 9.0), "yaw": np.pi / 2, "size": (2.5, 8.0, 3.0), "velocity": (0.0, 5.0), "kind": "vehicle"}
WALKER = {"xy": (0.0, 15.0), "yaw": 0.0, "size": (0.6, 0.6, 1.8), "velocity": (0.0, 0.0), "kind": "pedestrian"}
DIVIDER_ROW = 16


def _scene(*boxes):
    agents = torch.from_numpy(bev.agent_raster(list(boxes)))[None]
    layout = torch.zeros(1, bev.LAYOUT_CHANNELS, bev.RESOLUTION, bev.RESOLUTION)
    layout[:, bev.DIVIDER, DIVIDER_ROW] = 1.0
    return agents, layout


def test_the_statistics_of_known_boxes():
    agents, layout = _scene(ALONG, ACROSS, WALKER)
    s = scene_statistics(agents, layout)
    cells = [bev.box_cells(b["xy"], b["yaw"], b["size"][1], b["size"][0]) for b in (ALONG, ACROSS)]
    n_cells = sum(int(c.sum()) for c in cells)
    assert s["vehicles_per_scene"] == 2
    assert s["vehicle_cells"] == pytest.approx(n_cells / 2)
    assert s["vehicle_density"] == pytest.approx(n_cells / bev.RESOLUTION ** 2)
    assert s["pedestrian_density"] > 0
    # One vehicle along the ego's axis (|sin| 0), one across it (|sin| 1), weighted by their cells.
    assert s["lateral_heading"] == pytest.approx(int(cells[1].sum()) / n_cells, abs=1e-6)
    rows = np.concatenate([np.nonzero(c)[0] for c in cells])
    assert s["distance_to_divider_m"] == pytest.approx(np.abs(rows - DIVIDER_ROW).mean() * bev.CELL)


def test_an_empty_road_is_zero_traffic_not_an_error():
    agents, layout = _scene()
    s = scene_statistics(agents, layout)
    assert s["vehicles_per_scene"] == 0 and s["vehicle_cells"] == 0 and s["lateral_heading"] == 0


def test_each_model_gets_its_gap_to_the_real_scenes():
    real, layout = _scene(ALONG, ACROSS)
    emptier, _ = _scene(ALONG)
    stats = traffic_statistics({"real": real, "base": real.clone(), "dpo": emptier}, {"layout": layout})
    assert "gap_mean" not in stats["real"]
    assert stats["base"]["gap_mean"] == 0
    assert stats["dpo"]["gap_vehicles_per_scene"] == pytest.approx(0.5)
    assert stats["dpo"]["gap_mean"] > 0
