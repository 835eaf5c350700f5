"""The performance suite on its smallest settings: the code path of `make bench-quick`."""

import json
import math

import pytest

from prefdiff import hookimpl
from prefdiff.bench import Recipe
from prefdiff.perf.__main__ import main
from prefdiff.perf.efficiency import field_speedup, time_to_reach
from prefdiff.perf.growth import fit_exponent
from prefdiff.testing import registered_plugin

TINY = Recipe(
    domain="tinyperf", dataset="synthetic_textures", dataset_options={"resolution": 8},
    model={"kind": "unet2d", "sample_size": 8, "channels": 3, "conditioning": "class", "num_classes": 4,
           "block_out_channels": (8, 16)},
    conditioner="class_label", reward="jpeg_compressibility", judge="jpeg_incompressibility",
    methods={"draft": {"reward": "smoothness", "k": 1}, "ddpo": {"samples_per_condition": 2}},
    align_batch=2, n_eval=8, num_steps=2, train_size=16)


class TinyRecipe:
    @hookimpl
    def prefdiff_register_benchmarks(self, register):
        register("tinyperf", lambda quick: TINY)


def _curves(tmp_path):
    """A field's results.json with curves: grpo reaches DDPO's final 0.5 at 10 s, DDPO at 40 s."""
    entry = {"reward_mean": 0.5, "reward_std": 0.1, "improvement": 0.1, "improvement_ci95": [0.0, 0.2]}
    results = {"domain": "tinyperf", "reward": "r", "judge": "j", "seed": 0, "n_eval": 8, "quick": True,
               "base": {"reward_mean": 0.4, "reward_std": 0.1}, "methods": {
        "ddpo": {**entry, "curve": [[0.0, 0.1], [20.0, 0.3], [40.0, 0.5]]},
        "grpo": {**entry, "curve": [[0.0, 0.1], [10.0, 0.6], [30.0, 0.7]]},
        "dpo": {**entry, "curve": [[0.0, 0.1], [5.0, 0.2]]}}}
    (tmp_path / "results" / "tinyperf").mkdir(parents=True)
    (tmp_path / "results" / "tinyperf" / "results.json").write_text(json.dumps(results))
    return results


