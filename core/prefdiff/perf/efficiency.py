"""Figure 7: sample efficiency, from the field benchmarks' reward curves.

``prefdiff bench`` records, for every method, the held-out judge's mean
reward on a small fixed subset at a few points of training against training
wall-clock (``methods[m]["curve"]`` in results.json, the first point the base
model at 0 s). For each field: the level is DDPO's last curve value; each
method's time to reach it is the first recorded point at or above it (so the
times are as coarse as the evaluation points); the figure is DDPO's own time
to that level over the fastest other method's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefdiff.perf.common import Figure, check

TARGET = ">= 1.0"


def time_to_reach(curve: list[list[float]], level: float) -> float | None:
    """Training seconds of the first point of ``curve`` at or above ``level``; None if never."""
    for wall, reward in sorted(curve):
        if reward >= level:
            return float(wall)
    return None


def field_speedup(results: dict[str, Any]) -> dict[str, Any]:
    """Time to DDPO's final held-out reward per method, and the best method's speed-up."""
    methods = {m: e["curve"] for m, e in results.get("methods", {}).items() if e.get("curve")}
    if "ddpo" not in methods:
        return {"skipped": "no DDPO curve"}
    level = methods["ddpo"][-1][1]
    reach = {m: time_to_reach(c, level) for m, c in methods.items()}
    out: dict[str, Any] = {"level": level, "time_to_level_s": reach}
    others = {m: t for m, t in reach.items() if m != "ddpo" and t is not None}
    if not reach["ddpo"]:
        out["skipped"] = "DDPO ends no higher than the base model: every method is there at 0 s"
        return out
    if not others:
        # no other method gets there: DDPO is the field's fastest, a speed-up of 1
        out.update(best="ddpo", speedup=1.0)
        return out
    best = min(others, key=others.get)
    out.update(best=best, speedup=round(reach["ddpo"] / max(others[best], 1e-9), 3))
    return out


def run(results_dir: str | Path = "benchmarks/results", log=print) -> Figure:
    fields = {}
    for path in sorted(Path(results_dir).glob("*/results.json")):
        results = json.loads(path.read_text())
        fields[results.get("domain", path.parent.name)] = field_speedup(results)
    speedups = [f["speedup"] for f in fields.values() if "speedup" in f]
    value = min(speedups) if speedups else None
    log(f"  figure 7: {fields}")
    return Figure(7, "sample efficiency: best method's time to DDPO's final held-out reward, speed-up over "
                     "DDPO (slowest field)", value, TARGET, check(value, TARGET), unit="speed-up",
                  source="prefdiff", details={"results": str(results_dir), "fields": fields},
                  note="from methods[m]['curve'] of each results.json; value None when no field has curves "
                       "for DDPO and another method; the issue sets no target")
