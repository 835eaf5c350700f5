"""Figure 5: how a training step grows with batch size and resolution, and DDP.

The step is prefdiff's SFT step under the Lightning Trainer (the costs of the
other families are multiples of its forward and backward). Configurations
are measured round-robin, so machine noise spreads over all of them, and the
exponent b of ``time ~ size^b`` is fitted by least squares in log-log space.

DDP runs ``python -m prefdiff.perf.ddp`` with 1 and with 2 processes (gloo on
the CPU, one thread each, the same batch per process), alternately.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from typing import Any

from prefdiff.perf.common import Figure, check, class_conditions, images, interleaved, lightning_block, median

TARGET_BATCH = "<= 1.1"
TARGET_RESOLUTION = "<= 2.2"
TARGET_DDP = ">= 1.6"


def fit_exponent(sizes: list[float], times: list[float]) -> float:
    """Least-squares slope of log(time) against log(size)."""
    xs, ys = [math.log(s) for s in sizes], [math.log(t) for t in times]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def _sft_module(resolution: int, quick: bool):
    from prefdiff.perf.overhead import build_module

    return build_module("sft", {"lora_rank": 0}, quick, sample_size=resolution)


def _sweep(configs: dict[str, tuple[int, int]], quick: bool, rounds: int, steps: int) -> dict[str, float]:
    """Median step seconds of each (batch, resolution) configuration."""
    arms = {}
    for name, (batch, res) in configs.items():
        module = _sft_module(res, quick)
        data = {"x0": images(batch, res), "cond": class_conditions(batch)}
        arms[name] = lambda module=module, data=data: lightning_block(module, data, steps)
    return {name: median(t) for name, t in interleaved(arms, rounds).items()}


def run(quick: bool = False, log=print) -> list[Figure]:
    batches = [4, 8] if quick else [8, 16, 32, 64]
    resolutions = [8, 16] if quick else [32, 64, 128]
    base_res, base_batch = (8, 4) if quick else (32, 8)
    rounds, steps = (1, 2) if quick else (3, 2)
    by_batch = _sweep({f"b{b}": (b, base_res) for b in batches}, quick, rounds, steps)
    by_res = _sweep({f"r{r}": (base_batch, r) for r in resolutions}, quick, rounds, steps)
    eb = round(fit_exponent(batches, [by_batch[f"b{b}"] for b in batches]), 3)
    er = round(fit_exponent(resolutions, [by_res[f"r{r}"] for r in resolutions]), 3)
    log(f"  figure 5 batch exponent {eb}, resolution exponent {er}")
    figures = [
        Figure(5, "step time against batch size: fitted exponent", eb, TARGET_BATCH, check(eb, TARGET_BATCH),
               unit="exponent", source="prefdiff",
               details={"resolution": base_res, "step_ms": {k: round(v * 1e3, 1) for k, v in by_batch.items()}},
               note="SFT step under Lightning; linear in batch is 1.0"),
        Figure(5, "step time against resolution: fitted exponent", er, TARGET_RESOLUTION,
               check(er, TARGET_RESOLUTION), unit="exponent", source="prefdiff",
               details={"batch": base_batch, "step_ms": {k: round(v * 1e3, 1) for k, v in by_res.items()}},
               note="SFT step under Lightning; linear in pixels is 2.0"),
    ]
    figures.append(run_ddp(quick, log))
    return figures


#: Rounds of (one process, two processes), alternated. With two, the speed-up read 1.45, 1.73 and 2.08
#: on three runs of the same code (the one-process step alone moved from 0.37 to 0.46 s), so the
#: target's verdict was the draw's; each arm's step is the median over its rounds.
DDP_ROUNDS = 5


def run_ddp(quick: bool = False, log=print) -> Figure:
    rounds = 1 if quick else DDP_ROUNDS
    spec = {"quick": quick, "batch": 4 if quick else 16, "steps": 3 if quick else 6}
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for _ in range(rounds):
        for devices in (1, 2):
            runs[devices].append(_ddp_child({**spec, "devices": devices}))
    step = {d: median([r["step_s"] for r in rs]) for d, rs in runs.items()}
    # Throughput in samples per second: each process takes `batch` samples per step.
    speedup = round((2 * spec["batch"] / step[2]) / (spec["batch"] / step[1]), 3)
    log(f"  figure 5 DDP: 1 process {step[1]:.3f} s/step, 2 processes {step[2]:.3f} s/step, speed-up {speedup}")
    return Figure(5, "DDP, 2 processes over 1: training throughput (samples/s)", speedup, TARGET_DDP,
                  check(speedup, TARGET_DDP), unit="speed-up", source="prefdiff",
                  details={"step_s": {str(d): round(s, 4) for d, s in step.items()},
                           "step_s_per_round": {str(d): [round(r["step_s"], 4) for r in rs]
                                                for d, rs in runs.items()},
                           "batch_per_process": spec["batch"], "cpu_cores": os.cpu_count()},
                  note="gloo on the CPU, one thread per process; 2 is perfect scaling, so on a 2-core machine "
                       "shared with other jobs the ceiling is what the cores left free allow")


def _ddp_child(spec: dict) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "prefdiff.perf.ddp", json.dumps(spec)],
                          capture_output=True, text=True, env=env, timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"DDP child {spec} failed:\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1])
