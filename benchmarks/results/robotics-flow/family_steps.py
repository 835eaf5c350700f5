"""Per-step CPU cost of the DDIM and flow GRPO recipes on the robotics field, side by side.

    python benchmarks/results/robotics-flow/family_steps.py [--rounds 8]

One training step of GRPO (sampling the group, scoring it in MuJoCo, the PPO update)
as each recipe of `prefdiff bench robotics` / `robotics-flow` configures it, from the
same freshly built network (weights do not change the cost of a step), timed on one
thread in rounds DDIM, flow, DDIM, flow, ... (prefdiff.perf.common).
"""

import argparse
import json

import torch
from prefdiff.bench.runner import Benchmark
from prefdiff.data import collate
from prefdiff.perf.common import interleaved, lightning_block, median
from prefdiff.plugins import get_manager
from prefdiff.trainers import METHODS


def module(recipe, method: str):
    cls, fixed = METHODS[method]
    options = {**recipe.methods[method]}
    options.pop("steps", None)
    torch.manual_seed(0)
    return cls(model=recipe.model, conditioner=recipe.conditioner, conditioner_options=recipe.conditioner_options,
               num_steps=recipe.num_steps, reward=recipe.reward, lora_rank=recipe.lora_rank, **fixed, **options)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--method", default="grpo")
    args = p.parse_args()
    torch.set_num_threads(1)
    manager = get_manager()
    recipes = {family: manager.benchmark(domain, quick=False)
               for family, domain in (("ddim", "robotics"), ("flow", "robotics-flow"))}
    flow = Benchmark(recipes["flow"])  # its prepared demonstrations (the same file for both families)
    train = flow.dataset("train", flow.recipe.train_size)
    batch = {"cond": collate([train[i] for i in range(flow.recipe.align_batch)])["cond"]}
    modules = {family: module(recipe, args.method) for family, recipe in recipes.items()}
    times = interleaved({f: (lambda m=m: lightning_block(m, batch, 1)) for f, m in modules.items()}, args.rounds)
    ratios = [d / f for d, f in zip(times["ddim"], times["flow"])]
    print(json.dumps({"method": args.method, "rounds": args.rounds,
                      **{f"{f}_step_cpu_s": round(median(t), 4) for f, t in times.items()},
                      "ddim_over_flow": round(median(ratios), 3)}))


if __name__ == "__main__":
    main()
