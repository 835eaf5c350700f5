"""The scenario rewards factor by factor: planner score x traffic match x (1 + IoU of the given
vehicles) / 2, each factor checked against cells counted here, on hand-made roads and the test split."""

import numpy as np
import pytest
import torch

from prefdiff_driving import bev
from prefdiff_driving.planner import JUDGE, TRAINING, score_scenes, soft_feasibility
from prefdiff_driving.rewards import (TRAFFIC_FLOOR, consistency_terms, planner_feasibility, planner_judge,
                                      scenario_feasibility, scenario_feasibility_surrogate, scenario_judge,
                                      traffic_match)

CELLS = bev.RESOLUTION ** 2
FLOOR = TRAFFIC_FLOOR * CELLS
"""The traffic floor in cells (about half a car)."""
GIVEN = (-12.0, -3.5)
"""A parked car behind the ego in the other lane: on the road, never in the planner's way."""
SOFT_RTOL = 0.2
"""How far the soft traffic match may sit from the count: the sigmoid leaves every empty cell 3e-4
of an agent, a third of a cell per scene and kind against a floor of four, up to 9% per kind."""
SIZES = {"vehicle": (1.9, 4.5, 1.6), "pedestrian": (0.7, 0.7, 1.8)}


def cells(x: float, y: float, kind: str = "vehicle") -> np.ndarray:
    """Boolean ``[R, R]``: the cells a parked agent aligned with the ego covers."""
    width, length, _ = SIZES[kind]
    return bev.box_cells((x, y), 0.0, length, width)


def scene(*agents: tuple) -> torch.Tensor:
    """``[1, 4, R, R]`` raster of parked agents ``(x, y)`` (a vehicle) or ``(x, y, kind)``."""
    boxes = [{"xy": np.array(a[:2]), "yaw": 0.0, "size": SIZES[a[2] if len(a) > 2 else "vehicle"],
              "velocity": (0.0, 0.0), "kind": a[2] if len(a) > 2 else "vehicle"} for a in agents]
    return torch.from_numpy(bev.agent_raster(boxes))[None]


def road(batch: int, given: tuple = (), traffic: tuple = (0, 0), speed: float = 6.0) -> dict:
    """A straight road 7.5 m wide along the ego's heading with the route straight ahead, the
    vehicles ``given`` (``(x, y)`` each) in the layout and ``traffic`` asked in cells (vehicle, pedestrian)."""
    layout = torch.zeros(batch, bev.LAYOUT_CHANNELS, bev.RESOLUTION, bev.RESOLUTION)
    y = torch.from_numpy(bev.cell_centres()[..., 1]).float()
    layout[:, bev.DRIVABLE] = ((y > -5.0) & (y < 2.5)).float()
    for xy in given:
        layout[:, bev.GIVEN] += torch.from_numpy(cells(*xy)).float()
    route = torch.stack([torch.arange(bev.ROUTE_POINTS) * bev.ROUTE_SPACING, torch.zeros(bev.ROUTE_POINTS)], -1)
    asked = torch.tensor([traffic], dtype=torch.float32) / CELLS
    return {"layout": layout.clamp(max=1), "route": route.float().expand(batch, -1, -1).clone(),
            "speed": torch.full((batch, 1), speed), "traffic": asked.expand(batch, -1).clone()}


def match_by_hand(got: tuple, want: tuple) -> float:
    """The documented traffic match from cell counts: per kind (min + floor) / (max + floor), multiplied."""
    return float(np.prod([(min(g, w) + FLOOR) / (max(g, w) + FLOOR) for g, w in zip(got, want)]))


def iou_by_hand(vehicles: np.ndarray, given: np.ndarray) -> float:
    """IoU of the given vehicles with the generated vehicle cells touching them (8-neighbourhood);
    1 when there is nothing to compare."""
    padded = np.pad(given, 1)
    near = np.zeros_like(given)
    for di in range(3):
        for dj in range(3):
            near |= padded[di:di + given.shape[0], dj:dj + given.shape[1]]
    matched = vehicles & near
    union = (matched | given).sum()
    return 1.0 if union == 0 else float((matched & given).sum() / union)


def counts(raster: torch.Tensor) -> tuple[int, int]:
    """Cells holding a vehicle and a pedestrian in a ``[4, R, R]`` raster."""
    return int((raster[bev.VEHICLE] > 0.5).sum()), int((raster[bev.PEDESTRIAN] > 0.5).sum())


def counts_of(traffic: torch.Tensor) -> tuple[int, int]:
    """A condition's asked traffic (densities) in cells."""
    return tuple(int(round(float(t) * CELLS)) for t in traffic)


