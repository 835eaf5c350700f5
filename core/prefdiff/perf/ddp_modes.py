"""Why figure 5's two-rank DDP step is bimodal: ``python -m prefdiff.perf.ddp_modes``.

Figure 5's spec (batch 16 per process, one thread each, SFT under Lightning, gloo) is run
``--runs`` times with the ranks free to move and as many times with each rank bound to its own
core, alternately, beside one-process runs. Every rank reports its median step, the CPUs its
main thread was seen on, its thread count and the context switches the kernel forced on it; the
JSON goes to ``--out`` (benchmarks/results/ddp_modes.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from statistics import median

from prefdiff.durable import atomic_write_text


def run(spec: dict) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "prefdiff.perf.ddp", json.dumps({**spec, "every_rank": True})],
                          capture_output=True, text=True, env=env, timeout=900)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"DDP child {spec} failed:\n{proc.stderr[-2000:]}")
    return sorted(lines, key=lambda r: r["rank"])


def describe(ranks: list[dict]) -> dict:
    """One run: its step (the slowest rank's), whether the ranks' main threads shared a CPU at the
    same step boundary, and the forced context switches per step."""
    step = max(r["step_s"] for r in ranks)
    shared = None
    if len(ranks) == 2:
        a, b = ranks[0]["cpus"], ranks[1]["cpus"]
        n = min(len(a), len(b))
        shared = round(sum(x == y for x, y in zip(a[:n], b[:n])) / max(n, 1), 3)
    forced = [round(r["involuntary_switches"] / max(r["steps"], 1), 1) for r in ranks]
    return {"step_s": round(step, 4), "same_cpu_share": shared, "forced_switches_per_step": forced,
            "threads": [r["threads"] for r in ranks], "ranks": ranks}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--out", default="benchmarks/results/ddp_modes.json")
    args = parser.parse_args(argv)
    spec = {"quick": False, "batch": 16, "steps": args.steps}
    started, load = time.time(), os.getloadavg()
    arms: dict[str, list[dict]] = {"one process": [], "two ranks, free": [], "two ranks, pinned": []}
    for i in range(args.runs):
        arms["one process"].append(describe(run({**spec, "devices": 1})))
        arms["two ranks, free"].append(describe(run({**spec, "devices": 2})))
        arms["two ranks, pinned"].append(describe(run({**spec, "devices": 2, "pin": True})))
        print(f"round {i + 1}: " + ", ".join(f"{k} {v[-1]['step_s']:.3f} s" for k, v in arms.items()), flush=True)
    one = median(r["step_s"] for r in arms["one process"])
    summary = {arm: {"step_s": [r["step_s"] for r in rs],
                     "speedup": [round(2 * one / r["step_s"], 3) for r in rs],
                     "same_cpu_share": [r["same_cpu_share"] for r in rs],
                     "forced_switches_per_step": [r["forced_switches_per_step"] for r in rs]}
               for arm, rs in arms.items()}
    from prefdiff.bench.runner import source_commit

    record = {"command": "python -m prefdiff.perf.ddp_modes " + " ".join(argv or sys.argv[1:]), **source_commit(),
              "spec": spec, "cpu_count": os.cpu_count(), "load_average_start": load,
              "load_average_end": os.getloadavg(), "wall_s": round(time.time() - started),
              "summary": summary, "runs": arms}
    atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")
    for arm, s in summary.items():
        print(f"{arm}: steps {s['step_s']}, speed-up {s['speedup']}, same CPU {s['same_cpu_share']}, "
              f"forced switches/step {s['forced_switches_per_step']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
