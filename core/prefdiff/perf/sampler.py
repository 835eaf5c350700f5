"""Figure 2: prefdiff's DDIM with per-step log-probs over a plain diffusers DDIM loop.

Arm A is :func:`prefdiff.sampling.sample` with ``return_trajectory=True``
(latents, log-probs and means of every step kept). Arm B is the loop of the
diffusers documentation: ``scheduler.step(eps, t, x, eta=...)`` at the same
timesteps. Same model, noise, batch and eta; no gradients in either.
"""

from __future__ import annotations

import torch

from prefdiff.perf.common import Figure, check, class_conditions, interleaved, median, timed_block, unet_preset
from prefdiff.sampling import sample

TARGET = "<= 1.05"


def diffusers_loop(model, scheduler, noise, cond, num_steps: int, eta: float, generator) -> torch.Tensor:
    """DDIM as diffusers' own pipelines run it."""
    scheduler.set_timesteps(num_steps)
    x = noise
    for t in scheduler.timesteps:
        eps = model(x, t.expand(x.shape[0]), cond)
        x = scheduler.step(eps, t, x, eta=eta, generator=generator).prev_sample
    return x


def run(quick: bool = False, log=print) -> Figure:
    from prefdiff.models import build_denoiser
    from prefdiff.schedulers import build_scheduler

    torch.manual_seed(0)
    preset = unet_preset(quick)
    model = build_denoiser(preset).eval()
    scheduler = build_scheduler()
    batch, steps, eta = (8, 4, 1.0) if quick else (16, 20, 1.0)
    rounds = 3 if quick else 8
    size = preset["sample_size"]
    noise = torch.randn((batch, 3, size, size), generator=torch.Generator().manual_seed(0))
    cond = class_conditions(batch)

    @torch.no_grad()
    def prefdiff_step(i: int) -> None:
        sample(model, scheduler, noise, cond, num_steps=steps, eta=eta,
               generator=torch.Generator().manual_seed(i), return_trajectory=True)

    @torch.no_grad()
    def diffusers_step(i: int) -> None:
        diffusers_loop(model, scheduler, noise, cond, steps, eta, torch.Generator().manual_seed(i))

    prefdiff_step(-1), diffusers_step(-1)  # warm-up, not timed
    times = interleaved({"prefdiff": lambda: timed_block(prefdiff_step, 1, warmup=0),
                         "diffusers": lambda: timed_block(diffusers_step, 1, warmup=0)}, rounds)
    a, b = median(times["prefdiff"]), median(times["diffusers"])
    # Calls run in adjacent pairs; the median of the paired ratios cancels slow machine swings.
    ratio = round(median([x / y for x, y in zip(times["prefdiff"], times["diffusers"])]), 4)
    details = {"prefdiff_s": round(a, 4), "diffusers_s": round(b, 4), "ratio_of_medians": round(a / b, 4),
               "batch": batch, "steps": steps, "eta": eta, "resolution": size,
               "repeats_each": len(times["diffusers"])}
    log(f"  figure 2: {ratio} {details}")
    return Figure(2, "DDIM with per-step log-probs / plain diffusers DDIM loop", ratio, TARGET,
                  check(ratio, TARGET), details=details)
