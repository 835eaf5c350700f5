"""Tuning probe: one seed's base (pretrained or cached), mined once, then methods under option sets.

    OMP_NUM_THREADS=1 python tools/tune_probe.py DOMAIN SEED CACHE OUT SPEC...

Each SPEC is ``method:{json}``, the json overriding the recipe's options for that method. It is
evaluated as `prefdiff bench` evaluates: the recipe's held-out conditions and draws, a paired
bootstrap interval against the base. One JSON line per SPEC is appended to ``OUT/probe.jsonl``.
Two special forms:

- ``"min_gap": g`` among a method's overrides keeps only the mined pairs whose reward gap is above
  ``g``;
- ``recipe:{json}`` replaces recipe fields (``mine_conditions``, ...) for the SPECs after it.

Tune on the tuning seeds (1, 4), never on a published one (0, 2, 3). The probe runs at one thread,
so its base is not the one `prefdiff bench --threads 2` pretrains for the same seed.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

import torch

from prefdiff.bench import Benchmark
from prefdiff.bench.stats import paired_bootstrap_ci
from prefdiff.data import condition_count, infer_sample_shape, repeat_condition, write_best_worst_pairs
from prefdiff.models import load_model
from prefdiff.plugins import get_manager
from prefdiff.schedulers import load_scheduler
from prefdiff.trainers import METHODS


def main(domain: str, seed: int, cache: Path, out: Path, specs: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    manager = get_manager()
    bench = Benchmark(manager.benchmark(domain, quick=False), seed=seed, cache=cache)
    recipe = bench.recipe
    base_dir = bench.base_model()
    conditioner = manager.conditioner(recipe.conditioner, **recipe.conditioner_options) if recipe.conditioner else None
    base, scheduler = load_model(base_dir, conditioner), load_scheduler(base_dir)
    cond, real = bench.eval_set()
    n, k = condition_count(cond), recipe.eval_samples
    cond = repeat_condition(cond, k)
    noise = torch.randn((n * k, *infer_sample_shape(base)), generator=torch.Generator().manual_seed(seed + 777))
    base_scores, _ = bench.score(bench.judge, bench.generate(base, scheduler, cond, noise), cond)

    with open(out / "probe.jsonl", "a") as log:
        def record(row: dict) -> None:
            print(json.dumps(row), file=log, flush=True)
            print(row, flush=True)

        record({"seed": seed, "base": float(base_scores.mean())})
        # Pair files append when written into a folder that holds some, so every mining and every
        # gap filter of it gets its own folder, written once and reused.
        mined, pair_files, minings = None, {}, 0
        for spec in specs:
            method, _, text = spec.partition(":")
            overrides = json.loads(text or "{}")
            if method == "recipe":
                recipe = bench.recipe = replace(recipe, **overrides)
                mined = None
                record({"seed": seed, "recipe": overrides})
                continue
            min_gap = overrides.pop("min_gap", None)
            cls, fixed = METHODS[method]
            if mined is None and cls.training_data(**fixed).mined:  # only the pair methods mine, as in bench
                folder = out / f"mining-{minings}"
                if folder.exists():
                    sys.exit(f"{folder} exists: give the probe a new OUT folder")
                minings += 1
                mined = bench.mine(base, scheduler, folder)
                pair_files = {None: bench.pair_file}
            if mined is not None and min_gap not in pair_files:
                pair_files[min_gap] = write_best_worst_pairs(mined, folder / f"mined-gap{min_gap}",
                                                             labeler="probe", min_gap=min_gap)
            bench.pair_file = pair_files.get(min_gap)
            bench.recipe = replace(recipe, methods={**recipe.methods,
                                                    method: {**recipe.methods.get(method, {}), **overrides}})
            module, wall, _, _ = bench.align(method, base_dir, mined)
            samples = bench.generate(module.denoiser, scheduler, cond, noise)
            diff = (bench.score(bench.judge, samples, cond)[0] - base_scores).view(n, k).mean(1)
            row = {"seed": seed, "method": method, "over": spec, "improvement": round(float(diff.mean()), 4),
                   "ci": [round(c, 4) for c in paired_bootstrap_ci(diff, seed=seed)], "train_s": round(wall, 1)}
            if recipe.drift and real is not None:
                row["drift"] = round(recipe.drift(samples[::k], real), 3)
            record(row)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if len(sys.argv) < 6:
        sys.exit(__doc__)
    main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), sys.argv[5:])
