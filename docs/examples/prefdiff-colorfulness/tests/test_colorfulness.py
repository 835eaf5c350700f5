"""The tutorial plugin's tests, written with prefdiff.testing."""

import torch

from prefdiff.testing import check_reward, fresh_manager


def test_installed_and_meets_the_contract():
    reward = fresh_manager().reward("colorfulness")
    assert reward.plugin == "colorfulness" and reward.differentiable
    check_reward(reward, None, torch.rand(4, 3, 8, 8) * 2 - 1)


def test_grey_scores_zero_and_saturated_colour_scores_high():
    reward = fresh_manager().reward("colorfulness")
    grey = torch.zeros(1, 3, 8, 8)
    red = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, 8, 8)
    scores, _ = reward(torch.cat([grey, red]))
    # Pure red: rg = 255, yb = 127.5, no spread, so M = 0.3 * sqrt(255^2 + 127.5^2) / 100.
    assert float(scores[0]) < 0.01
    assert abs(float(scores[1]) - 0.3 * (255**2 + 127.5**2) ** 0.5 / 100) < 1e-3
