"""`prefdiff bench robotics-flow`: the robotics field on flow matching, beside its DDIM recipe."""

import json
from dataclasses import fields, replace
from functools import partial

import pytest
from prefdiff.bench import run_benchmark
from prefdiff.plugins import get_manager
from prefdiff_robotics import recipe as recipes

_ddim_recipe = recipes.robotics_recipe  # the real one, before a test patches the module

#: The options a flow recipe may set on a method beyond the DDIM recipe's: the sampler's.
FLOW_OPTIONS = {"eta", "sde", "sde_window", "shared_noise"}


def test_robotics_flow_is_registered_beside_robotics():
    manager = get_manager()
    assert {"robotics", "robotics-flow"} <= set(manager.names("benchmarks"))
    recipe = manager.benchmark("robotics-flow", quick=False)
    assert recipe.domain == "robotics-flow" and recipe.model["prediction_type"] == "flow"


@pytest.mark.parametrize("quick", [False, True])
def test_flow_recipe_differs_from_ddim_only_in_family_and_sampler(quick):
    ddim, flow = recipes.robotics_recipe(quick), recipes.robotics_flow_recipe(quick)
    differing = {f.name for f in fields(ddim) if getattr(ddim, f.name) != getattr(flow, f.name)}
    # prepare is a new partial each call: compare what it does
    assert flow.prepare.func is ddim.prepare.func and flow.prepare.keywords == ddim.prepare.keywords
    assert differing - {"prepare"} == {"domain", "model", "methods", "eta"}
    assert flow.eta == 0.0  # evaluated and mined with the Euler ODE, the flow model's own sampler
    assert {k: v for k, v in flow.model.items() if k != "prediction_type"} == ddim.model
    assert ddim.model.get("prediction_type", "epsilon") == "epsilon"
    # the same budgets: every method, its steps and its other options are the DDIM recipe's
    assert flow.methods.keys() == ddim.methods.keys()
    for method, options in flow.methods.items():
        assert set(options) - set(ddim.methods[method]) <= FLOW_OPTIONS, method
        same = {k: v for k, v in options.items() if k not in FLOW_OPTIONS}
        assert same == {k: v for k, v in ddim.methods[method].items() if k not in FLOW_OPTIONS}, method
    for method in ("ddpo", "grpo", "dpok"):  # Flow-GRPO's SDE over a window of the first steps
        first, end = flow.methods[method]["sde_window"]
        assert 0 == first < end < flow.num_steps and 0 < flow.methods[method]["eta"] <= 1
    assert flow.methods["draft"]["eta"] == 0.0  # reward backprop through the ODE


def tiny_robotics_recipe(quick=False):
    """The robotics recipe at sizes a test affords: 40 demos, a small UNet, a few steps."""
    full = _ddim_recipe(quick)
    return replace(full, model={**full.model, "block_out_channels": (16, 32)}, pretrain_steps=20,
                   pretrain_batch=8, align_steps=2, align_batch=2, n_eval=4, eval_samples=1, num_steps=4,
                   mine_conditions=4, mine_per_condition=2, methods={m: {k: v for k, v in o.items() if k != "steps"}
                                                                    for m, o in full.methods.items()},
                   prepare=partial(recipes.prepare, demos=40, quick=True))


def test_tiny_flow_benchmark_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr(recipes, "robotics_recipe", tiny_robotics_recipe)
    out = tmp_path / "out"
    results = run_benchmark("robotics-flow", quick=True, methods=["dpo", "grpo", "draft"], out=out,
                            cache=tmp_path / "cache")
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    assert results["domain"] == "robotics-flow" and set(results["methods"]) == {"dpo", "grpo", "draft"}
    for entry in results["methods"].values():
        assert 0.0 <= entry["reward_mean"] <= 1.0 and entry["improvement_ci95"][0] <= entry["improvement_ci95"][1]
        assert 0.0 <= entry["metrics"]["success_rate"] <= 1.0
    base = next((tmp_path / "cache" / "bench").glob("robotics-flow-*/base"))
    scheduler = json.loads((base / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "FlowMatchEulerDiscreteScheduler"
    assert (out / "samples.png").stat().st_size > 1000 and "reward_mean" in results["edit"]
    assert list((tmp_path / "cache" / "bench" / "robotics-flow-data").glob("demos-40-*.hdf5"))


def test_sde_window_measures_window_against_full_sde_on_the_benchmark_run(tmp_path, monkeypatch):
    from prefdiff.perf import sde_window

    monkeypatch.setattr(recipes, "robotics_recipe", tiny_robotics_recipe)
    cache = tmp_path / "cache"
    bench = run_benchmark("robotics-flow", quick=True, methods=["grpo"], out=tmp_path / "out", cache=cache)
    record = sde_window.run("robotics-flow", "grpo", quick=True, cache=cache, rounds=2, log=lambda *_: None)
    window, full = record["arms"]["window"], record["arms"]["full"]
    # 4 steps, window [0, 2): 2 stochastic steps against 4, half of them trained per update
    assert (window["sde_window"], window["stochastic_steps"], window["trained_steps_per_update"]) == ([0, 2], 2, 1)
    assert (full["sde_window"], full["stochastic_steps"], full["trained_steps_per_update"]) == (None, 4, 2)
    assert window["steps"] == full["steps"] == 2 and window["train_cpu_s"] > 0 and full["train_cpu_s"] > 0
    # the window arm is the benchmark's own grpo run: same base, held-out set and trained model
    assert record["base_reward_mean"] == pytest.approx(bench["base"]["reward_mean"])
    assert window["improvement"] == pytest.approx(bench["methods"]["grpo"]["improvement"])
    assert full["improvement"] != pytest.approx(window["improvement"])
    side = record["side_by_side"]
    assert side["rounds"] == 2 and side["window_step_cpu_s"] > 0 and side["full_step_cpu_s"] > 0
    assert side["full_over_window"] > 0 and record["speedup_train"] == pytest.approx(
        full["train_cpu_s"] / window["train_cpu_s"], rel=1e-2)
    gap = record["window_minus_full"]
    assert gap["reward"] == pytest.approx(window["reward_mean"] - full["reward_mean"], abs=1e-6)
    assert gap["ci95"][0] <= gap["reward"] <= gap["ci95"][1]


def test_sde_window_refuses_a_method_without_a_window(tmp_path, monkeypatch):
    from prefdiff.errors import UserError
    from prefdiff.perf import sde_window

    monkeypatch.setattr(recipes, "robotics_recipe", tiny_robotics_recipe)
    with pytest.raises(UserError, match="no sde_window"):
        sde_window.run("robotics", "grpo", quick=True, cache=tmp_path / "cache", log=lambda *_: None)
