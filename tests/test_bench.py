"""The benchmark runner on a tiny recipe: the results.json contract, atomic output."""

import json
from dataclasses import replace

import pytest
import torch

from prefdiff import hookimpl
from prefdiff.bench import paired_bootstrap_ci, run_benchmark, sliced_wasserstein
from prefdiff.bench.stats import paired_ratio_ci
from prefdiff.errors import PluginError
from prefdiff.testing import RecipePlugin, registered_plugin, sample_by_the_adapter_guide, tiny_recipe

TINY = tiny_recipe()


class TinyBench(RecipePlugin):
    """The tiny recipe, and a reward that returns NaN."""

    @hookimpl
    def prefdiff_register_rewards(self, register):
        register("nan_reward", lambda: lambda s, c: (torch.full((s.shape[0],), float("nan")), {}))


def test_tiny_benchmark_writes_the_contract(tmp_path):
    with registered_plugin(TinyBench(TINY), "tiny-bench"):
        results = run_benchmark("tiny", quick=True, out=tmp_path / "out")
    on_disk = json.loads((tmp_path / "out/results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert {"domain", "reward", "quick", "seed", "n_eval", "base", "methods", "env"} <= set(on_disk)
    assert on_disk["n_eval"] == 8 and set(on_disk["methods"]) == {"dpo", "ddpo", "draft"}
    for entry in on_disk["methods"].values():
        assert {"reward_mean", "reward_std", "improvement", "improvement_ci95", "drift", "reward_queries",
                "train_wall_s", "peak_rss_mb"} <= set(entry)
        lo, hi = entry["improvement_ci95"]
        assert lo <= entry["improvement"] <= hi
        assert entry["improvement"] == pytest.approx(entry["reward_mean"] - on_disk["base"]["reward_mean"], abs=1e-5)
    assert on_disk["methods"]["dpo"]["reward_queries"] == 12  # mining: 6 conditions x 2 samples
    assert set(on_disk["base"]["judge_info"]) == {"jpeg_kb"}  # the judge's info numbers, averaged
    # The real-data reference: the judge on the held-out split's own samples, one per condition.
    from prefdiff.data import collate
    from prefdiff.plugins import get_manager

    manager = get_manager()
    test = manager.dataset(TINY.dataset, split="test", **TINY.dataset_options)
    real = collate([test[i] for i in range(8)])
    judge = manager.reward(TINY.judge, **TINY.judge_options)
    assert on_disk["real"]["reward_mean"] == pytest.approx(float(judge(real["x0"], real["cond"])[0].mean()), abs=1e-6)
    assert f"| real held-out data | {on_disk['real']['reward_mean']:.4f} |" in (tmp_path / "out/report.md").read_text()
    assert (tmp_path / "out/report.md").read_text().startswith("# Benchmark: tiny")
    assert (tmp_path / "out/samples.png").stat().st_size > 0
    assert (tmp_path / "out/mined/pairs.jsonl").is_file()
    # docs/benchmarks.md is generated from such files, every number traceable to them.
    from prefdiff.benchdocs import render

    page = render(tmp_path, tmp_path / "docs/benchmarks.md")
    assert "## tiny" in page and f"| base | {on_disk['base']['reward_mean']:.4f} |" in page
    assert f"{on_disk['methods']['dpo']['improvement']:+.4f}" in page
    methods = on_disk["methods"]
    best = max(methods, key=lambda m: methods[m]["improvement"])
    assert (f"| tiny | `jpeg_incompressibility` | {on_disk['real']['reward_mean']:.4f} | "
            f"{on_disk['base']['reward_mean']:.4f} | {best} | {methods[best]['reward_mean']:.4f} |") in page
    assert (tmp_path / "docs/figures/tiny-samples.png").is_file()
    _the_guides_commands_sample_each_adapter(tmp_path / "out")


def _the_guides_commands_sample_each_adapter(out):
    """Each method's adapter is kept, and adapters/README.md's command samples it (and, without --lora, the base)."""

    assert sorted(p.name for p in (out / "adapters").iterdir() if p.is_dir()) == ["ddpo", "dpo", "draft"]
    aligned = sample_by_the_adapter_guide(out, "dpo")
    before = sample_by_the_adapter_guide(out, "dpo", lora=False)
    assert aligned.shape == before.shape and not torch.equal(aligned, before)


def test_a_method_trained_without_lora_keeps_its_whole_model(tmp_path):
    """DRaFT at lora_rank 0: adapters/draft is the whole aligned model, and the guide's command samples it."""
    recipe = replace(TINY, n_eval=4, default_methods=["draft"],
                     methods={**TINY.methods, "draft": {**TINY.methods["draft"], "lora_rank": 0}})
    with registered_plugin(TinyBench(recipe), "tiny-bench"):
        run_benchmark("tiny", quick=True, out=tmp_path / "out")
    kept = tmp_path / "out/adapters/draft"
    assert (kept / "prefdiff_model.json").is_file() and not (kept / "adapter_config.json").exists()
    aligned = sample_by_the_adapter_guide(tmp_path / "out", "draft")
    before = sample_by_the_adapter_guide(tmp_path / "out", "draft", lora=False)
    assert aligned.shape == before.shape and not torch.equal(aligned, before)


def test_several_samples_per_held_out_condition(tmp_path):
    recipe = replace(TINY, eval_samples=3, n_eval=4, default_methods=["dpo"])
    # A rerun into a committed results folder: its own files are replaced, the notes kept.
    (tmp_path / "out").mkdir()
    (tmp_path / "out/results.json").write_text('{"earlier": true}')
    (tmp_path / "out/NOTES.md").write_text("what was seen")
    (tmp_path / "out/probes").mkdir()
    (tmp_path / "out/probes/lr.txt").write_text("a user's own folder")
    with registered_plugin(TinyBench(recipe), "tiny-bench"):
        results = run_benchmark("tiny", quick=True, out=tmp_path / "out")
    assert json.loads((tmp_path / "out/results.json").read_text()) == json.loads(json.dumps(results))
    assert (tmp_path / "out/NOTES.md").read_text() == "what was seen"
    assert (tmp_path / "out/probes/lr.txt").read_text() == "a user's own folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert results["n_eval"] == 4 and results["eval_samples"] == 3
    dpo = results["methods"]["dpo"]
    # The mean over 4 x 3 samples; the interval is over the 4 conditions' mean differences.
    assert dpo["improvement"] == pytest.approx(dpo["reward_mean"] - results["base"]["reward_mean"], abs=1e-5)
    lo, hi = dpo["improvement_ci95"]
    assert lo <= dpo["improvement"] <= hi
    # One difference per condition, kept for pooling over seeds; the interval is theirs.
    per_condition = torch.tensor(dpo["improvement_per_condition"])
    assert len(per_condition) == 4 and float(per_condition.mean()) == pytest.approx(dpo["improvement"], abs=1e-6)
    assert paired_bootstrap_ci(per_condition, seed=results["seed"]) == pytest.approx(dpo["improvement_ci95"], abs=1e-6)
    assert "4 held-out conditions x 3 samples" in (tmp_path / "out/report.md").read_text()


def test_failed_run_leaves_the_earlier_output_intact(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text('{"earlier": true}')
    broken = replace(TINY, reward="nan_reward", default_methods=["ddpo"], methods={})
    with registered_plugin(TinyBench(broken), "tiny-bench"):
        with pytest.raises(PluginError, match="nan_reward"):
            run_benchmark("tiny", quick=True, out=out)
    assert json.loads((out / "results.json").read_text()) == {"earlier": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_paired_bootstrap_interval_covers_the_mean():
    diff = torch.tensor([0.1, 0.2, 0.15, 0.05, 0.12, 0.18, 0.09, 0.11])
    lo, hi = paired_bootstrap_ci(diff)
    assert 0.05 < lo < diff.mean() < hi < 0.2
    lo, hi = paired_bootstrap_ci(torch.zeros(16))
    assert lo == hi == 0.0


def test_paired_ratio_interval_resamples_the_pairs_together():
    # Step costs that swing from 1 s to 9 s on both sides at once (the shared machine), one side 10% dearer.
    theirs = torch.tensor([1.0, 9.0, 2.0, 8.0, 3.0, 7.0, 4.0, 6.0])
    ratio, (lo, hi) = paired_ratio_ci(theirs * 1.1, theirs)
    assert [ratio, lo, hi] == pytest.approx([1.1, 1.1, 1.1])
    assert paired_ratio_ci(theirs, theirs * 1.1)[0] == pytest.approx(1 / 1.1)
    # Each pair with noise of its own: resampled apart, the sides' swings would span 0.65-1.93.
    ours = theirs * 1.1 + torch.tensor([0.5, -0.5, 0.3, -0.3, 0.2, -0.2, 0.1, -0.1])
    ratio, (lo, hi) = paired_ratio_ci(ours, theirs)
    assert ratio == pytest.approx(float(ours.sum() / theirs.sum()))
    assert 1.0 < lo < ratio < hi < 1.2
    with pytest.raises(ValueError, match="one length"):
        paired_ratio_ci(ours, theirs[:-1])


def test_sliced_wasserstein_separates_distributions():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(256, 12, generator=g), torch.randn(256, 12, generator=g)
    assert sliced_wasserstein(a, b) < 0.2 < sliced_wasserstein(a, b + 1.0)


def test_base_model_depends_on_the_seed_alone(tmp_path):
    """Pretraining twice from nothing gives the same weights, whatever the global generator held."""
    from safetensors.torch import load_file

    from prefdiff.bench import Benchmark

    weights = []
    for i, noise in enumerate((1, 2)):
        torch.manual_seed(noise)  # what a recipe's prepare step may leave behind
        base = Benchmark(TINY, seed=0, quick=True, cache=tmp_path / f"cache{i}").base_model()
        weights.append({f"{f.parent.name}/{k}": v for f in sorted(base.glob("**/*.safetensors"))
                        for k, v in load_file(f).items()})
    assert any(k.startswith("net/") for k in weights[0]) and weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def _recolour_edit(model, scheduler, out):
    """An editing task as the fields write one: SDEdit class-0 samples towards class 1, drawn to edit.png."""
    from prefdiff.editing import edit_samples
    from prefdiff.viz import save_labelled_rows

    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    edited = edit_samples(model, scheduler, x, torch.ones(2, dtype=torch.long), num_steps=3)
    save_labelled_rows({"input": x, "edited": edited}, out / "edit.png", columns=2)
    return {"n": 2}


def test_the_command_prints_prefdiff_lines_and_logs_lightning_to_a_file(tmp_path, capfd):
    from prefdiff.cli import main

    recipe = replace(TINY, default_methods=["dpo"], edit=_recolour_edit)
    with registered_plugin(TinyBench(recipe), "tiny-bench"):
        assert main(["bench", "tiny", "--quick", "--out", str(tmp_path / "out")]) == 0
    out, err = capfd.readouterr()
    assert "aligning with dpo" in out and "report:" in out
    assert f"edits: {tmp_path / 'out' / 'edit.png'}" in out.splitlines()
    for chatter in ("GPU available", "TPU available", "Tip:", "LeafSpec", "max_steps="):
        assert chatter not in out + err
    log = (tmp_path / "out/bench.log").read_text()
    assert "GPU available" in log and "aligning with dpo" in log


def test_report_numbers_are_those_of_results_json(tmp_path):
    from prefdiff.bench.report import report_markdown

    with registered_plugin(TinyBench(replace(TINY, default_methods=["dpo", "draft"])), "tiny-bench"):
        results = run_benchmark("tiny", quick=True, out=tmp_path / "out")
    report = (tmp_path / "out/report.md").read_text()
    assert report == report_markdown(results, TINY)
    for name, entry in results["methods"].items():
        lo, hi = entry["improvement_ci95"]
        row = next(line for line in report.splitlines() if line.startswith(f"| {name} |"))
        assert f"| {entry['reward_mean']:.4f} | {entry['reward_std']:.4f} | {entry['improvement']:+.4f} | " \
               f"[{lo:+.4f}, {hi:+.4f}] | {entry['drift']:.4f} | {entry['reward_queries']} |" in row
    assert f"| base | {results['base']['reward_mean']:.4f} |" in report


def test_a_small_held_out_set_is_flagged_in_the_log_and_the_report(tmp_path, caplog):
    from prefdiff.bench import Benchmark
    from prefdiff.bench.report import report_markdown

    with caplog.at_level("WARNING", logger="prefdiff.bench"):
        cond, _ = Benchmark(TINY, quick=True, cache=tmp_path).eval_set()
    assert len(cond) == 8
    assert "only 8 held-out conditions, fewer than 30" in caplog.text and "bootstrap interval" in caplog.text
    summary = {"reward_mean": 0.5, "reward_std": 0.1}
    results = {"domain": "tiny", "reward": "r", "judge": "j", "seed": 0, "n_eval": 8, "quick": True,
               "base": summary, "untrained": summary, "methods": {}}
    report = report_markdown(results, TINY)
    assert "8 held-out conditions" in report
    assert "**Warning:** only 8 held-out conditions, fewer than 30: a bootstrap interval" in report
    assert "Warning" not in report_markdown({**results, "n_eval": 30}, TINY)


def test_a_methods_result_does_not_depend_on_the_methods_before_it(tmp_path):
    from prefdiff.bench.runner import method_seed

    recipe = replace(TINY, methods={**TINY.methods, "ddpo": {"samples_per_condition": 2, "steps": 2}})
    with registered_plugin(TinyBench(recipe), "tiny-bench"):
        alone = run_benchmark("tiny", methods=["ddpo"], quick=True, out=tmp_path / "alone")
        after = run_benchmark("tiny", methods=["draft", "dpo", "ddpo"], quick=True, out=tmp_path / "after")
    for key in ("reward_mean", "improvement", "improvement_ci95", "drift", "train_reward_mean"):
        assert alone["methods"]["ddpo"][key] == after["methods"]["ddpo"][key], key
    assert method_seed(0, "ddpo") != method_seed(0, "dpo") and method_seed(0, "ddpo") != method_seed(1, "ddpo")


def test_a_shipped_base_replaces_pretraining_only_for_its_own_recipe(tmp_path, caplog):
    shipped = tmp_path / "bases"
    recipe = replace(TINY, default_methods=["dpo"], shipped_bases=str(shipped))
    with registered_plugin(TinyBench(recipe), "tiny-bench"):
        first = run_benchmark("tiny", quick=True, out=tmp_path / "a", cache=tmp_path / "c1", ship_base=True)
    (folder,) = shipped.iterdir()
    record = json.loads((folder / "shipped.json").read_text())
    assert folder.name == "tiny" and record["seed"] == 0 and record["domain"] == "tiny"
    assert record["hashed"]["model"] == json.loads(json.dumps(recipe.model))
    assert record["hashed"]["pretrain_steps"] == recipe.pretrain_steps
    # A fresh cache takes the shipped base: the same numbers, no pretraining.
    caplog.clear()
    with caplog.at_level("INFO", logger="prefdiff"), registered_plugin(TinyBench(recipe), "tiny-bench"):
        again = run_benchmark("tiny", quick=True, out=tmp_path / "b", cache=tmp_path / "c2")
    assert "the shipped tiny" in caplog.text and "pretraining" not in caplog.text
    assert again["base"] == first["base"] and again["methods"]["dpo"]["improvement"] == first["methods"]["dpo"][
        "improvement"]
    # Another recipe (more pretraining) has another key: the shipped base is not used.
    caplog.clear()
    changed = replace(recipe, pretrain_steps=recipe.pretrain_steps + 1)
    with caplog.at_level("INFO", logger="prefdiff"), registered_plugin(TinyBench(changed), "tiny-bench"):
        run_benchmark("tiny", quick=True, out=tmp_path / "c", cache=tmp_path / "c3")
    assert "is for another recipe" in caplog.text and "pretraining 7 SFT steps" in caplog.text


def test_clean_means_the_source_not_the_published_outputs(tmp_path):
    import subprocess

    from prefdiff.bench.runner import source_commit

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                       check=True, capture_output=True)

    for path in ("core/prefdiff/losses.py", "benchmarks/results/driving/results.json", "docs/benchmarks.md"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("0\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "one")
    assert source_commit(tmp_path)["clean"]
    # a field's results written by the field run before it: still the commit's source
    (tmp_path / "benchmarks/results/driving/results.json").write_text("1\n")
    (tmp_path / "docs/benchmarks.md").write_text("1\n")
    assert source_commit(tmp_path)["clean"]
    (tmp_path / "core/prefdiff/losses.py").write_text("1\n")
    assert not source_commit(tmp_path)["clean"]


def test_leftovers_of_killed_runs_are_cleared_and_a_running_ones_kept(tmp_path):
    import subprocess
    import sys

    from prefdiff.bench.publish import staging_folder

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()  # a process that has exited: its PID is free
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out = tmp_path / "out"
        # A run killed between publish's two renames: its old folder is the only copy of the last output.
        (tmp_path / f".out.old-{dead}").mkdir()
        (tmp_path / f".out.old-{dead}" / "results.json").write_text("{}")
        (tmp_path / f".out.tmp-{dead}").mkdir()
        (tmp_path / f".out.tmp-{alive.pid}").mkdir()
        (tmp_path / f".other.tmp-{dead}").mkdir()  # beside another output: not ours to clear
        (tmp_path / f".out.tmp-another_machine-{dead}").mkdir()  # a shared disk: its process is not ours to see
        (tmp_path / f".out.tmp-{10 ** 30}").mkdir()  # no process has that number
        mine = staging_folder(out)
        assert (out / "results.json").read_text() == "{}"
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            ["out", mine.name, f".out.tmp-{alive.pid}", f".other.tmp-{dead}", f".out.tmp-another_machine-{dead}"])
        assert staging_folder(out) == mine and mine.is_dir()  # this machine's own names: cleared and made again
        (tmp_path / f".out.old-{dead}").mkdir()  # killed while removing it, after the swap: out is newer
        staging_folder(out)
        assert not (tmp_path / f".out.old-{dead}").exists() and (out / "results.json").exists()
    finally:
        alive.kill()
        alive.wait()
