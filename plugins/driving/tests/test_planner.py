"""The lattice planner and the rewards built on it, on hand-made and real scenes."""

import numpy as np
import pytest
import torch

from prefdiff.errors import UserError
from prefdiff.testing import check_reward
from prefdiff_driving import bev
from prefdiff_driving.planner import JUDGE, TRAINING, candidates, score_scenes


def straight_road(batch: int = 1, speed: float = 6.0) -> dict:
    """A road along the ego's heading, 7 m wide, route straight ahead."""
    layout = torch.zeros(batch, bev.LAYOUT_CHANNELS, bev.RESOLUTION, bev.RESOLUTION)
    y = torch.from_numpy(bev.cell_centres()[..., 1]).float()
    layout[:, bev.DRIVABLE] = ((y > -5.0) & (y < 2.5)).float()
    route = torch.stack([torch.arange(bev.ROUTE_POINTS) * bev.ROUTE_SPACING,
                         torch.zeros(bev.ROUTE_POINTS)], -1).float()
    return {"layout": layout, "route": route.expand(batch, -1, -1).clone(),
            "speed": torch.full((batch, 1), speed)}


def raster(*vehicles) -> torch.Tensor:
    """An agent raster with vehicles ``(x, y, vx, vy)`` aligned with the ego."""
    boxes = [{"xy": np.array([x, y]), "yaw": 0.0, "size": (1.9, 4.5, 1.6), "velocity": (vx, vy), "kind": "vehicle"}
             for x, y, vx, vy in vehicles]
    return torch.from_numpy(bev.agent_raster(boxes))[None]


def test_clean_road_scores_high_and_a_car_on_the_ego_scores_zero():
    cond = straight_road()
    clean = score_scenes(raster(), cond)
    assert clean["score"].item() > 0.8 and clean["nc"].all() and clean["dac"][0].any()
    crash = score_scenes(raster((1.0, 0.0, 0.0, 0.0)), cond)
    assert crash["score"].item() == 0.0 and not crash["nc"].any()
    # oncoming traffic in the other lane is no collision
    passing = score_scenes(raster((15.0, -3.5, -6.0, 0.0)), cond)
    assert passing["score"].item() > 0.5


def test_a_stopped_car_ahead_forces_braking_or_a_swerve():
    cond = straight_road(speed=8.0)
    out = score_scenes(raster((14.0, 0.0, 0.0, 0.0)), cond)
    keep_going = TRAINING.offsets.index(0.0) * len(TRAINING.accelerations) + TRAINING.accelerations.index(0.0)
    assert not out["nc"][0, keep_going]
    assert out["score"].item() > 0
    best = out["plans"][0, out["best"][0]]
    assert best[-1, 0] < 14.0 - 4.5 or best[:, 1].abs().max() > 1.0


def test_leaving_the_road_is_not_compliant():
    cond = straight_road()
    cond["layout"][:, bev.DRIVABLE] = 0.0
    cond["layout"][:, bev.DRIVABLE, 15:17, 15:17] = 1.0      # only the ego's own cells are road
    out = score_scenes(raster(), cond)
    assert not out["dac"].any() and out["score"].item() == 0.0


def test_lattice_follows_a_curved_route():
    theta = torch.linspace(0, np.pi / 2, bev.ROUTE_POINTS)
    radius = 2.0 * (bev.ROUTE_POINTS - 1) / (np.pi / 2)
    route = torch.stack([radius * theta.sin(), radius * (1 - theta.cos())], -1)[None].float()
    lat = candidates(route, torch.tensor([[5.0]]), TRAINING)
    assert lat["pos"].shape == (1, len(TRAINING.offsets) * len(TRAINING.accelerations), TRAINING.steps + 1, 2)
    centre = lat["pos"][0, TRAINING.offsets.index(0.0) * len(TRAINING.accelerations)
                        + TRAINING.accelerations.index(0.0)]
    fine = torch.stack([radius * torch.linspace(0, np.pi / 2, 2000).sin(),
                        radius * (1 - torch.linspace(0, np.pi / 2, 2000).cos())], -1)
    dist = (centre[:, None] - fine[None]).norm(dim=-1).amin(1)
    assert dist.max() < 0.1                                  # on the arc, within the polyline's chord error
    assert torch.allclose(lat["progress"][0, TRAINING.accelerations.index(0.0)], torch.tensor(15.0))


