"""``python -m prefdiff.perf``: run the figures and write perf.json."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

FIGURES = ("1", "2", "3", "4", "5", "6", "7", "8")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m prefdiff.perf", description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny models and few repeats (a smoke run)")
    p.add_argument("--out", default="benchmarks/results/perf.json", help="where perf.json goes")
    p.add_argument("--results", default="benchmarks/results",
                   help="folder of the field benchmarks' results.json (figure 7)")
    p.add_argument("--only", action="append", choices=FIGURES, help="run only these figures (repeatable)")
    p.add_argument("--domain", action="append", default=None,
                   help="benchmark recipes whose rewards figures 4 and 8 time (default: every registered one for 4, "
                        "robotics and driving for 8)")
    p.add_argument("--update", action="store_true",
                   help="keep the other figures of an existing --out file (rerun some with --only)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)  # ratios on one thread each: the arms do not fight over the cores
    torch.manual_seed(args.seed)
    import pytorch_lightning  # noqa: F401  (it sets its loggers' level on import: quiet them after)

    for name in ("pytorch_lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    from prefdiff.perf import efficiency, growth, memory, overhead, overlap, reward_cost, sampler
    from prefdiff.perf.common import environment

    wanted = set(args.only or FIGURES)
    # The memory figures (3 and 6) time nothing: their measurement processes run one after another
    # on a background thread, on the second core, while figures 1 and 2 time on this one. Figures
    # 4 and 5 (DDP uses both cores) start only once they are done.
    background = ThreadPoolExecutor(max_workers=1)
    memory_runs = {key: background.submit(_timed, fn) for key, fn in
                   (("3", lambda: memory.run_lora(args.quick)), ("6", lambda: memory.run_backprop(args.quick)))
                   if key in wanted}
    runs = [("1", lambda: overhead.run(args.quick)), ("2", lambda: sampler.run(args.quick)),
            *((key, future.result) for key, future in memory_runs.items()),
            ("4", lambda: reward_cost.run(args.quick, domains=args.domain)),
            ("5", lambda: growth.run(args.quick)),
            ("7", lambda: efficiency.run(args.results)),
            ("8", lambda: overlap.run(args.quick, domains=args.domain))]
    figures, timings = [], {}
    start = time.perf_counter()
    for key, fn in runs:
        if key not in wanted:
            continue
        print(f"figure {key} ...", flush=True)
        if key in memory_runs:
            out, timings[key] = fn()  # its own measuring time, on the background thread
        else:
            out, timings[key] = _timed(fn)
        figures.extend(out if isinstance(out, list) else [out])
    background.shutdown()
    figures.sort(key=lambda f: f.id)
    command = "python -m prefdiff.perf " + " ".join(sys.argv[1:] if argv is None else argv)
    env = environment()
    report = {"quick": args.quick, "seed": args.seed, "command": command.strip(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "environment": env, "wall_s": round(time.perf_counter() - start, 1),
              "figure_wall_s": timings, "figure_commits": {key: env.get("commit") for key in timings},
              "figures": [asdict(f) for f in figures]}
    out = Path(args.out)
    if args.update and out.is_file():
        report = _merge(json.loads(out.read_text()), report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    for f in figures:
        print(f"figure {f.id}: {f.name}: {f.value} (target {f.target}) {'met' if f.met else 'MISSED'}")
    print(f"wrote {out}")
    return 0


def _timed(fn):
    """(fn's result, its wall-clock seconds)."""
    t = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t, 1)


def _merge(old: dict, new: dict) -> dict:
    """``new``'s figures in place of ``old``'s with the same ids; every command that contributed, and
    the commit each figure ran on (``environment`` is the latest run's)."""
    ids = {f["id"] for f in new["figures"]}
    figures = [f for f in old["figures"] if f["id"] not in ids] + new["figures"]
    commands = old.get("commands", [old["command"]]) + [new["command"]]
    old_commits = old.get("figure_commits") or {key: old["environment"].get("commit")
                                                for key in old.get("figure_wall_s", {})}
    return {**new, "command": " && ".join(commands), "commands": commands,
            "wall_s": round(old.get("wall_s", 0) + new["wall_s"], 1),
            "figure_wall_s": {**old.get("figure_wall_s", {}), **new["figure_wall_s"]},
            "figure_commits": {**old_commits, **new["figure_commits"]},
            "figures": sorted(figures, key=lambda f: f["id"])}


if __name__ == "__main__":
    raise SystemExit(main())
