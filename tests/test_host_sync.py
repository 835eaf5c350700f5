"""The sampling loops never wait on the device inside the loop.

On a GPU every ``bool(tensor)``, ``.item()`` or ``.tolist()`` blocks the host until the
queued kernels finish, so a per-step one serialises launch and compute (issue 19). On the
CPU there is nothing to wait for, so these tests count the conversions instead: a loop of
8 steps must make no more of them than a loop of 2.
"""

from contextlib import contextmanager

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from prefdiff import sampling

SYNCS = ("__bool__", "item", "tolist", "__int__", "__float__", "__index__")


@contextmanager
def counted_syncs():
    """Count every tensor-to-Python conversion made while the block runs."""
    calls = []
    originals = {name: getattr(torch.Tensor, name) for name in SYNCS}

    def counting(name):
        def wrapper(self, *args, **kwargs):
            calls.append(name)
            return originals[name](self, *args, **kwargs)
        return wrapper

    for name in SYNCS:
        setattr(torch.Tensor, name, counting(name))
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def syncs(scheduler, num_steps, **kwargs):
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    known = torch.zeros_like(noise)
    keep = torch.zeros_like(noise)
    keep[..., 0] = 1
    with counted_syncs() as calls:
        sampling.sample(lambda x, t, c: 0.1 * x, scheduler, noise, None, num_steps=num_steps,
                        generator=torch.Generator().manual_seed(1), return_trajectory=True,
                        known=known, keep_mask=keep, **kwargs)
    return len(calls)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_loop_makes_no_per_step_host_sync(eta):
    scheduler = DDIMScheduler(num_train_timesteps=1000, clip_sample=False)
    assert syncs(scheduler, 8, eta=eta) == syncs(scheduler, 2, eta=eta)


@pytest.mark.parametrize("sde", ["sde", "cps"])
def test_flow_loop_makes_no_per_step_host_sync(sde):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    assert syncs(scheduler, 8, eta=0.7, sde=sde) == syncs(scheduler, 2, eta=0.7, sde=sde)


def test_the_counter_sees_a_per_step_sync():
    # The guard itself: a loop that converts a tensor on every step is counted once per step.
    def loop(n):
        with counted_syncs() as calls:
            for _ in range(n):
                bool((torch.ones(2) > 0).all())
        return len(calls)

    assert loop(8) - loop(2) == 6


@pytest.mark.parametrize("scheduler", [DDIMScheduler(num_train_timesteps=1000, clip_sample=False),
                                       FlowMatchEulerDiscreteScheduler(shift=3.0)], ids=["ddim", "flow"])
def test_log_prob_recomputation_makes_no_per_step_host_sync(scheduler):
    # DDPO's and GRPO's update: every stored step's log-prob again, under the current model.
    def recompute(num_steps):
        noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
        out = sampling.sample(lambda x, t, c: 0.1 * x, scheduler, noise, None, num_steps=num_steps, eta=0.7,
                              generator=torch.Generator().manual_seed(1), return_trajectory=True)
        with counted_syncs() as calls:
            for j in range(num_steps):
                sampling.step_log_prob(lambda x, t, c: 0.1 * x, scheduler, out.latents[:, j], out.timesteps[j],
                                       out.latents[:, j + 1], None, eta=0.7)
        return len(calls)

    assert recompute(8) == recompute(2)
