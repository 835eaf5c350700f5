"""Figure 4: each registered reward's throughput and its share of a training step.

Samples and conditions come from each registered benchmark recipe's held-out
split (real samples where the dataset has them), built as ``prefdiff bench``
builds them, so its ``prepare`` step reuses the data and reward models that
the field benchmarks cached. A reward is timed on the first recipe whose
samples it accepts, preferring a field that trains with it.

The share is the reward's time on the samples of one training step over that
step's time, side by side: the step is the first online method of the recipe
that queries the reward (DDPO for the recipe's own reward), built from the
recipe's options on a fresh model and run under the Lightning Trainer, with
the reward call on that step's samples run between consecutive steps. A
reward only the judge uses (never queried in training) gets a throughput and
no share.
"""

from __future__ import annotations

from typing import Any

import torch

from prefdiff.data import condition_count, select
from prefdiff.perf.common import Figure, check, lightning_block, median, timed_block

TARGET = "<= 0.2"
ONLINE = ("ddpo", "grpo", "dpok", "d3po", "draft", "alignprop", "refl")


def _recipe_inputs(domain: str, quick: bool) -> tuple[Any, Any, torch.Tensor]:
    """(Benchmark, held-out conditions, samples) of one registered benchmark."""
    from prefdiff.bench import Benchmark
    from prefdiff.plugins import get_manager

    bench = Benchmark(get_manager().benchmark(domain, quick=quick), quick=quick)
    cond, real = bench.eval_set()
    n = condition_count(cond)
    if real is None:
        from prefdiff.data import infer_sample_shape
        from prefdiff.models import build_denoiser

        shape = infer_sample_shape(build_denoiser(bench.recipe.model))
        real = torch.rand((n, *shape), generator=torch.Generator().manual_seed(0)) * 2 - 1
    return bench, cond, real


def _reward_options(recipe, name: str) -> tuple[dict, str | None]:
    """(factory options, the online method that trains with it) for a reward the recipe names."""
    if name == recipe.reward:
        method = next((m for m in ONLINE if recipe.reward_for(m)[0] == name), "ddpo")
        return recipe.reward_options, method
    for method in ONLINE:
        if recipe.reward_for(method)[0] == name:
            return recipe.reward_for(method)[1], method
    if name == recipe.judge:
        return recipe.judge_options, None
    return {}, None


def _role_rank(recipe, name: str) -> int:
    """0: a training method queries the reward; 1: it is the judge; 2: the recipe does not use it."""
    if _reward_options(recipe, name)[1] is not None:
        return 0
    return 1 if name == recipe.judge else 2


def _step_module(bench, method: str, **overrides: Any):
    """The method's module as `prefdiff bench` builds it, on a fresh model (``overrides``: module options)."""
    from prefdiff.trainers import METHODS

    options, _ = bench.method_options(method)
    options.update(overrides)
    model = bench.recipe.model
    # A pipeline recipe's fresh model is its initial pipeline (trained VAE, untrained UNet), as in
    # the runner's "untrained" row; a preset recipe's is the preset with fresh weights.
    where = {"base": model["pipeline"]} if "pipeline" in model else {"model": model}
    torch.manual_seed(0)
    return METHODS[method][0](**where, **options)


def _samples_per_step(module, conditions: int) -> int:
    hp = module.hparams
    if "samples_per_condition" in hp:
        return conditions * hp.samples_per_condition
    return conditions * (2 if type(module).__name__ == "D3POModule" else 1)


def run(quick: bool = False, domains: list[str] | None = None, log=print) -> Figure:
    from prefdiff.plugins import get_manager

    manager = get_manager()
    domains = domains if domains is not None else manager.names("benchmarks")
    inputs = {d: _recipe_inputs(d, quick) for d in domains}
    steps = 1 if quick else 3
    rewards: dict[str, Any] = {}
    for name in manager.names("rewards"):
        entry: dict[str, Any] = {}
        # Prefer a field that trains with the reward, then one whose judge it is.
        ranked = sorted(inputs.items(), key=lambda item: _role_rank(item[1][0].recipe, name))
        for domain, (bench, cond, samples) in ranked:
            options, method = _reward_options(bench.recipe, name)
            try:
                reward = manager.reward(name, **options)
                n = min(64, samples.shape[0])
                with torch.no_grad():
                    reward(samples[:n], select(cond, slice(0, n)))
            except Exception as exc:  # noqa: BLE001  (a reward for another field's samples)
                entry.setdefault("skipped", []).append(f"{domain}: {type(exc).__name__}")
                continue
            entry = {"domain": domain, "batch": n}
            part, part_cond = samples[:n], select(cond, slice(0, n))
            if method is None:
                t = median(timed_block(lambda i: reward(part, part_cond), steps))
                entry["samples_per_s"] = round(n / t, 1)
                entry["role"] = "judge only" if name == bench.recipe.judge else "not used by the recipe"
                break
            module = _step_module(bench, method)
            b = min(bench.recipe.align_batch, condition_count(cond))
            step_batch = {"cond": select(cond, slice(0, b))}
            m = _samples_per_step(module, b)
            reps = (m + n - 1) // n
            step_samples = samples[:n].repeat(reps, *([1] * (samples.ndim - 1)))[:m]
            step_cond = select(cond, torch.arange(m) % n)

            # The reward call runs between the Lightning steps: the two alternate step by step.
            t_steps, t_rewards = lightning_block(module, step_batch, steps,
                                                 between=lambda i: reward(step_samples, step_cond))
            t_step, t_reward = median(t_steps), median(t_rewards)
            entry.update(samples_per_s=round(m / t_reward, 1), method=method, samples_per_step=m,
                         step_s=round(t_step, 4), reward_s=round(t_reward, 4), share=round(t_reward / t_step, 4))
            break
        rewards[name] = entry
        log(f"  figure 4 {name}: {entry}")
    shares = [e["share"] for e in rewards.values() if "share" in e]
    worst = max(shares) if shares else None
    return Figure(4, "reward share of a training step (worst training reward)", worst, TARGET,
                  check(worst, TARGET), details=rewards,
                  note="per reward: samples/s on the recipe's held-out samples; share = reward time on one "
                       "step's samples / that step's time, measured side by side")
