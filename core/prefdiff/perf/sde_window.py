"""The SDE window's saving: Flow-GRPO over a few stochastic steps against every step stochastic.

    python -m prefdiff.perf.sde_window --domain robotics-flow --method grpo --seed 0 \\
        --out benchmarks/results/robotics-flow/sde_window.json

Two arms train one policy-gradient method of a flow-matching benchmark recipe
from its base model (cached by ``prefdiff bench``), as the benchmark trains it:
the same steps, batch, seed and options. They differ only in ``sde_window``:
the recipe's window (those steps draw noise and are trained, the others are
Euler ODE steps; Flow-GRPO-Fast, MixGRPO) against none (every step stochastic,
Flow-GRPO). The window arm is the benchmark's own run of the method, so its
held-out numbers reproduce the benchmark's.

Time: the process CPU time (:data:`~prefdiff.perf.common.CLOCK`, one thread)
of each arm's whole training run (``speedup_train``: full over window, the
saving a benchmark run sees, though the first arm, the window, also pays the
process's one-time costs, so it understates the saving); then, side by side, the two trained arms take
Lightning steps in rounds A, B, A, B, ... on one fixed batch, and the median
of each round's full/window ratio (``side_by_side.full_over_window``) is the
per-step speedup that a load swing on a shared machine cannot fake. A step
samples every step of the group either way; the window saves the log-prob
recomputation, backward and reference passes of the steps it leaves to the ODE.

Reward: each arm's held-out judge on the benchmark's evaluation set (same
conditions, noise and sampler as ``prefdiff bench``), its improvement over the
base with the paired-bootstrap interval, and the paired difference of the
window arm against the full-SDE arm: "equal reward" is that interval
holding zero.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from prefdiff.perf.common import (
    CLOCK,
    environment,
    interleaved,
    lightning_block,
    median,
)

ARMS = ("window", "full")


def train_arm(bench, method: str, options: dict[str, Any], base_dir: Path):
    """Train ``method`` as ``prefdiff bench`` trains it (:meth:`Benchmark.align`: its seed, data,
    LoRA and steps), with ``options`` in place of the recipe's; returns ``(module, CPU seconds,
    wall seconds, steps)``."""
    arm = copy.copy(bench)
    arm.recipe = replace(bench.recipe, methods={**bench.recipe.methods, method: options})
    start = CLOCK()
    module, wall, _, _ = arm.align(method, base_dir, None)
    return module, CLOCK() - start, wall, module.global_step


def run(domain: str = "robotics-flow", method: str = "grpo", *, seed: int = 0, quick: bool = False,
        cache: Path | None = None, rounds: int = 8, log=print) -> dict[str, Any]:
    """Train both arms, evaluate them on the benchmark's held-out set; the record of sde_window.json."""
    from prefdiff.bench import Benchmark
    from prefdiff.bench.stats import paired_bootstrap_ci
    from prefdiff.data import (
        collate,
        condition_count,
        infer_sample_shape,
        repeat_condition,
    )
    from prefdiff.errors import UserError
    from prefdiff.models import load_model
    from prefdiff.plugins import get_manager
    from prefdiff.schedulers import load_scheduler

    bench = Benchmark(get_manager().benchmark(domain, quick=quick), seed=seed, quick=quick, cache=cache)
    r = bench.recipe
    options = dict(r.methods.get(method, {}))
    if not options.get("sde_window"):
        raise UserError(f"the '{domain}' recipe gives {method} no sde_window; pick a flow recipe whose "
                        f"policy-gradient method samples over a window")
    arms = {"window": options, "full": {**options, "sde_window": None}}
    base_dir = bench.base_model()
    cond_module = bench.manager.conditioner(r.conditioner, **r.conditioner_options) if r.conditioner else None
    base, scheduler = load_model(base_dir, cond_module), load_scheduler(base_dir)
    cond, _ = bench.eval_set()
    n, k = condition_count(cond), r.eval_samples
    cond = repeat_condition(cond, k)
    noise = torch.randn((n * k, *infer_sample_shape(base)), generator=torch.Generator().manual_seed(seed + 777))
    base_scores = bench.score(bench.judge, bench.generate(base, scheduler, cond, noise), cond)[0]

    record: dict[str, Any] = {"domain": domain, "method": method, "seed": seed, "quick": quick,
                              "num_steps": r.num_steps, "options": options, "n_eval": n, "eval_samples": k,
                              "eval_eta": r.eta, "base_reward_mean": float(base_scores.mean()),
                              "load_average_start": os.getloadavg(), "arms": {}}
    modules, per_condition = {}, {}
    for arm, arm_options in arms.items():
        log(f"training {method} with {'sde_window ' + str(options['sde_window']) if arm == 'window' else 'every step stochastic'}")
        module, cpu, wall, steps = train_arm(bench, method, arm_options, base_dir)
        scores = bench.score(bench.judge, bench.generate(module.denoiser, scheduler, cond, noise), cond)[0]
        per_condition[arm] = scores.view(n, k).mean(1)
        diff = per_condition[arm] - base_scores.view(n, k).mean(1)
        stochastic = sum(stochastic_steps_of(module))
        record["arms"][arm] = {
            "sde_window": arm_options["sde_window"], "stochastic_steps": stochastic,
            "trained_steps_per_update": max(1, int(stochastic * module.hparams.timestep_fraction)),
            "steps": steps, "train_cpu_s": round(cpu, 2), "step_cpu_s_mean": round(cpu / max(1, steps), 4),
            "train_wall_s": round(wall, 2),
            "reward_mean": float(scores.mean()), "improvement": float(diff.mean()),
            "improvement_ci95": paired_bootstrap_ci(diff, seed=seed)}
        modules[arm] = module
        log(f"  {arm}: {record['arms'][arm]}")

    # Side by side: the trained arms alternate on one fixed batch of training conditions.
    train = bench.dataset("train", r.train_size)
    batch = collate([train[i] for i in range(min(r.align_batch, len(train)))])
    batch = {"cond": batch["cond"]}
    times = interleaved({arm: (lambda m=m: lightning_block(m, batch, 1)) for arm, m in modules.items()}, rounds)
    ratios = [f / w for w, f in zip(times["window"], times["full"])]
    record["side_by_side"] = {"rounds": rounds, **{f"{arm}_step_cpu_s": round(median(times[arm]), 4) for arm in ARMS},
                              "full_over_window": round(median(ratios), 3)}
    gap = per_condition["window"] - per_condition["full"]
    record["window_minus_full"] = {"reward": float(gap.mean()), "ci95": paired_bootstrap_ci(gap, seed=seed)}
    # The whole training run's CPU time, window against full: the saving a benchmark run sees.
    record["speedup_train"] = round(record["arms"]["full"]["train_cpu_s"] / record["arms"]["window"]["train_cpu_s"], 3)
    record["load_average_end"] = os.getloadavg()
    return record


