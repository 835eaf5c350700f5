"""A quick benchmark alone and beside a second one: ``python -m prefdiff.perf.contention``.

Issue 19 measured ``prefdiff bench example --quick`` at 3 min 11 s alone and 17 min 7 s beside
another benchmark on this 2-core machine, before :mod:`prefdiff.threads` chose the thread count
from the free cores. This times, for each field named:

- *alone*: one ``prefdiff bench FIELD --quick`` on an idle machine (the run waits for the 1-minute
  load average to fall below 0.3 first);
- *beside*: the same run started ``--stagger`` seconds after a second quick run (of ``--other``,
  by default the same field), so the load average has seen the first, as it would when a user
  starts a second job; both are timed.

Every run starts from an empty cache (``PREFDIFF_CACHE``), so pretraining is included, and
writes its results to a scratch folder. ``--threads-env`` runs the arm with an environment of
the old default instead (``OMP_NUM_THREADS=2``: torch's thread count, OpenMP's own wait policy).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prefdiff.durable import atomic_write_text


def start(field: str, scratch: Path, name: str, env: dict) -> tuple[subprocess.Popen, float]:
    out = scratch / name
    shutil.rmtree(out, ignore_errors=True)
    run_env = {**env, "PREFDIFF_CACHE": str(scratch / f"{name}-cache")}
    command = [str(Path(sys.executable).with_name("prefdiff")), "bench", field, "--quick", "--out", str(out)]
    log = open(scratch / f"{name}.log", "w")
    return subprocess.Popen(command, env=run_env, stdout=log, stderr=subprocess.STDOUT), time.perf_counter()


def finish(process: subprocess.Popen, started: float) -> tuple[float, int | None]:
    """The run's wall time, and the torch threads it chose (its results.json records them)."""
    if process.wait() != 0:
        raise RuntimeError(f"{process.args} failed with exit {process.returncode}")
    wall = round(time.perf_counter() - started, 1)
    results = Path(process.args[process.args.index("--out") + 1]) / "results.json"
    threads = json.loads(results.read_text()).get("env", {}).get("threads") if results.is_file() else None
    return wall, threads


def wait_until_idle(limit: float = 0.3, timeout: float = 600.0) -> list[float]:
    """Wait for the 1-minute load average to fall below ``limit``: the thread count a run chooses
    follows it, so an "alone" run straight after another job would see that job's load."""
    deadline = time.monotonic() + timeout
    while os.getloadavg()[0] >= limit and time.monotonic() < deadline:
        time.sleep(5)
    return list(os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fields", nargs="+", default=["example"])
    parser.add_argument("--other", default=None, help="the field of the second, concurrent run (default: the same)")
    parser.add_argument("--stagger", type=float, default=60.0, help="seconds between the two starts")
    parser.add_argument("--threads-env", action="store_true", help="the old default: OMP_NUM_THREADS=2")
    parser.add_argument("--out", default="benchmarks/results/contention.json")
    args = parser.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    if args.threads_env:
        env["OMP_NUM_THREADS"] = "2"
    out = Path(args.out)
    record = json.loads(out.read_text()) if out.is_file() else {"runs": []}
    from prefdiff.bench.runner import source_commit

    commit = source_commit()
    with tempfile.TemporaryDirectory(prefix="contention-") as tmp:
        scratch = Path(tmp)
        for field in args.fields:
            load = wait_until_idle()
            alone, alone_threads = finish(*start(field, scratch, "alone", env))
            other_field = args.other or field
            other_load = wait_until_idle()
            other, other_started = start(other_field, scratch, "other", env)
            time.sleep(args.stagger)
            beside_load = list(os.getloadavg())
            beside, beside_threads = finish(*start(field, scratch, "beside", env))
            other_s, other_threads = finish(other, other_started)
            run = {"field": field, "other": other_field, "stagger_s": args.stagger,
                   "arm": "OMP_NUM_THREADS=2 (old default)" if args.threads_env else "default (free cores)",
                   "alone_s": alone, "beside_s": beside, "other_s": other_s,
                   "slowdown": round(beside / alone, 2), "threads": {"alone": alone_threads, "beside": beside_threads,
                                                                     "other": other_threads},
                   "load_average_before": load, "load_average_at_other_start": other_load,
                   "load_average_at_second_start": beside_load, "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                   **commit}
            record["runs"].append(run)
            print(json.dumps(run), flush=True)
            atomic_write_text(out, json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
