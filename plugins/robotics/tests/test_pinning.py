"""Start and goal pinned by the conditioner reach every sampler call that stands for the model."""

import pytest
import torch

from prefdiff.data.mining import mine
from prefdiff.trainers import PolicyGradientModule
from prefdiff_robotics.recipe import robotics_recipe
from prefdiff_robotics.scene import Layout

LAYOUTS = [Layout([-0.7, -0.6], [0.7, 0.6], [[0.6, -0.6, 0.1]]),
           Layout([-0.6, 0.7], [0.6, -0.7], [[0.6, 0.6, 0.1], [-0.6, -0.6, 0.1]])]


def layouts() -> torch.Tensor:
    return torch.stack([torch.from_numpy(layout.to_vector()) for layout in LAYOUTS])


def ends(samples: torch.Tensor) -> torch.Tensor:
    """The first and last positions, ``[B, 2, 2]``."""
    return samples[:, 0:2, [0, -1]]


def planned(cond: torch.Tensor) -> torch.Tensor:
    return torch.stack([cond[:, 0:2], cond[:, 2:4]], dim=-1)


def trainer(pin: bool) -> PolicyGradientModule:
    torch.manual_seed(0)
    return PolicyGradientModule(model=robotics_recipe(quick=True).model, conditioner="layout_timeline",
                                conditioner_options={"pin_endpoints": pin}, reward="robot_feasibility",
                                lora_rank=0, num_steps=4, method="ddpo", samples_per_condition=2)


@pytest.mark.parametrize("steps_per_forward", [1, 3])
def test_the_trainers_sample_pinned_plans_and_their_log_probs_reproduce(steps_per_forward):
    module = trainer(pin=True)
    cond = layouts().repeat_interleave(2, dim=0)
    out = module.run_sampler(cond, 4, torch.Generator().manual_seed(1), return_trajectory=True)
    assert torch.equal(ends(out.samples), planned(cond))
    options = module.log_prob_options(cond)
    assert options["keep_mask"][:, 0:2, [0, -1]].eq(1).all() and options["keep_mask"].sum() == 4 * 4
    steps = out.stochastic.nonzero().flatten().tolist()
    for first in range(0, len(steps), steps_per_forward):
        part = steps[first:first + steps_per_forward]
        with torch.no_grad():
            recomputed = module.step_log_probs(out, part, cond, options)
        for j, (log_prob, _, _) in zip(part, recomputed):
            # PPO's ratio starts at exactly 1: the recomputation leaves out the pinned ends as the sampler did
            torch.testing.assert_close(log_prob, out.log_probs[:, j])


def test_without_pinning_the_ends_are_the_models_own():
    module = trainer(pin=False)
    cond = layouts()
    out = module.run_sampler(cond, 2, torch.Generator().manual_seed(1))
    assert not torch.equal(ends(out.samples), planned(cond))
    assert "keep_mask" not in module.log_prob_options(cond)


def test_mined_plans_are_pinned():
    from prefdiff.testing import tiny_scheduler

    denoiser = trainer(pin=True).denoiser.eval()
    mined = mine(denoiser, tiny_scheduler(), lambda x, c: (x.mean(dim=(1, 2)), {}), list(layouts()),
                 per_condition=3, num_steps=3, eta=1.0, seed=0)
    for samples, cond in zip(mined.samples, layouts()):
        assert torch.equal(ends(samples), planned(cond[None]).expand(3, -1, -1))


def test_the_benchmark_evaluates_pinned_plans(tmp_path):
    from dataclasses import replace

    from prefdiff.bench.runner import Benchmark
    from prefdiff.testing import tiny_scheduler

    runner = Benchmark(replace(robotics_recipe(quick=True), prepare=None, num_steps=3), cache=tmp_path)
    assert runner.recipe.conditioner_options["pin_endpoints"]  # the recipe plans as a user's planner does
    denoiser = trainer(pin=True).denoiser
    samples = runner.generate(denoiser, tiny_scheduler(), layouts(), torch.randn(2, 4, 32))
    assert torch.equal(ends(samples), planned(layouts()))
