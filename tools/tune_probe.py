"""Tuning probe: one seed's base (pretrained or cached), mined once, then methods under option sets.

    OMP_NUM_THREADS=1 python tools/tune_probe.py DOMAIN SEED CACHE OUT SPEC...

Each SPEC is ``method:{json}``, the json overriding the recipe's options for that method. It is
evaluated as `prefdiff bench` evaluates: the recipe's held-out conditions and draws, a paired
bootstrap interval against the base, with the training reward's change on the same draws beside it
and on as many conditions of the training split, and the means of the terms the judge reports
(driving's planner, traffic match and IoU). One JSON line per SPEC is appended to
``OUT/probe.jsonl``. Special forms:

- ``"min_gap": g`` among a method's overrides keeps only the mined pairs whose reward gap is above
  ``g``;
- ``"shuffled": true`` among a policy-gradient method's overrides permutes each batch's advantages
  at random (the control: an update of the same size and noise that knows nothing of the reward);
- stop 49's ``"drop_last_steps": m`` control is now the modules' own ``min_step_std`` option;
- ``recipe:{json}`` replaces recipe fields (``mine_conditions``, ...) for the SPECs after it.

Tune on the tuning seeds (1, 4, 5, 6), never on a published one (0, 2, 3). The probe runs at one thread,
so its base is not the one `prefdiff bench --threads 2` pretrains for the same seed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from unittest import mock

import torch

from prefdiff.bench import Benchmark
from prefdiff.bench.stats import paired_bootstrap_ci
from prefdiff.data import collate, condition_count, infer_sample_shape, repeat_condition, write_best_worst_pairs
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
    base_samples = bench.generate(base, scheduler, cond, noise)
    base_scores, base_terms = bench.score(bench.judge, base_samples, cond)
    # The training reward on the same held-out draws: a method that raises it while the judge stays
    # level is exploiting the reward; one that raises neither is not learning.
    base_rewards, _ = bench.score(bench.reward, base_samples, cond)
    # As many training conditions, spread evenly over the training split: the training reward there
    # tells overfitting to the conditions trained on (it rises there only) from not learning.
    train = bench.dataset("train", recipe.train_size)
    train_cond = repeat_condition(collate([train[int(i)] for i in torch.linspace(0, len(train) - 1, n)])["cond"], k)
    base_train, _ = bench.score(bench.reward, bench.generate(base, scheduler, train_cond, noise), train_cond)

    def change(reward, draws, on, before) -> tuple[float, list[float], dict[str, float]]:
        """Mean change per condition against the base's scores ``before``, with its interval, and the
        means the reward reports beside its score (the judge's terms, say)."""
        scores, terms = bench.score(reward, draws, on)
        diff = (scores - before).view(n, k).mean(1)
        return (round(float(diff.mean()), 4), [round(c, 4) for c in paired_bootstrap_ci(diff, seed=seed)],
                rounded(terms))

    with open(out / "probe.jsonl", "a") as log:
        def record(row: dict) -> None:
            print(json.dumps(row), file=log, flush=True)
            print(row, flush=True)

        record({"seed": seed, "base": float(base_scores.mean()), "base_reward": float(base_rewards.mean()),
                "base_train_reward": float(base_train.mean()), "base_judge_terms": rounded(base_terms),
                **({"base_drift": round(recipe.drift(base_samples[::k], real), 3)} if recipe.drift and real is not None
                   else {})})
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
            shuffle = overrides.pop("shuffled", False)
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
            with shuffled_advantages(seed) if shuffle else contextlib.nullcontext():
                module, wall, _, _ = bench.align(method, base_dir, mined)
            samples = bench.generate(module.denoiser, scheduler, cond, noise)
            row = {"seed": seed, "method": method, "over": spec, "train_s": round(wall, 1)}
            row["improvement"], row["ci"], row["judge_terms"] = change(bench.judge, samples, cond, base_scores)
            row["reward_change"], row["reward_ci"], _ = change(bench.reward, samples, cond, base_rewards)
            row["train_reward_change"], row["train_reward_ci"], _ = change(
                bench.reward, bench.generate(module.denoiser, scheduler, train_cond, noise), train_cond, base_train)
            if recipe.drift and real is not None:
                row["drift"] = round(recipe.drift(samples[::k], real), 3)
            record(row)


def rounded(terms: dict[str, float]) -> dict[str, float]:
    return {key: round(value, 4) for key, value in terms.items()}


def shuffled_advantages(seed: int):
    """The control for a policy-gradient probe: each batch's advantages permuted at random, so the
    update keeps its size and noise but loses the reward's information. What a method does to the
    reward beyond what this does, its gradient did."""
    from prefdiff.trainers.policy_gradient import PolicyGradientModule

    original = PolicyGradientModule.advantages
    generator = torch.Generator().manual_seed(seed + 4242)

    def permuted(self, rewards, k):
        adv = original(self, rewards, k)
        return adv[torch.randperm(adv.shape[0], generator=generator).to(adv.device)]

    return mock.patch.object(PolicyGradientModule, "advantages", permuted)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if len(sys.argv) < 6:
        sys.exit(__doc__)
    main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), sys.argv[5:])
