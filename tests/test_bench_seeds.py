"""Gains across seeds: the stratified interval, the two-of-three rule, the folders and the page."""

import json

import pytest
import torch

from prefdiff.bench import paired_bootstrap_ci
from prefdiff.bench.seeds import field_table, main, render_seeds, seeds_summary, stratified_bootstrap_ci
from prefdiff.benchdocs import render
from prefdiff.errors import UserError


def test_one_stratum_is_the_paired_bootstrap():
    d = torch.randn(37, generator=torch.Generator().manual_seed(3)) + 0.2
    assert stratified_bootstrap_ci([d], seed=5) == paired_bootstrap_ci(d, seed=5)


def test_conditions_are_redrawn_within_their_own_seed():
    # Every resample keeps 10 conditions of the first seed and 30 of the second, so the
    # mean is 10/40 each time; drawing from the pooled 40 would spread it.
    ones, zeros = torch.ones(10), torch.zeros(30)
    assert stratified_bootstrap_ci([ones, zeros]) == pytest.approx([0.25, 0.25], abs=1e-12)


def test_the_pooled_interval_covers_the_grand_mean_at_its_level():
    g = torch.Generator().manual_seed(0)
    diffs = [torch.randn(n, generator=g) * s + m for n, s, m in ((40, 1.0, 0.3), (60, 0.5, -0.1), (50, 2.0, 0.0))]
    lo, hi = stratified_bootstrap_ci(diffs, n_resamples=4000)
    grand = float(torch.cat(diffs).mean())
    assert lo < grand < hi
    # Normal-theory half-width of a stratified mean: sqrt(sum n_s var_s) / N.
    half = float(sum(len(d) * d.var(correction=0) for d in diffs).sqrt()) / 150
    assert (hi - lo) / 2 == pytest.approx(1.96 * half, rel=0.12)
    narrow = stratified_bootstrap_ci(diffs, n_resamples=4000, level=0.5)
    assert lo < narrow[0] < grand < narrow[1] < hi


def _run(seed, **methods):
    """A results.json with one method per keyword: its per-condition differences."""
    entries = {}
    for name, diff in methods.items():
        diff = torch.tensor(diff, dtype=torch.float64)
        entries[name] = {"improvement": float(diff.mean()), "improvement_ci95": paired_bootstrap_ci(diff, seed=seed),
                         "improvement_per_condition": diff.tolist(), "reward_mean": 0.5}
    return {"domain": "toy", "seed": seed, "reward": "r", "n_eval": 8, "base": {"reward_mean": 0.5}, "methods": entries}


UP = [0.1, 0.2, 0.15, 0.12, 0.18, 0.11, 0.14, 0.16]
FLAT = [0.1, -0.1, 0.05, -0.05, 0.02, -0.02, 0.2, -0.2]


def test_a_method_improves_only_when_pooled_and_two_seeds_are_above_zero():
    runs = [_run(0, two=UP, one=UP, pooled_only=FLAT), _run(2, two=UP, one=FLAT, pooled_only=FLAT),
            _run(3, two=FLAT, one=FLAT, pooled_only=[x + 0.4 for x in FLAT])]
    table = field_table(runs)
    assert table["seeds"] == [0, 2, 3]
    two, one = table["methods"]["two"], table["methods"]["one"]
    assert two["seeds_above_zero"] == 2 and two["pooled_ci95"][0] > 0 and two["improves"]
    assert one["seeds_above_zero"] == 1 and not one["improves"]
    pooled_only = table["methods"]["pooled_only"]
    assert pooled_only["seeds_above_zero"] == 1 and not pooled_only["improves"]
    assert two["pooled_improvement"] == pytest.approx(sum(UP * 2 + FLAT) / 24)
    assert [s["seed"] for s in two["per_seed"]] == [0, 2, 3]


def test_a_pooled_interval_touching_zero_does_not_improve():
    runs = [_run(0, m=UP), _run(2, m=UP), _run(3, m=[-0.5] * 8)]
    m = field_table(runs)["methods"]["m"]
    assert m["seeds_above_zero"] == 2 and m["pooled_ci95"][0] < 0 and not m["improves"]


def test_two_runs_of_one_seed_are_refused():
    with pytest.raises(UserError, match="share a seed"):
        field_table([_run(0, m=UP), _run(0, m=UP)])


def test_the_folders_pool_into_the_page(tmp_path):
    results = tmp_path / "results"
    for path, run in ((results / "toy/results.json", _run(0, m=UP)),
                      (results / "seeds/toy/seed-3/results.json", _run(3, m=FLAT)),
                      (results / "seeds/toy/seed-2/results.json", _run(2, m=UP)),
                      (results / "lonely/results.json", {**_run(0, m=UP), "domain": "lonely"})):
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(run))
    summary = seeds_summary(results)
    assert list(summary) == ["toy"]  # a field with one seed has nothing to pool
    assert summary["toy"]["seeds"] == [0, 2, 3]
    assert main([str(results)]) == 0
    assert json.loads((results / "seeds.json").read_text()) == json.loads(json.dumps(summary))
    section = render_seeds(summary)
    m = summary["toy"]["methods"]["m"]
    lo, hi = m["pooled_ci95"]
    assert f"| toy | m | " in section[-2] and f"{m['pooled_improvement']:+.4f} [{lo:+.4f}, {hi:+.4f}]" in section[-2]
    assert section[-2].endswith("| yes (2 of 3) |")
    page = render(results, tmp_path / "docs/benchmarks.md")
    assert "## Across seeds" in page and section[-2] in page


def test_a_method_missing_from_one_run_leaves_the_others_in_the_table():
    # An older run without one method's per-condition differences drops that method only.
    older = _run(2, m=UP, n=UP)
    del older["methods"]["m"]["improvement_per_condition"]
    table = field_table([_run(0, m=UP, n=UP), older])
    assert list(table["methods"]) == ["n"]


def test_the_pooled_interval_is_seeded_by_the_first_run():
    runs = [_run(3, m=UP), _run(2, m=FLAT)]
    diffs = [torch.tensor(UP, dtype=torch.float64), torch.tensor(FLAT, dtype=torch.float64)]
    assert field_table(runs)["methods"]["m"]["pooled_ci95"] == stratified_bootstrap_ci(diffs, seed=3)


def test_the_seed_table_is_a_markdown_table():
    section = render_seeds({"toy": field_table([_run(0, m=UP), _run(2, m=UP)])})
    header = next(i for i, line in enumerate(section) if line.startswith("| field |"))
    assert section[header + 1] == "|---|---|---|---|---|"
    assert all(line.count("|") == 6 for line in section[header:] if line)


def test_the_command_reads_benchmarks_results_by_default(tmp_path, monkeypatch):
    results = tmp_path / "benchmarks" / "results"
    for path, run in ((results / "toy/results.json", _run(0, m=UP)),
                      (results / "seeds/toy/seed-2/results.json", _run(2, m=UP))):
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(run))
    monkeypatch.chdir(tmp_path)
    assert main([]) == 0
    assert list(json.loads((results / "seeds.json").read_text())) == ["toy"]
