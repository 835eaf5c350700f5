"""`prefdiff bench robotics --quick` end to end at test size: data, base model, alignment, figures, editing."""

import json
from dataclasses import replace
from functools import partial

import pytest
import torch

from prefdiff.bench import run_benchmark
from prefdiff.plugins import get_manager
from prefdiff.testing import tiny_scheduler
from prefdiff_robotics import recipe as recipes
from prefdiff_robotics.editing import edit_around_new_obstacle, pin_start_goal, plan


def at_test_size(recipe):
    """The quick recipe at a test's size: 100 demos, a half-width UNet pretrained 200 steps (the quick
    recipe's 300 on 600 demos took 2 minutes of the suite; `make bench-quick` runs that). Narrower or
    shorter, the base planned so poorly that the editing task found no plan to put an obstacle on."""
    return replace(recipe, model={**recipe.model, "block_out_channels": (32, 64)}, pretrain_steps=200,
                   pretrain_batch=32, align_steps=2, n_eval=16, mine_conditions=8,
                   prepare=partial(recipes.prepare, demos=100, quick=True))


def test_quick_benchmark_writes_the_contract(tmp_path, monkeypatch):
    manager = get_manager()
    quick_recipe = manager.benchmark
    monkeypatch.setattr(manager, "benchmark", lambda name, quick=False: at_test_size(quick_recipe(name, quick=quick)))
    results = run_benchmark("robotics", quick=True, out=tmp_path / "out", cache=tmp_path / "cache")
    out = tmp_path / "out"
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert {"domain", "reward", "quick", "seed", "n_eval", "base", "untrained", "methods", "edit", "env"} <= set(on_disk)
    assert on_disk["domain"] == "robotics" and on_disk["reward"] == "robot_feasibility"
    assert set(on_disk["methods"]) == {"dpo", "ddpo", "draft"}
    for entry in on_disk["methods"].values():
        assert {"reward_mean", "reward_std", "improvement", "improvement_ci95", "drift", "reward_queries",
                "train_wall_s", "peak_rss_mb"} <= set(entry)
        assert 0.0 <= entry["reward_mean"] <= 1.0
    assert on_disk["base"]["reward_mean"] > on_disk["untrained"]["reward_mean"]
    assert {"reward_mean", "preservation", "success_rate", "kept_fraction"} <= set(on_disk["edit"])
    # the recipe's metrics hook: every model's success rate, and its change against the base
    assert 0.0 <= on_disk["base"]["metrics"]["success_rate"] <= 1.0
    for name, entry in on_disk["methods"].items():
        metrics = entry["metrics"]
        assert 0.0 <= metrics["success_rate"] <= 1.0 and metrics["n"] == on_disk["n_eval"]
        lo, hi = metrics["success_improvement_ci95"]
        assert lo <= metrics["success_improvement"] <= hi
        assert metrics["success_improvement"] == pytest.approx(
            metrics["success_rate"] - on_disk["base"]["metrics"]["success_rate"])
    assert (out / "frames.png").is_file() or "MUJOCO_GL" in (out / "frames.txt").read_text()
    for figure in ("samples.png", "edit.png"):
        assert (out / figure).stat().st_size > 1000
    assert "success_rate" in (out / "report.md").read_text()
    # the demonstrations were generated once, in the cache, in the robomimic layout
    assert list((tmp_path / "cache" / "bench" / "robotics-data").glob("demos-*.hdf5"))


def test_plan_pins_start_and_goal_and_edit_keeps_the_rest():
    from prefdiff.models import build_denoiser

    from prefdiff_robotics.conditioner import LayoutTimeline
    from prefdiff_robotics.recipe import robotics_recipe
    from prefdiff_robotics.scene import Layout

    torch.manual_seed(0)
    denoiser = build_denoiser(robotics_recipe(quick=True).model, LayoutTimeline())
    layouts = [Layout([-0.7, -0.6], [0.7, 0.6], [[0.6, -0.6, 0.1], [-0.6, 0.6, 0.1]]),
               Layout([-0.6, 0.7], [0.6, -0.7], [[0.6, 0.6, 0.1], [-0.6, -0.6, 0.1]])]
    cond = torch.stack([torch.from_numpy(l.to_vector()) for l in layouts])
    known, mask = pin_start_goal(cond)
    plans = plan(denoiser, tiny_scheduler(), cond, num_steps=3)
    torch.testing.assert_close(plans * mask, known * mask)
    result = edit_around_new_obstacle(denoiser, tiny_scheduler(), cond, num_steps=3)
    if result["metrics"]["n"]:  # an untrained plan may put the new obstacle on the start or goal
        keep = result["masks"]
        torch.testing.assert_close(result["edited"] * keep, result["original"] * keep * 1.0, atol=1e-5, rtol=0)
        assert 0 < result["metrics"]["kept_fraction"] < 1
        assert result["cond"][:, 4:].view(-1, 4, 4)[:, :, 3].sum(1).tolist() == [3.0] * result["metrics"]["n"]