def stochastic_steps_of(module) -> list[bool]:
    """Which sampling steps of ``module`` draw noise (and so carry a log-prob to train)."""
    from prefdiff.sampling.flow import stochastic_steps

    window = module.hparams.sde_window
    return stochastic_steps(module.hparams.num_steps, module.hparams.eta, tuple(window) if window else None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m prefdiff.perf.sde_window", description=__doc__.split("\n")[0])
    p.add_argument("--domain", default="robotics-flow", help="a flow-matching benchmark recipe")
    p.add_argument("--method", default="grpo", choices=("grpo", "ddpo", "dpok"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="the recipe's quick settings (a smoke run)")
    p.add_argument("--cache", type=Path, default=None, help="benchmark cache (default: PREFDIFF_CACHE)")
    p.add_argument("--rounds", type=int, default=8, help="side-by-side rounds after training")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/robotics-flow/sde_window.json"))
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)  # CPU time equals work done only on one thread
    import pytorch_lightning  # noqa: F401  (it sets its loggers' level on import: quiet them after)

    for name in ("pytorch_lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    from prefdiff.bench.runner import source_commit

    start = time.perf_counter()
    record = run(args.domain, args.method, seed=args.seed, quick=args.quick, cache=args.cache, rounds=args.rounds)
    command = "python -m prefdiff.perf.sde_window " + " ".join(sys.argv[1:] if argv is None else argv)
    record.update(command=command.strip(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  wall_s=round(time.perf_counter() - start, 1), environment={**environment(), **source_commit()})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"full SDE over window: training CPU {record['speedup_train']}x, per step side by side "
          f"{record['side_by_side']['full_over_window']}x; window - full reward "
          f"{record['window_minus_full']['reward']:+.4f} {record['window_minus_full']['ci95']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
