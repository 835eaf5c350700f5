"""prefdiff's CPU time over the peer's for the same epochs, with its interval, from any results file.

    .venv/bin/python benchmarks/peers/epoch_cost.py RESULTS_JSON... [--out FILE]

run.py records this (``per_epoch_cost``) from every epoch; results files written before it did hold
each side's cumulative CPU seconds at every snapshot (``curve``). Both sides snapshot at the same
epochs, so the stretches between snapshots pair up, and ``run.epoch_cost_ratio`` resamples those
pairs. It needs no records and no rerun.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import epoch_cost_ratio  # noqa: E402


def stretches(curve: list[dict]) -> tuple[list[int], list[float]]:
    """The epochs at the snapshots and the CPU seconds spent between consecutive ones."""
    epochs, cpu = [p["epoch"] for p in curve], [p["cpu_s"] for p in curve]
    return epochs, [b - a for a, b in zip(cpu, cpu[1:])]


def pooled(costs: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """Per method, the geometric mean of the runs' ratios with a bootstrap interval over runs (each run
    is one unit: its base, seed and hour differ from the others')."""
    import torch
    from prefdiff.bench.stats import paired_bootstrap_ci

    by_method: dict[str, list[float]] = {}
    for methods in costs.values():
        for method, cost in methods.items():
            by_method.setdefault(method, []).append(cost["ratio_of_means"])
    result = {}
    for method, ratios in by_method.items():
        logs = torch.tensor(ratios, dtype=torch.float64).log()
        result[method] = {"runs": len(ratios), "geometric_mean": float(logs.mean().exp()),
                          "ci95": [math.exp(c) for c in paired_bootstrap_ci(logs)],
                          "range": [min(ratios), max(ratios)]}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=HERE / "epoch_cost.json")
    args = parser.parse_args(argv)
    out = {}
    for path in args.results:
        for method, summary in json.loads(path.read_text())["methods"].items():
            peer = next(side for side in summary["sides"] if side != "prefdiff")
            (epochs, ours), (peer_epochs, theirs) = (stretches(summary["sides"][s]["curve"]) for s in ("prefdiff", peer))
            if epochs != peer_epochs:
                raise SystemExit(f"error: {path} {method}: the sides snapshot at different epochs")
            cost = epoch_cost_ratio(ours, theirs)
            out.setdefault(str(path), {})[method] = {**cost, "stretches": len(ours), "snapshot_epochs": epochs,
                                                    "peer": peer, "run": summary["run"]["commit"],
                                                    "seed": summary["settings"]["seed"]}
            print(f"{path} {method}: prefdiff / {peer} {cost['ratio_of_means']:.3f} "
                  f"[{cost['ci95'][0]:.3f}, {cost['ci95'][1]:.3f}], {len(ours)} stretches")
    out["pooled"] = pooled(out)
    for method, p in out["pooled"].items():
        print(f"pooled {method}: {p['geometric_mean']:.3f} [{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}] over {p['runs']} "
              f"runs, {p['range'][0]:.3f} to {p['range'][1]:.3f}")
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