def test_traffic_match_is_the_density_ratio_of_each_kind():
    a, b, c, d, walker = (-12.0, -3.5), (12.0, -3.5), (-4.5, -3.5), (18.0, -3.5), (0.0, 6.0, "pedestrian")
    want = (cells(*a) | cells(*b)).sum(), cells(*walker).sum()
    scenes = torch.cat([scene(a, b, walker), scene(), scene(a, walker), scene(a, b, c, d, walker), scene(a, b)])
    got = [counts(s) for s in scenes]
    assert got[0] == want and got[1] == (0, 0) and got[3][0] == 2 * want[0]     # the hand-made counts add up
    expected = torch.tensor([match_by_hand(g, want) for g in got])
    # as asked, empty (about 0.1, as documented), one of two cars, twice the cars, no pedestrian:
    # 16 vehicle and 4 pedestrian cells asked, a floor of 4 cells
    torch.testing.assert_close(expected, torch.tensor([1.0, 4 / 20 * 4 / 8, 12 / 20, 20 / 36, 4 / 8]))
    asked = torch.tensor([want], dtype=torch.float32).expand(len(scenes), -1) / CELLS
    torch.testing.assert_close(traffic_match(scenes, asked), expected)
    # the soft form (reward backpropagation) agrees on clean 0/1 rasters, up to the sigmoid's leak
    torch.testing.assert_close(traffic_match(scenes, asked, sharpness=16.0), expected, atol=0.0, rtol=SOFT_RTOL)
    # a scene asked for no traffic is matched by the empty road
    assert traffic_match(scene(), torch.zeros(1, 2)).item() == 1.0


def test_traffic_match_is_in_the_samples_dtype_whatever_dtype_the_asked_traffic_has():
    # a user may set the traffic from numpy, in float64: it is read in the samples' dtype
    scenes = torch.cat([scene(GIVEN), scene()])
    asked = torch.tensor([[int(cells(*GIVEN).sum()), 0]], dtype=torch.float32).expand(2, -1) / CELLS
    match = traffic_match(scenes, asked.double())
    assert match.dtype == scenes.dtype == torch.float32
    torch.testing.assert_close(match, traffic_match(scenes, asked))


def test_given_vehicle_iou_counts_only_generated_cars_touching_the_given_ones():
    x, y = GIVEN
    scenes = torch.cat([scene(GIVEN), scene(), scene((x + bev.CELL, y)), scene((x + 2 * bev.CELL, y)),
                        scene(GIVEN, (12.0, -3.5))])
    layout = road(len(scenes), given=[GIVEN])["layout"]
    given = cells(*GIVEN)
    expected = torch.tensor([iou_by_hand(s[bev.VEHICLE].numpy() > 0.5, given) for s in scenes])
    # exact, missing, one cell and two cells off (the part beyond the given car's neighbourhood is
    # free traffic), and exact with a free car elsewhere
    torch.testing.assert_close(expected, torch.tensor([1.0, 0.0, 0.6, 0.4, 1.0]))
    torch.testing.assert_close(consistency_terms(scenes, layout)["iou"], expected)
    # nothing given: any scene is consistent
    torch.testing.assert_close(consistency_terms(scenes, road(len(scenes))["layout"])["iou"], torch.ones(len(scenes)))


def test_a_layout_cell_given_at_exactly_one_half_is_not_a_given_vehicle():
    # the same strict threshold (> 0.5) as the scene edits and the figures: a car drawn at half
    # strength (as a resized layout leaves on a box's edge cells) is not given
    layout = road(2, given=[GIVEN])["layout"]
    layout[:, bev.GIVEN] *= 0.5
    assert layout[:, bev.GIVEN].max() == 0.5
    # nothing given: the empty road and the car where the layout half-draws one are both consistent
    torch.testing.assert_close(consistency_terms(torch.cat([scene(), scene(GIVEN)]), layout)["iou"], torch.ones(2))


def test_scenario_rewards_multiply_their_three_factors_on_a_hand_made_road():
    """Asked for one car where the condition gives it: the planner scores a clean road 1 (every PDM
    term perfect) and a car on the ego 0, so each factor of the product is known here."""
    x, y = GIVEN
    moved = (x + 2 * bev.CELL, y)
    asked = (int(cells(*GIVEN).sum()), 0)
    scenes = torch.cat([scene(GIVEN), scene(), scene(moved), scene((1.0, 0.0))])
    cond = road(len(scenes), given=[GIVEN], traffic=asked)
    planner = torch.tensor([1.0, 1.0, 1.0, 0.0])
    match = torch.tensor([match_by_hand(counts(s), asked) for s in scenes])
    iou = torch.tensor([1.0, 0.0, 0.4, 0.0])
    # the empty road, though the planner scores it 1: 1 x 1/3 x 1/2
    torch.testing.assert_close(match, torch.tensor([1.0, FLOOR / (asked[0] + FLOOR), 1.0, 1.0]))
    for reward, cfg in ((scenario_feasibility(), TRAINING), (scenario_judge(), JUDGE)):
        torch.testing.assert_close(score_scenes(scenes, cond, cfg)["score"], planner)
        scores, info = reward(scenes, cond)
        torch.testing.assert_close(scores, planner * match * (1 + iou) / 2)
        assert info["traffic_match"] == pytest.approx(float(match.mean()))
        assert info["given_iou"] == pytest.approx(float(iou.mean()))
    # the surrogate: the smooth planner times the smooth traffic match (no IoU factor)
    surrogate, _ = scenario_feasibility_surrogate()(scenes, cond)
    torch.testing.assert_close(surrogate, soft_feasibility(scenes, cond) * match, atol=0.0, rtol=SOFT_RTOL)
    assert surrogate[1] < 0.5 * surrogate[0]


