"""Inserting and removing vehicles by masked inpainting keeps everything outside the region."""

import numpy as np
import pytest
import torch

from prefdiff.errors import UserError
from prefdiff.models import build_denoiser
from prefdiff.testing import tiny_scheduler
from prefdiff_driving import bev
from prefdiff_driving.conditioner import LayoutRoute
from prefdiff_driving.editing import edit_scenes, plan_edit
from prefdiff_driving.recipe import driving_recipe


def test_plan_edit_picks_a_vehicle_to_remove_and_a_free_road_spot_to_insert(test_split):
    rng = np.random.default_rng(0)
    i = next(i for i in range(len(test_split)) if (test_split.agents[i, bev.VEHICLE] > 0).any())
    x0, layout = test_split.agents[i], test_split.layout[i]
    box, new = plan_edit(x0, layout, "remove", rng)
    assert (x0[bev.VEHICLE][box] == 1).all() and torch.equal(new, layout)
    box, new = plan_edit(x0, layout, "insert", rng)
    assert box.sum() >= 3 and (x0[bev.VEHICLE][box] == 0).all()
    assert (new[bev.GIVEN][box] == 1).all() and (layout[bev.DRIVABLE][box] >= 0.5).all()
    with pytest.raises(UserError, match="a scene edit is one of insert, remove"):
        plan_edit(x0, layout, "grow", rng)


def test_edits_keep_the_scene_outside_the_region(test_split):
    torch.manual_seed(0)
    denoiser = build_denoiser(driving_recipe(quick=True).model, LayoutRoute())
    result = edit_scenes(denoiser, tiny_scheduler(), test_split.agents, test_split.conditions(), n=4, num_steps=3)
    assert result["kinds"] == ["insert", "remove", "insert", "remove"]
    keep = ~result["regions"][:, None].expand_as(result["original"])
    torch.testing.assert_close(result["edited"][keep], result["original"][keep])
    assert result["regions"].sum() > result["boxes"].sum()       # a margin around each box is regenerated
    m = result["metrics"]
    assert m["n"] == 4 and 0 <= m["reward_mean"] <= 1 and 0.9 < m["preservation"] <= 1
    assert {"success_insert", "success_remove"} <= set(m)
    # the asked vehicle density follows the edit: up by the box for an insert, down for a remove
    change = result["cond"]["traffic"][:, 0] - result["cond_before"]["traffic"][:, 0]
    share = result["boxes"].flatten(1).float().mean(1)
    torch.testing.assert_close(change, torch.tensor([1.0, -1.0, 1.0, -1.0]) * share)
    torch.testing.assert_close(result["cond"]["traffic"][:, 1], result["cond_before"]["traffic"][:, 1])
