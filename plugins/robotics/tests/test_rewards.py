"""Feasibility in the simulator, success, and the differentiable surrogate."""

import numpy as np
import pytest
import torch

from prefdiff.errors import UserError
from prefdiff.plugins import get_manager
from prefdiff.testing import check_reward
from prefdiff_robotics.expert import plan_reference
from prefdiff_robotics.scene import DT, VMAX, Layout, encode_trajectory
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
