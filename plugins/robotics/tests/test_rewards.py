"""Feasibility in the simulator, success, and the differentiable surrogate, term by term against
the simulator's where both are exact."""

import numpy as np
import pytest
import torch

from prefdiff.errors import UserError
from prefdiff.plugins import get_manager
from prefdiff.testing import check_reward
from prefdiff_robotics.expert import plan_reference
from prefdiff_robotics.rewards import feasibility_surrogate, score_execution
from prefdiff_robotics.scene import DT, HORIZON, VMAX, Layout, decode_trajectory, encode_trajectory
from prefdiff_robotics.sim import Simulator

LAYOUT = Layout(start=[-0.7, 0.05], goal=[0.7, -0.05], obstacles=[[0.0, 0.0, 0.2], [0.5, 0.6, 0.12]])


def straight_line(layout: Layout, steps: int = 32) -> torch.Tensor:
    """Constant speed from start to goal, through whatever is in the way."""
    positions = layout.start + np.linspace(0, 1, steps)[:, None] * (layout.goal - layout.start)
    actions = np.zeros_like(positions)
    actions[:-1] = np.diff(positions, axis=0) / DT / VMAX
    return torch.from_numpy(encode_trajectory(positions, actions))


def expert_plan(layout: Layout) -> torch.Tensor:
    """The expert's plan, driven through the simulator and recorded as a trajectory."""
    reference = plan_reference(layout, np.random.default_rng(0))
    positions, actions, contacts = Simulator().track(layout, reference)
    assert contacts == 0
    return torch.from_numpy(encode_trajectory(positions, actions))


@pytest.fixture
def batch():
    other = Layout(start=[0.6, 0.7], goal=[-0.6, -0.6], obstacles=[[0.0, 0.05, 0.15], [-0.5, 0.5, 0.1],
                                                                  [0.5, -0.5, 0.1]])
    samples = torch.stack([straight_line(LAYOUT), expert_plan(LAYOUT), straight_line(other), expert_plan(other)])
    cond = torch.stack([torch.from_numpy(l.to_vector()) for l in (LAYOUT, LAYOUT, other, other)])
    return samples, cond


def test_colliding_trajectory_scores_low_and_clean_one_high(batch):
    samples, cond = batch
    feasibility = get_manager().reward("robot_feasibility")
    scores = check_reward(feasibility, cond, samples)
    assert scores[1] > 0.9 and scores[3] > 0.9  # clean: at the goal, no contact
    assert scores[0] < 0.3 and scores[2] < 0.3  # straight through an obstacle
    _, info = feasibility(samples, cond)
    assert info["collision_rate"] == 0.5 and info["success_rate"] == 0.5 and info["nonfinite"] == 0
    success = check_reward(get_manager().reward("robot_success"), cond, samples)
    assert success.tolist() == [0.0, 1.0, 0.0, 1.0]


def test_random_trajectories_score_near_zero(batch):
    _, cond = batch
    noise = torch.randn(4, 4, 32, generator=torch.Generator().manual_seed(0))
    scores, _ = get_manager().reward("robot_feasibility")(noise, cond)
    assert scores.max() < 0.2


def test_nan_trajectory_is_infeasible_and_counted(batch):
    samples, cond = batch
    samples = samples.clone()
    samples[1, 0, 7] = float("nan")
    samples[3, 2, 0] = float("inf")
    for name in ("robot_feasibility", "robot_feasibility_surrogate", "robot_success"):
        scores, info = get_manager().reward(name)(samples, cond)
        assert scores[1] == 0 and scores[3] == 0 and info["nonfinite"] == 2, name
        assert torch.isfinite(scores).all()


def test_surrogate_is_differentiable_and_agrees_in_order(batch):
    samples, cond = batch
    reward = get_manager().reward("robot_feasibility_surrogate")
    assert reward.differentiable
    scores = check_reward(reward, cond, samples)
    assert scores[1] > scores[0] and scores[3] > scores[2]
    x = samples[:1].clone().requires_grad_(True)  # colliding: the gradient pushes waypoints out
    reward(x, cond[:1])[0].sum().backward()
    centre = torch.tensor([0.0, 0.0])
    k = 15  # a waypoint inside the obstacle
    outward = x.detach()[0, :2, k] - centre
    assert torch.dot(x.grad[0, :2, k], outward) > 0


@pytest.mark.parametrize("name", ["robot_feasibility", "robot_feasibility_surrogate"])
def test_wrong_dimensions_are_a_clear_error(name, batch):
    samples, cond = batch
    reward = get_manager().reward(name)
    with pytest.raises(UserError, match=r"shape \[B, 4, T\].*channels=4"):
        reward(torch.zeros(4, 7, 32), cond)
    with pytest.raises(UserError, match=r"conditions of shape \[B, 20\]"):
        reward(samples, cond[:, :6])


@pytest.mark.parametrize("name", ["robot_feasibility", "robot_feasibility_surrogate", "robot_success"])
def test_two_steps_is_the_shortest_trajectory_scored(name):
    # the start and one step: the smoothness term differences consecutive commands, so one step is too few
    positions = LAYOUT.start + np.array([[0.0, 0.0], [0.02, 0.0]])
    trajectory = torch.from_numpy(encode_trajectory(positions, np.array([[0.1, 0.0], [0.0, 0.0]])))[None]
    cond = torch.from_numpy(LAYOUT.to_vector())[None]
    reward = get_manager().reward(name)
    scores, _ = reward(trajectory, cond)
    assert scores.shape == (1,) and torch.isfinite(scores).all()
    with pytest.raises(UserError, match=r"shape \[B, 4, T\]"):
        reward(trajectory[..., :1], cond)