def test_real_scenes_are_mostly_feasible_and_the_judge_is_stricter(test_split):
    cond, real = test_split.conditions(), test_split.agents
    train, judge = score_scenes(real, cond, TRAINING), score_scenes(real, cond, JUDGE)
    assert train["score"].mean() > 0.75
    assert judge["score"].mean() <= train["score"].mean()
    noise = torch.randn_like(real, generator=torch.Generator().manual_seed(0))
    assert score_scenes(noise, cond)["score"].mean() < 0.05


def test_rewards_meet_the_contract(test_split):
    from prefdiff.plugins import get_manager

    manager = get_manager()
    cond = test_split.conditions(6)
    samples = test_split.agents[:6].clone()
    samples[3] = torch.randn_like(samples[3], generator=torch.Generator().manual_seed(1))
    for name in ("planner_feasibility", "planner_judge", "layout_consistency", "planner_feasibility_surrogate",
                 "scenario_feasibility", "scenario_judge", "scenario_feasibility_surrogate"):
        scores = check_reward(manager.reward(name), cond, samples)
        assert ((0 <= scores) & (scores <= 1)).all(), name
        assert scores[3] < scores[[0, 1, 2, 4, 5]].max(), name
    with pytest.raises(UserError, match=r"agent rasters \[B, 4, R, R\]"):
        manager.reward("planner_feasibility")(torch.zeros(2, 3, 32, 32), cond)
    with pytest.raises(UserError, match="known options: horizon"):
        manager.reward("planner_feasibility", horizon_s=3.0)


def test_layout_consistency_rewards_the_given_vehicles(test_split):
    from prefdiff_driving.rewards import layout_consistency

    reward = layout_consistency()
    has_given = test_split.layout[:, bev.GIVEN].amax((1, 2)) > 0
    idx = torch.nonzero(has_given).flatten()[:4]
    cond = {k: v[idx] for k, v in test_split.conditions().items()}
    real = test_split.agents[idx]
    dropped = real.clone()
    dropped[:, bev.VEHICLE][cond["layout"][:, bev.GIVEN] > 0.5] = 0.0
    assert (reward(real, cond)[0] > reward(dropped, cond)[0]).all()
    off_road = real.clone()
    off_road[:, bev.VEHICLE][cond["layout"][:, bev.DRIVABLE] < 0.1] = 1.0
    assert (reward(off_road, cond)[0] < reward(real, cond)[0]).all()


def test_scenario_rewards_fail_the_empty_road_that_the_planner_prefers(test_split):
    """The planner alone scores an empty road above real traffic; the scenario reward does not."""
    from prefdiff_driving.rewards import consistency_terms, scenario_feasibility, scenario_judge, traffic_match

    cond, real = test_split.conditions(), test_split.agents
    empty = torch.zeros_like(real)
    assert score_scenes(empty, cond, JUDGE)["score"].mean() > score_scenes(real, cond, JUDGE)["score"].mean()
    for reward in (scenario_feasibility(), scenario_judge()):
        real_scores, info = reward(real, cond)
        assert real_scores.mean() > 2 * reward(empty, cond)[0].mean()
        assert info["traffic_match"] == pytest.approx(1.0) and 0 <= info["planner"] <= 1
    torch.testing.assert_close(traffic_match(real, cond["traffic"]), torch.ones(len(real)))
    # on model-like scenes (given vehicles dropped, a stray car) it is the product of its three factors
    scenes = real.clone()
    scenes[:, bev.VEHICLE][cond["layout"][:, bev.GIVEN] > 0.5] = 0.0
    scenes[:, bev.VEHICLE, 20:22, 20:23] = 1.0
    iou = consistency_terms(scenes, cond["layout"])["iou"]
    assert (iou < 1).any()
    expected = (score_scenes(scenes, cond, JUDGE)["score"] * traffic_match(scenes, cond["traffic"]) * (1 + iou) / 2)
    torch.testing.assert_close(scenario_judge()(scenes, cond)[0], expected)
    # ask for twice the traffic and a busy real scene matches each class about half: a third in all
    busy = (cond["traffic"] > 0.01).all(-1)
    half = traffic_match(real[busy], 2 * cond["traffic"][busy])
    assert busy.sum() > 10 and ((half > 0.2) & (half < 0.4)).all()
    with pytest.raises(UserError, match="traffic"):
        scenario_judge()(real, {k: v for k, v in cond.items() if k != "traffic"})


def test_drift_is_zero_for_real_scenes_and_grows_when_the_road_empties(test_split):
    from prefdiff_driving.rewards import density_drift

    real = test_split.agents
    assert density_drift(real, real) == 0.0
    empty = real.clone()
    empty[:, :2] = 0.0
    assert density_drift(empty, real) == pytest.approx(1.0)