def test_quick_suite_writes_every_figure(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # main sets it in this process; undone after the test
    _curves(tmp_path)
    out = tmp_path / "results" / "perf.json"
    with registered_plugin(TinyRecipe(), "tiny-perf"):
        assert main(["--quick", "--out", str(out), "--results", str(tmp_path / "results"),
                     "--domain", "tinyperf"]) == 0
    perf = json.loads(out.read_text())
    figures = {}
    for f in perf["figures"]:
        assert {"id", "name", "value", "target", "met", "details"} <= set(f)
        assert isinstance(f["met"], bool) and f["target"].split()[0] in ("<=", ">=")
        figures.setdefault(f["id"], []).append(f)
    assert sorted(figures) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert len(figures[5]) == 3  # batch exponent, resolution exponent, DDP speed-up
    for f in [*figures[1], *figures[2], *figures[3], figures[5][2], *figures[6]]:
        assert math.isfinite(f["value"]) and f["value"] > 0, f
    # Exponents fitted to two sizes of a tiny model are noise around a fixed cost: finite is all.
    assert all(math.isfinite(f["value"]) and f["unit"] == "exponent" for f in figures[5][:2])
    assert set(figures[5][0]["details"]["step_ms"]) == {"b4", "b8"}
    overhead = figures[1][0]["details"]
    assert len(overhead) == 5 and all(d["prefdiff_ms"] > 0 and d["bare_ms"] > 0 for d in overhead.values())
    assert figures[1][0]["value"] == max(d["ratio"] for d in overhead.values())
    memory = figures[3][0]["details"]
    assert memory["lora_r8_adapter_reference"]["trainable"] < memory["full_two_copy"]["trainable"]
    assert memory["full_two_copy"]["peak_mb"] > memory["full_two_copy"]["baseline_mb"] > 0
    assert set(figures[6][0]["details"]["by_k"]) == {"K=1", "K=1 checkpointed", "K=5", "K=5 checkpointed",
                                                     "K=all", "K=all checkpointed"}
    rewards = figures[4][0]["details"]
    assert rewards["jpeg_compressibility"]["method"] == "ddpo"  # the recipe's reward, in a DDPO step
    assert rewards["jpeg_compressibility"]["samples_per_step"] == 4  # 2 conditions x 2 samples
    assert 0 < rewards["jpeg_compressibility"]["share"] and rewards["smoothness"]["method"] == "draft"
    assert rewards["jpeg_incompressibility"]["role"] == "judge only"
    assert figures[4][0]["value"] == max(r["share"] for r in rewards.values() if "share" in r)
    assert figures[7][0]["value"] == pytest.approx(4.0)  # grpo 10 s against DDPO's 40 s
    overlap = figures[8][0]["details"]["tinyperf"]
    assert overlap["serial_step_s"] > 0 and overlap["overlapped_step_s"] > 0 and overlap["reward_s"] > 0
    assert overlap["chunked_step_s"] > 0
    # the share is against the chunked arm (the rounded times here only fix its sign: the tiny reward's
    # 4-digit time can be off by 10%)
    assert (overlap["hidden_share"] > 0) == (overlap["chunked_step_s"] > overlap["overlapped_step_s"])
    assert figures[8][0]["value"] == overlap["hidden_share"]
    assert overlap["ceiling"] == 0.75  # 4 chunks: the last one's reward has nothing to hide behind
    assert {"cpu", "cores", "torch", "diffusers", "peft", "pytorch_lightning", "commit", "clean"} <= set(
        perf["environment"])
    assert perf["quick"] is True and "--quick" in perf["command"]
    assert perf["figure_commits"] == {str(i): perf["environment"]["commit"] for i in range(1, 9)}

    from prefdiff.benchdocs import render

    page = render(tmp_path / "results", tmp_path / "docs" / "benchmarks.md")
    assert "## Performance" in page and f"| 2 | {figures[2][0]['name']} | {figures[2][0]['value']:.3f} |" in page
    assert (tmp_path / "docs" / "figures" / "tinyperf-curves.png").stat().st_size > 0
    assert "Fastest: grpo, 4.00x DDPO" in page


def test_time_to_reach_and_speedup(tmp_path):
    results = _curves(tmp_path)
    assert time_to_reach([[0, 0.1], [5, 0.4], [9, 0.6]], 0.5) == 9
    assert time_to_reach([[0, 0.1]], 0.5) is None
    eff = field_speedup(results)
    assert eff["time_to_level_s"] == {"ddpo": 40.0, "grpo": 10.0, "dpo": None}
    assert (eff["best"], eff["speedup"]) == ("grpo", 4.0)
    flat = {"methods": {"ddpo": {"curve": [[0, 0.5], [10, 0.4]]}, "dpo": {"curve": [[0, 0.5]]}}}
    assert "skipped" in field_speedup(flat)  # DDPO never got above its start
    alone = {"methods": {"ddpo": {"curve": [[0, 0.1], [9, 0.5]]}, "dpo": {"curve": [[0, 0.1], [3, 0.4]]}}}
    assert (field_speedup(alone)["best"], field_speedup(alone)["speedup"]) == ("ddpo", 1.0)
    assert field_speedup({"methods": {"dpo": {"curve": [[0, 1]]}}}) == {"skipped": "no DDPO curve"}


def test_fit_exponent():
    assert fit_exponent([8, 16, 32], [1.0, 2.0, 4.0]) == pytest.approx(1.0)
    assert fit_exponent([32, 64, 128], [1.0, 4.0, 16.0]) == pytest.approx(2.0)


class NeedsCheckpoint:
    """A differentiable reward that, like the medical segmenter, cannot be built without its option."""

    @hookimpl
    def prefdiff_register_rewards(self, register):
        def factory(checkpoint=None):
            if checkpoint is None:
                raise ValueError("needs_checkpoint: no checkpoint")

            def reward(samples, cond):
                return -samples.float().pow(2).mean(dim=tuple(range(1, samples.ndim))), {}
            return reward
        register("needs_checkpoint", factory, differentiable=True)


def test_step_module_builds_the_methods_own_reward_with_its_options():
    """Figure 4 times a step of the method that trains with the reward: the module gets that
    reward's options from the prepared recipe (other_reward_options), as `prefdiff bench` does."""
    from dataclasses import replace

    from prefdiff.bench import Benchmark
    from prefdiff.perf.reward_cost import _step_module

    recipe = replace(TINY, methods={**TINY.methods, "draft": {"reward": "needs_checkpoint", "k": 1}},
                     other_reward_options={"needs_checkpoint": {"checkpoint": "segmenter.safetensors"}})
    with registered_plugin(NeedsCheckpoint(), "needs-checkpoint"):
        bench = Benchmark(recipe, quick=True)
        options, _ = bench.method_options("draft")
        assert options["reward"] == "needs_checkpoint"
        assert options["reward_options"] == {"checkpoint": "segmenter.safetensors"}
        module = _step_module(bench, "draft")
    assert module.hparams.reward_options == {"checkpoint": "segmenter.safetensors"}


def test_step_module_of_a_pipeline_recipe_starts_from_its_pipeline(tmp_path):
    """A text-to-image recipe names a pipeline folder, not a preset: the step starts from it."""
    from dataclasses import replace

    from prefdiff.bench import Benchmark
    from prefdiff.perf.reward_cost import _step_module
    from prefdiff.testing import tiny_pipeline

    folder = tiny_pipeline(tmp_path / "pipe")
    recipe = replace(TINY, model={"pipeline": str(folder)}, conditioner=None, methods={"ddpo": {}})
    module = _step_module(Benchmark(recipe, quick=True), "ddpo")
    assert module.hparams.base == str(folder)
    assert module.denoiser.frozen_parts()  # the pipeline's VAE and text encoder came with it


class _Recorded:
    """One figure-3 measurement process as it would report, its peaks drawn from ``peaks`` in turn."""

    started = 0

    def __init__(self, specs, peaks):
        self.specs, self.run = specs, _Recorded.started
        self.peaks = peaks
        _Recorded.started += 1

    def report(self, spec):
        peak = self.peaks[spec["mode"]][self.run]
        return {"parameters": 10, "trainable": 1, "baseline_mb": 100.0, "peak_mb": peak,
                "above_baseline_mb": peak - 100.0}


def test_figure_3_takes_the_median_of_separate_processes(monkeypatch):
    from prefdiff.perf import memory

    assert [s["mode"] for s in memory.lora_specs(quick=False)] == ["lora", "two_copy"]
    # One outlier per arm (a low two-copy peak, a high LoRA one) must not move the ratio.
    peaks = {"lora": [600.0, 610.0, 900.0, 590.0, 605.0], "two_copy": [1000.0, 400.0, 1010.0, 990.0, 1005.0]}
    monkeypatch.setattr(memory, "LORA_REPEATS", 5)
    monkeypatch.setattr(_Recorded, "started", 0)
    figure = memory.run_lora(quick=False, log=lambda _: None, measure=lambda specs: _Recorded(specs, peaks))
    assert _Recorded.started == 5  # a process (a zygote of its own) per repeat
    assert figure.value == round(605.0 / 1000.0, 4)
    assert figure.details["ratio_above_baseline"] == round(505.0 / 900.0, 4)
    assert figure.details["peak_mb_per_process"] == peaks and figure.details["processes_per_arm"] == 5


def test_update_keeps_the_other_figures_and_the_commit_each_ran_on():
    from prefdiff.perf.__main__ import _merge

    def run(commit, figures):
        return {"command": f"perf {commit}", "environment": {"commit": commit}, "wall_s": 10.0,
                "figure_wall_s": {str(i): 5.0 for i in figures},
                "figures": [{"id": i, "value": f"{commit}-{i}"} for i in figures]}

    first = run("aaa", [1, 3, 7])
    second = {**run("bbb", [3]), "figure_commits": {"3": "bbb"}}
    merged = _merge(first, second)
    assert [f["value"] for f in merged["figures"]] == ["aaa-1", "bbb-3", "aaa-7"]
    assert merged["figure_commits"] == {"1": "aaa", "3": "bbb", "7": "aaa"}
    assert merged["environment"]["commit"] == "bbb" and merged["commands"] == ["perf aaa", "perf bbb"]
    assert merged["wall_s"] == 20.0


def test_memory_figures_measure_while_the_timed_figures_run(tmp_path, monkeypatch):
    """Figures 3 and 6 (which time nothing) run beside figures 1 and 2; figure 5 (DDP, both cores)
    starts only after them; perf.json lists the figures by id with each one's own time."""
    import threading
    import time

    from prefdiff.perf import growth, memory, overhead, sampler
    from prefdiff.perf.common import Figure

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    events, lock = [], threading.Lock()

    def figure(number, seconds):
        def run(*args, **kwargs):
            with lock:
                events.append(("start", number, time.perf_counter()))
            time.sleep(seconds)
            with lock:
                events.append(("end", number, time.perf_counter()))
            return Figure(number, f"figure {number}", 1.0, "<= 2", True)
        return run

    monkeypatch.setattr(overhead, "run", figure(1, 0.4))
    monkeypatch.setattr(sampler, "run", figure(2, 0.4))
    monkeypatch.setattr(memory, "run_lora", figure(3, 0.5))
    monkeypatch.setattr(memory, "run_backprop", figure(6, 0.6))  # still running when 2 ends
    monkeypatch.setattr(growth, "run", figure(5, 0.1))
    out = tmp_path / "perf.json"
    only = [arg for n in (1, 2, 3, 5, 6) for arg in ("--only", str(n))]
    assert main([*only, "--out", str(out)]) == 0
    at = {(kind, n): t for kind, n, t in events}
    assert at[("start", 3)] < at[("end", 1)]  # measured beside figure 1, not after it
    assert at[("end", 6)] < at[("start", 5)]  # DDP does not share the cores with a memory process
    assert at[("start", 6)] >= at[("end", 3)]  # the memory figures one after another
    perf = json.loads(out.read_text())
    assert [f["id"] for f in perf["figures"]] == [1, 2, 3, 5, 6]
    assert 0.45 <= perf["figure_wall_s"]["3"] < 1.5  # its own 0.5 s, not the main thread's wait for it (~0)


def test_ddp_figure_alternates_its_arms_and_takes_each_arms_median(monkeypatch):
    from prefdiff.perf import growth

    # One process then two, five rounds; one outlier per arm (a slow one, a fast one) must not move it.
    steps = iter([0.40, 0.50, 0.90, 0.52, 0.41, 0.10, 0.39, 0.51, 0.42, 0.49])
    order = []

    def child(spec):
        order.append(spec["devices"])
        return {"devices": spec["devices"], "step_s": next(steps)}

    monkeypatch.setattr(growth, "DDP_ROUNDS", 5)
    monkeypatch.setattr(growth, "_ddp_child", child)
    figure = growth.run_ddp(quick=False, log=lambda _: None)
    assert order == [1, 2] * 5
    assert figure.details["step_s"] == {"1": 0.41, "2": 0.50}
    assert figure.value == round(2 * 0.41 / 0.50, 3)
    assert figure.met  # 1.64 >= 1.6; the means (0.504 and 0.424 s) would give 2.377
