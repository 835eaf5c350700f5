"""The benchmark's statistics against independent computations: the interval and the drift."""

import numpy as np
import pytest
import torch

from prefdiff.bench import paired_bootstrap_ci, run_benchmark, sliced_wasserstein
from prefdiff.testing import RecipePlugin, registered_plugin, tiny_recipe


def numpy_percentile_interval(diff: np.ndarray, idx: np.ndarray, level: float) -> list[float]:
    """The same percentile interval, computed with numpy from the same resampling indices."""
    means = diff[idx].mean(axis=1)
    tail = 100 * (1 - level) / 2
    return [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))]


@pytest.mark.parametrize("level", [0.95, 0.9])
def test_interval_equals_an_independent_computation(level):
    diff = torch.randn(40, generator=torch.Generator().manual_seed(3)) * 0.2 + 0.05
    # The resampling prefdiff draws: indices from a generator seeded with `seed`.
    idx = torch.randint(40, (2000, 40), generator=torch.Generator().manual_seed(11)).numpy()
    expected = numpy_percentile_interval(diff.double().numpy(), idx, level)
    assert paired_bootstrap_ci(diff, n_resamples=2000, seed=11, level=level) == pytest.approx(expected, abs=1e-12)
    if level == 0.95:
        assert paired_bootstrap_ci(diff, seed=11) == pytest.approx(expected, abs=1e-12)  # the default is 95%


def test_interval_covers_a_known_mean_95_percent_of_the_time():
    # 600 data sets of 50 differences with mean 0.3: a 95% interval covers 0.3 in about
    # 570 of them (binomial sd 5.3); a 90% interval would cover about 540, a 99% one 594.
    rng = np.random.default_rng(0)
    covered = 0
    trials = 600
    for t in range(trials):
        diff = torch.from_numpy(rng.normal(0.3, 1.0, 50))
        lo, hi = paired_bootstrap_ci(diff, n_resamples=1000, seed=t)
        covered += lo <= 0.3 <= hi
    # the percentile bootstrap under-covers a little at n = 50 (about 94%)
    assert 0.925 <= covered / trials <= 0.97, covered / trials


def test_sliced_wasserstein_matches_the_one_dimensional_distance():
    # In one dimension every projection is +-1, so the distance is W1 of the sorted values.
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, 1, generator=g), torch.randn(200, 1, generator=g) * 2 + 1
    expected = float((a.double().flatten().sort().values - b.double().flatten().sort().values).abs().mean())
    assert sliced_wasserstein(a, b) == pytest.approx(expected, rel=1e-9)


def test_each_methods_drift_comes_from_its_own_samples(tmp_path):
    seen = {}

    def keep_rows(rows, cond, png_path):
        seen.update(rows)

    recipe = tiny_recipe(default_methods=["dpo", "draft"], eval_samples=2, render=keep_rows)
    with registered_plugin(RecipePlugin(recipe), "tiny-bench"):
        results = run_benchmark("tiny", quick=True, out=tmp_path / "out")
        from prefdiff.bench import Benchmark

        _, real = Benchmark(recipe, quick=True).eval_set()
    assert set(seen) == {"base", "dpo", "draft"}
    assert results["base"]["drift"] == pytest.approx(sliced_wasserstein(seen["base"][::2], real), rel=1e-9)
    for method in ("dpo", "draft"):
        own = sliced_wasserstein(seen[method][::2], real)
        assert results["methods"][method]["drift"] == pytest.approx(own, rel=1e-9)
    assert results["methods"]["draft"]["drift"] != results["base"]["drift"]


def test_compare_prints_every_differing_number_and_ignores_timing(tmp_path, capsys):
    import json

    from prefdiff.bench.compare import main

    run = {"base": {"reward_mean": 0.5}, "methods": {"dpo": {
        "improvement": 0.1, "improvement_ci95": [0.05, 0.15], "train_wall_s": 3.0,
        "curve": [[0.0, 0.5], [1.2, 0.6]]}}, "env": {"commit": "abc"}}
    other = json.loads(json.dumps(run))
    other["methods"]["dpo"]["improvement_ci95"][1] = 0.16
    other["methods"]["dpo"]["train_wall_s"] = 9.0       # the machine, not the method
    other["methods"]["dpo"]["curve"][1][0] = 2.5         # curve time: ignored
    other["env"]["commit"] = "def"
    for name, data in (("a", run), ("b", other), ("c", run)):
        (tmp_path / name / "field").mkdir(parents=True)
        (tmp_path / name / "field" / "results.json").write_text(json.dumps(data))
    assert main([str(tmp_path / "a"), str(tmp_path / "c")]) == 0
    assert "no differing number (1 results compared)" in capsys.readouterr().out
    assert main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == ["field/results.json.methods.dpo.improvement_ci95[1]: 0.15 (A) vs 0.16 (B), difference +0.01"]


def test_the_summary_is_the_mean_and_the_population_standard_deviation():
    from prefdiff.bench.stats import summary

    scores = torch.tensor([0.0, 1.0, 2.0, 5.0])
    assert summary(scores) == pytest.approx({"reward_mean": 2.0, "reward_std": float(np.std([0.0, 1.0, 2.0, 5.0]))})