# ---------------------------------- the surrogate's terms against the simulator's ----


OPEN = Layout(start=[-0.6, -0.6], goal=[0.6, 0.6], obstacles=[[0.0, 0.6, 0.15], [0.5, -0.4, 0.1]])
"""Nothing on the diagonal from start to goal; two obstacle slots empty (their zeros sit on the path)."""


def run_at_constant_speed(start, end) -> torch.Tensor:
    """From ``start`` to ``end`` in equal steps, commanding that one speed throughout: no jerk, no limit."""
    start, end = np.asarray(start, dtype=float), np.asarray(end, dtype=float)
    positions = start + np.linspace(0, 1, HORIZON)[:, None] * (end - start)
    actions = np.tile((end - start) / (HORIZON - 1) / DT / VMAX, (HORIZON, 1))
    return torch.from_numpy(encode_trajectory(positions, actions))


def executed_terms(layout: Layout, trajectory: torch.Tensor) -> dict:
    """``score_execution``'s terms of the trajectory run in MuJoCo."""
    positions, actions = decode_trajectory(trajectory.double().numpy())
    return score_execution(Simulator().execute(layout, positions, actions), positions, actions)


def surrogate_terms(layout: Layout, trajectory: torch.Tensor) -> tuple[float, float]:
    """The surrogate's score and its clearance term for one trajectory."""
    scores, info = feasibility_surrogate()(trajectory[None], torch.from_numpy(layout.to_vector())[None])
    return scores.item(), info["surrogate_clear"]


def reach_by_formula(distance: float) -> float:
    """The documented reach term, ``exp(-max(d - 0.1, 0) / 0.2)``."""
    return float(np.exp(-max(distance - 0.1, 0.0) / 0.2))


@pytest.mark.parametrize("short_of_goal", [0.0, 0.05, 0.3, 0.8])
def test_surrogate_and_simulator_agree_term_by_term_on_a_clean_run(short_of_goal):
    """A run on an open diagonal at constant speed, ending ``short_of_goal`` metres before the goal: no
    contact, no limit, no jerk, so both scores are ``0.6 reach + 0.4`` and reach follows the formula on
    the planned end (the tracking controller ends within 1 mm of it)."""
    direction = (OPEN.goal - OPEN.start) / np.linalg.norm(OPEN.goal - OPEN.start)
    trajectory = run_at_constant_speed(OPEN.start, OPEN.goal - short_of_goal * direction)
    executed = executed_terms(OPEN, trajectory)
    assert executed["clear"] == 1.0 and executed["within_limits"] == 1.0 and executed["smooth"] == 1.0
    assert executed["final_distance"] == pytest.approx(short_of_goal, abs=1e-3)
    assert executed["reach"] == pytest.approx(reach_by_formula(short_of_goal), rel=1e-3 / 0.2)
    score, clear = surrogate_terms(OPEN, trajectory)
    assert clear == pytest.approx(1.0, abs=1e-6)
    assert (score - 0.4) / 0.6 == pytest.approx(reach_by_formula(short_of_goal), rel=1e-4, abs=1e-6)
    assert score == pytest.approx(executed["score"], rel=1e-3 / 0.2)


def test_surrogate_and_simulator_charge_the_same_jerk_for_a_run_that_stops():
    """The same run stopping dead at the goal: one jump of the command, so smooth < 1, the same in both."""
    trajectory = run_at_constant_speed(OPEN.start, OPEN.goal)
    trajectory[2:, -1] = 0.0
    executed = executed_terms(OPEN, trajectory)
    jerk = 2 * (1.2 / (HORIZON - 1) / DT / VMAX) ** 2 / (HORIZON - 1)
    assert executed["smooth"] == pytest.approx(np.exp(-jerk / 0.25)) and executed["smooth"] < 0.97
    assert executed["reach"] == 1.0 and executed["clear"] == 1.0 and executed["within_limits"] == 1.0
    score, _ = surrogate_terms(OPEN, trajectory)
    assert score == pytest.approx(executed["score"], rel=1e-5)
    assert score == pytest.approx(0.8 + 0.2 * executed["smooth"], rel=1e-5)


def test_a_run_straight_through_an_obstacle_loses_clearance_in_both():
    trajectory = run_at_constant_speed(LAYOUT.start, LAYOUT.goal)
    executed = executed_terms(LAYOUT, trajectory)
    score, clear = surrogate_terms(LAYOUT, trajectory)
    # the simulator: in contact for most of the run, and stuck at the obstacle far from the goal
    assert executed["collided"] == 1.0 and executed["clear"] < 0.01 and executed["final_distance"] > 0.5
    # the surrogate: the planned waypoints cut up to 0.27 m deep into the inflated obstacle
    assert clear < 0.01
    clean = executed_terms(OPEN, run_at_constant_speed(OPEN.start, OPEN.goal))["score"]
    assert executed["score"] < 0.01 * clean and score < 0.01 * clean
