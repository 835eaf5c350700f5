"""Gains that hold across seeds: each method's improvement on every seed, pooled, and the two-of-three rule.

    python -m prefdiff.bench.seeds RESULTS_DIR [--out RESULTS_DIR/seeds.json]

A field's main run (``RESULTS_DIR/FIELD/results.json``) and its extra seeds
(``RESULTS_DIR/seeds/FIELD/seed-N/results.json``, written by ``make
bench-seeds``) each pretrain their own base from their seed and align it.
Every run stores its per-condition paired differences (aligned minus base on
the same condition and noise), so the seeds pool without rerunning anything.

The pooled interval is a stratified bootstrap (Davison & Hinkley 1997,
*Bootstrap Methods and their Application*, §3.2): each resample redraws the
conditions of every seed from that seed's own conditions, and the statistic
is the mean over all of them, so a seed weighs by its number of conditions
and the between-seed spread of bases stays in the data, not in the weights.

A method *improves* a field when its pooled interval lies above zero and its
per-seed interval lies above zero on at least two seeds (of three).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from prefdiff.errors import UserError

SEEDS_ABOVE = 2
"""Seeds whose own interval must lie above zero for a method to count as improving a field."""


def stratified_bootstrap_ci(diffs: list[torch.Tensor], n_resamples: int = 2000, seed: int = 0,
                            level: float = 0.95) -> list[float]:
    """Percentile interval of the mean over all strata, resampling within each stratum.

    :param diffs: one tensor of paired differences per seed (stratum), ``[N_s]`` each.
    """
    g = torch.Generator().manual_seed(seed)
    total = torch.zeros(n_resamples, dtype=torch.float64)
    for d in diffs:
        idx = torch.randint(len(d), (n_resamples, len(d)), generator=g)
        total += d.double()[idx].sum(1)
    means = total / sum(len(d) for d in diffs)
    tail = round((1 - level) / 2, 12)
    return [float(torch.quantile(means, tail)), float(torch.quantile(means, 1 - tail))]


def seed_runs(results_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Every field's runs, main run first, then its extra seeds in seed order."""
    fields: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(results_dir.glob("*/results.json")):
        r = json.loads(path.read_text())
        fields.setdefault(r["domain"], []).append(r)
    for path in sorted(results_dir.glob("seeds/*/seed-*/results.json")):
        r = json.loads(path.read_text())
        if r["domain"] in fields:
            fields[r["domain"]].append(r)
    for runs in fields.values():
        runs[1:] = sorted(runs[1:], key=lambda r: r["seed"])
    return fields


def field_table(runs: list[dict[str, Any]], seeds_above: int = SEEDS_ABOVE) -> dict[str, Any]:
    """Per method: each seed's improvement and interval, the pooled ones, and whether it meets the rule."""
    seeds = [r["seed"] for r in runs]
    if len(set(seeds)) != len(seeds):
        raise UserError(f"{runs[0]['domain']}: two runs share a seed ({seeds}); each run needs its own seed")
    methods: dict[str, Any] = {}
    for name in runs[0]["methods"]:
        per_seed = [r["methods"].get(name) for r in runs]
        if any(m is None or "improvement_per_condition" not in m for m in per_seed):
            continue  # a run without this method, or from before per-condition differences were kept
        diffs = [torch.tensor(m["improvement_per_condition"], dtype=torch.float64) for m in per_seed]
        pooled = torch.cat(diffs)
        above = sum(m["improvement_ci95"][0] > 0 for m in per_seed)
        ci = stratified_bootstrap_ci(diffs, seed=seeds[0])
        methods[name] = {
            "per_seed": [{"seed": s, "improvement": m["improvement"], "improvement_ci95": m["improvement_ci95"]}
                         for s, m in zip(seeds, per_seed)],
            "pooled_improvement": float(pooled.mean()), "pooled_ci95": ci, "seeds_above_zero": above,
            "improves": ci[0] > 0 and above >= min(seeds_above, len(runs)),
        }
    return {"seeds": seeds, "base": [r["base"]["reward_mean"] for r in runs], "methods": methods}


def seeds_summary(results_dir: Path) -> dict[str, Any]:
    """The table of every field that has at least two seeds."""
    return {domain: field_table(runs) for domain, runs in seed_runs(results_dir).items() if len(runs) > 1}


def render_seeds(summary: dict[str, Any]) -> list[str]:
    """The page's section: one row per field and method."""
    if not summary:
        return []
    lines = ["## Across seeds", "",
             f"Each seed pretrains its own base and aligns it (`make bench` runs seed 0, `make bench-seeds` the "
             f"others). Pooled: stratified bootstrap over seeds and held-out conditions. A method improves a field "
             f"when its pooled interval and its own interval on at least {SEEDS_ABOVE} seeds lie above zero.", "",
             "| field | method | per seed: improvement [CI95] | pooled [CI95] | improves |", "|---|---|---|---|---|"]
    for domain, table in summary.items():
        for name, m in table["methods"].items():
            seeds = "; ".join(f"seed {s['seed']}: {s['improvement']:+.4f} [{s['improvement_ci95'][0]:+.4f}, "
                              f"{s['improvement_ci95'][1]:+.4f}]" for s in m["per_seed"])
            lo, hi = m["pooled_ci95"]
            lines.append(f"| {domain} | {name} | {seeds} | {m['pooled_improvement']:+.4f} [{lo:+.4f}, {hi:+.4f}] | "
                         f"{'yes' if m['improves'] else 'no'} ({m['seeds_above_zero']} of {len(m['per_seed'])}) |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prefdiff.bench.seeds", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="?", default="benchmarks/results", help="the results folder")
    parser.add_argument("--out", default=None, help="the JSON to write (default RESULTS/seeds.json)")
    args = parser.parse_args(argv)
    from prefdiff.durable import atomic_write_text

    results = Path(args.results)
    summary = seeds_summary(results)
    out = Path(args.out or results / "seeds.json")
    atomic_write_text(out, json.dumps(summary, indent=1) + "\n")
    print("\n".join(render_seeds(summary)) or "no field has more than one seed")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