def test_planner_info_reports_the_share_of_scenes_with_a_feasible_plan():
    scenes = torch.cat([scene(GIVEN), scene(), scene((1.0, 0.0))])
    cond = road(len(scenes), given=[GIVEN])
    for reward, cfg in ((planner_feasibility(), TRAINING), (planner_judge(), JUDGE)):
        scores, info = reward(scenes, cond)
        # a clean road scores 1, a car on the ego leaves no plan (as in the test above)
        torch.testing.assert_close(scores, torch.tensor([1.0, 1.0, 0.0]))
        torch.testing.assert_close(scores, score_scenes(scenes, cond, cfg)["score"])
        assert info["feasible"] == pytest.approx(2 / 3)


def test_the_empty_road_scores_low_on_the_reward_the_judge_and_the_surrogate(test_split):
    cond, real = test_split.conditions(), test_split.agents
    empty = torch.zeros_like(real)
    # the planners alone prefer the empty road (test_planner.py shows it for the judge's); the
    # traffic factor must undo that
    assert soft_feasibility(empty, cond).mean() > soft_feasibility(real, cond).mean()
    # an empty road scores at most its traffic match, counted here, in every scene
    bound = torch.tensor([match_by_hand((0, 0), counts_of(t)) for t in cond["traffic"]])
    assert (bound < 0.5).float().mean() > 0.5
    for name, reward, slack in (("scenario_feasibility", scenario_feasibility(), 1.0),
                                ("scenario_judge", scenario_judge(), 1.0),
                                ("scenario_feasibility_surrogate", scenario_feasibility_surrogate(), 1 + SOFT_RTOL)):
        empty_scores, real_scores = reward(empty, cond)[0], reward(real, cond)[0]
        assert (empty_scores <= bound * slack + 1e-6).all(), name
        assert empty_scores.mean() < 0.2 and real_scores.mean() > 3 * empty_scores.mean(), name


def test_scenario_rewards_are_the_product_of_the_module_terms_on_edited_real_scenes(test_split):
    """On model-like scenes (given vehicles dropped, a stray car, some pedestrians gone) every factor
    varies, and each reward is exactly its documented product with its own planner."""
    cond = {k: v[::2] for k, v in test_split.conditions().items()}
    scenes = test_split.agents[::2].clone()
    scenes[:, bev.VEHICLE][cond["layout"][:, bev.GIVEN] > 0.5] = 0.0
    scenes[::2, bev.VEHICLE, 20:22, 20:23] = 1.0
    scenes[::3, bev.PEDESTRIAN] = 0.0
    scenes[1::4, bev.VEHICLE, 15:17, 17:19] = 1.0                                   # in the ego's way
    match = traffic_match(scenes, cond["traffic"])
    iou = consistency_terms(scenes, cond["layout"])["iou"]
    planners = {cfg: score_scenes(scenes, cond, cfg)["score"] for cfg in (TRAINING, JUDGE)}
    # no factor is trivially 1, and the two planners tell apart
    assert ((planners[TRAINING] > 0) & (planners[TRAINING] < 1)).any() and (match < 0.9).any() and (iou < 1).any()
    assert (planners[TRAINING] != planners[JUDGE]).sum() > 5
    for reward, cfg in ((scenario_feasibility(), TRAINING), (scenario_judge(), JUDGE)):
        planner = planners[cfg]
        scores, info = reward(scenes, cond)
        torch.testing.assert_close(scores, planner * match * (1 + iou) / 2)
        assert info["planner"] == pytest.approx(float(planner.mean()))
    surrogate, _ = scenario_feasibility_surrogate()(scenes, cond)
    torch.testing.assert_close(surrogate, soft_feasibility(scenes, cond) * traffic_match(scenes, cond["traffic"], 16.0))


def test_surrogate_gradient_asks_an_empty_road_for_the_missing_traffic():
    cond = road(1, given=[GIVEN], traffic=(int(cells(*GIVEN).sum()), 0))
    empty = torch.zeros(1, bev.AGENT_CHANNELS, bev.RESOLUTION, bev.RESOLUTION, requires_grad=True)
    scenario_feasibility_surrogate()(empty, cond)[0].sum().backward()
    # on every road cell the smooth traffic match's pull towards the asked car outweighs the smooth
    # planner's push away from it
    on_road = cond["layout"][0, bev.DRIVABLE] > 0.5
    assert (empty.grad[0, bev.VEHICLE][on_road] > 0).all()
