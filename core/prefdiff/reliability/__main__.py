"""``python -m prefdiff.reliability``: run the catalogue, write docs/reliability.json and docs/reliability.md."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from prefdiff.reliability.cases import PROMISES, catalogue


def run_catalogue(work: Path, promises: list[str], jobs: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Every case of the chosen promises, and each promise's wall time; a promise whose set-up fails
    fails all its cases."""
    from prefdiff.reliability.disk import run_disk
    from prefdiff.reliability.inputs import run_inputs
    from prefdiff.reliability.kills import run_bench, run_mining, run_resume

    runners = {"resume": lambda c: run_resume(c, work, jobs), "bench-kill": lambda c: run_bench(c, work),
               "mining-kill": lambda c: run_mining(c, work), "disk-full": lambda c: run_disk(c, work),
               "bad-input": lambda c: run_inputs(c, work, jobs)}
    results, walls = [], {}
    for promise in promises:
        cases = [c for c in catalogue() if c.promise == promise]
        started = time.monotonic()
        print(f"{promise}: {len(cases)} cases", flush=True)
        try:
            done = runners[promise](cases)
        except Exception as exc:  # the set-up (an uninterrupted run, the fixtures) failed
            done = [{**c.as_dict(), "passed": False, "detail": f"set-up failed: {type(exc).__name__}: {exc}"[:500],
                     "seconds": 0.0} for c in cases]
        walls[promise] = round(time.monotonic() - started, 1)
        for result in done:
            result.setdefault("corrupted", False)
            print(f"  {'ok  ' if result['passed'] else 'FAIL'} {result['id']}: {result['detail'][:160]}", flush=True)
        print(f"{promise}: {sum(r['passed'] for r in done)} of {len(done)} passed in {walls[promise]:.0f} s",
              flush=True)
        results += done
    return results, walls


def summarize(results: list[dict[str, Any]], walls: dict[str, float],
              runs: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The JSON: counts and wall time by promise and in all, the environment, every case with its outcome.

    Each promise records the run its cases come from (``run``: when, on which commit); ``runs`` gives
    those of promises kept from an earlier run, the others are this one's.
    """
    from prefdiff.bench.runner import environment

    env, finished = environment(), time.strftime("%Y-%m-%d %H:%M %Z")
    this_run = {"finished": finished, "commit": env["commit"], "clean": env["clean"], "threads": env["threads"]}
    promises = {}
    for name in PROMISES:
        mine = [r for r in results if r["promise"] == name]
        promises[name] = {"tried": len(mine), "passed": sum(r["passed"] for r in mine),
                          "corrupted": sum(bool(r.get("corrupted")) for r in mine), "wall_s": walls.get(name, 0.0),
                          "run": (runs or {}).get(name, this_run)}
    totals = {key: sum(p[key] for p in promises.values()) for key in ("tried", "passed", "corrupted")}
    return {"finished": finished, "wall_s": round(sum(walls.values()), 1),
            "env": env, "promises": promises, "totals": totals, "cases": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prefdiff.reliability", description=__doc__)
    parser.add_argument("--out", default="docs/reliability.json", help="the counts (JSON)")
    parser.add_argument("--page", default="docs/reliability.md", help="the page written from them")
    parser.add_argument("--promise", action="append", choices=list(PROMISES),
                        help="run only these (repeatable); the JSON keeps the other promises' last results")
    parser.add_argument("--jobs", type=int, default=2, help="processes at a time")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="prefdiff-reliability-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        results, walls = run_catalogue(work, args.promise or list(PROMISES), args.jobs)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    runs = {}
    if args.promise and Path(args.out).is_file():  # keep the other promises' last results, and their runs
        old = json.loads(Path(args.out).read_text())
        results += [c for c in old["cases"] if c["promise"] not in args.promise]
        walls = {**{k: v["wall_s"] for k, v in old["promises"].items() if k not in args.promise}, **walls}
        earlier = {"finished": old["finished"], "commit": old["env"]["commit"], "clean": old["env"]["clean"],
                   "threads": old["env"]["threads"]}  # a file written before promises recorded their runs
        runs = {k: v.get("run", earlier) for k, v in old["promises"].items() if k not in args.promise}
        order = [c.id for c in catalogue()]
        results.sort(key=lambda c: order.index(c["id"]) if c["id"] in order else len(order))
    data = summarize(results, walls, runs)
    from prefdiff.durable import atomic_write_text
    from prefdiff.reliability.page import render

    atomic_write_text(args.out, json.dumps(data, indent=1) + "\n")
    atomic_write_text(args.page, render(data))
    t = data["totals"]
    print(f"{t['passed']} of {t['tried']} cases passed, {t['corrupted']} lost or corrupted something; "
          f"wrote {args.out} and {args.page}")
    return 0 if t["passed"] == t["tried"] else 1


if __name__ == "__main__":
    sys.exit(main())
