"""Sampling with the hooks preference alignment needs: DDIM, and flow matching.

One entry point per job, whatever the scheduler family: :func:`sample` runs
the denoising loop (with per-step log-probs, gradients through the last steps,
inpainting's known region), :func:`step_log_prob` recomputes a stored step's
log-probability under the current model, :func:`sdedit` and :func:`inpaint`
edit. The family comes from the scheduler: a diffusers ``DDIMScheduler``
(:mod:`prefdiff.sampling.ddim`, epsilon or v-prediction) or a
``FlowMatchEulerDiscreteScheduler`` (:mod:`prefdiff.sampling.flow`: the Euler
ODE, Flow-GRPO's SDE, CPS). In a flow call ``eta`` is the SDE noise level.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from prefdiff.sampling.common import (Model, SampleOutput, concat_outputs, gaussian_log_prob, predict_velocity,
                                      randn_like)
from prefdiff.sampling.ddim import (add_noise, ddim_step, ddim_step_log_prob, ddim_timesteps, predict_noise,
                                    predict_noise_and_x0, predict_x0, sample_ddim, to_epsilon)
from prefdiff.sampling.ddim import training_target as ddim_training_target
from prefdiff.sampling.flow import (SDE_KINDS, add_flow_noise, flow_step, flow_step_log_prob, flow_timesteps, is_flow,
                                    noise_level_of, predict_x0_flow, sample_flow, shifted)

__all__ = [
    "SDE_KINDS",
    "Model",
    "SampleOutput",
    "add_flow_noise",
    "add_noise",
    "concat_outputs",
    "ddim_step",
    "ddim_timesteps",
    "edit_start_step",
    "flow_step",
    "flow_timesteps",
    "gaussian_log_prob",
    "inpaint",
    "is_flow",
    "noise_level_of",
    "noised",
    "predict_noise",
    "predict_sample",
    "predict_velocity",
    "predict_x0",
    "randn_like",
    "sample",
    "sdedit",
    "shifted",
    "step_log_prob",
    "to_epsilon",
    "training_target",
]


def sample(model: Model, scheduler, noise: Tensor, cond: Any, *, num_steps: int = 20, eta: float = 1.0,
           sde: str | None = None, sde_window: tuple[int, int] | None = None, clip_sample: float | None = None,
           **options: Any) -> SampleOutput:
    """Run the denoising loop of ``scheduler``'s family from ``noise`` to x_0.

    The options are :func:`prefdiff.sampling.ddim.sample_ddim`'s (``guidance_scale``, ``uncond``,
    ``generator``, ``return_trajectory``, ``grad_last_k``, ``truncation``, ``checkpoint``,
    ``known``, ``keep_mask``, ``start_step``). DDIM also takes ``clip_sample``; flow matching
    takes ``sde`` (``sde`` or ``cps``) and ``sde_window`` (the stochastic steps), with ``eta``
    the SDE noise level. An option of the other family is an error.
    """
    if is_flow(scheduler):
        if clip_sample is not None:
            raise ValueError("clip_sample is a DDIM option; the flow-matching sampler does not take it")
        return sample_flow(model, scheduler, noise, cond, num_steps=num_steps, eta=eta, sde=sde or "sde",
                           sde_window=sde_window, **options)
    if sde is not None or sde_window is not None:
        raise ValueError("sde and sde_window are flow-matching options; this is a DDIM scheduler")
    return sample_ddim(model, scheduler, noise, cond, num_steps=num_steps, eta=eta, clip_sample=clip_sample, **options)


def step_log_prob(model: Model, scheduler, x_t: Tensor, t: int | Tensor, x_prev: Tensor, cond: Any, *,
                  eta: float = 1.0, guidance_scale: float = 1.0, uncond: Any = None,
                  clip_sample: float | None = None, sde: str = "sde",
                  keep_mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Log-prob of a stored step ``x_t -> x_prev`` under the current model, with grad (DDPO's recomputation).

    Returns ``(log_prob [B], mean, std)``; the scheduler must still be set to the step
    count the trajectory was sampled with, and the options must match the sampling call
    (``keep_mask`` too: the sampler's kept region is no part of the log-prob).
    """
    if is_flow(scheduler):
        return flow_step_log_prob(model, scheduler, x_t, t, x_prev, cond, eta=eta, sde=sde,
                                  guidance_scale=guidance_scale, uncond=uncond, keep_mask=keep_mask)
    return ddim_step_log_prob(model, scheduler, x_t, t, x_prev, cond, eta=eta, guidance_scale=guidance_scale,
                              uncond=uncond, clip_sample=clip_sample, keep_mask=keep_mask)


def training_target(scheduler, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """What the network learns to predict at ``noised(scheduler, x0, noise, t)``: the noise, v, or
    for flow matching the velocity ``eps - x_0``."""
    if is_flow(scheduler):
        return noise - x0
    return ddim_training_target(scheduler, x0, noise, t)


def noised(scheduler, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """``x_t`` for training at model timesteps ``t``: ``q(x_t | x_0)``, or ``(1 - s) x_0 + s eps``."""
    if is_flow(scheduler):
        return add_flow_noise(x0, noise, noise_level_of(scheduler, t).to(x0.device))
    return scheduler.add_noise(x0, noise, t)


def predict_sample(model: Model, scheduler, x_t: Tensor, t: Tensor, cond: Any, guidance_scale: float = 1.0,
                   uncond: Any = None) -> Tensor:
    """The x_0 the model predicts in one step from ``(x_t, t)`` (ReFL's one-step prediction)."""
    if is_flow(scheduler):
        v = predict_velocity(model, x_t, t, cond, guidance_scale, uncond)
        return predict_x0_flow(x_t, v, noise_level_of(scheduler, t).to(x_t.device))
    eps, x0 = predict_noise_and_x0(model, scheduler, x_t, t, cond, guidance_scale, uncond)
    return predict_x0(scheduler, x_t, eps, t) if x0 is None else x0.to(torch.promote_types(x_t.dtype, eps.dtype))


# ------------------------------------------------------------- editing


def edit_start_step(scheduler, num_steps: int, strength: float) -> int:
    """First step of an edit that runs the last ``strength`` fraction of the ``num_steps`` schedule.

    The count is diffusers' img2img pipelines', so that ``strength`` starts an edit at the same step
    there as here: Stable Diffusion's (and SDXL's) ``get_timesteps`` runs ``int(strength * num_steps)``
    steps; SD3's and FLUX's start at ``int(num_steps - strength * num_steps)``, which runs one more
    whenever ``strength * num_steps`` has a fraction (0.35 of 10 runs 4 there, 3 here), float rounding
    included (0.28 of 25 is 7.000000000000001: 8 steps there, 7 in SD). Where diffusers would run no
    step at all, one runs.
    """
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    if is_flow(scheduler):
        start = int(max(num_steps - num_steps * strength, 0))
    else:
        start = num_steps - min(int(num_steps * strength), num_steps)
    return min(start, num_steps - 1)


def _edit_start(scheduler, x0: Tensor, noise: Tensor, num_steps: int, start_step: int) -> Tensor:
    # From the first timestep the start is pure noise, so x0 is ignored exactly,
    # as in unconditional sampling; otherwise noise x0 with q(x_t | x_0) (SDEdit),
    # for flow matching x_s = (1 - s) x0 + s eps.
    if start_step == 0:
        return noise
    if is_flow(scheduler):
        return add_flow_noise(x0, noise, flow_timesteps(scheduler, num_steps)[1][start_step])
    return add_noise(scheduler, x0, ddim_timesteps(scheduler, num_steps)[start_step], noise)


def sdedit(
    model: Model,
    scheduler,
    x0: Tensor,
    cond: Any,
    strength: float,
    *,
    num_steps: int = 20,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    guidance_scale: float = 1.0,
    uncond: Any = None,
) -> Tensor:
    """Edit ``x0`` towards ``cond`` by noising and denoising it (SDEdit, Meng et al. 2022).

    :param x0: the sample to edit, ``[B, ...]``.
    :param strength: fraction in (0, 1] of the ``num_steps`` schedule to run:
        the steps from :func:`edit_start_step` on (diffusers' img2img count). Small
        keeps ``x0`` close; 1 starts from pure noise and ignores ``x0``.

    The start noise and any step noise come from ``generator``. Returns the edited x_0.
    """
    start_step = edit_start_step(scheduler, num_steps, strength)
    x_t = _edit_start(scheduler, x0, randn_like(x0, generator), num_steps, start_step)
    return sample(
        model,
        scheduler,
        x_t,
        cond,
        num_steps=num_steps,
        eta=eta,
        guidance_scale=guidance_scale,
        uncond=uncond,
        generator=generator,
        start_step=start_step,
    ).samples


def inpaint(
    model: Model,
    scheduler,
    known: Tensor,
    keep_mask: Tensor,
    cond: Any,
    *,
    num_steps: int = 20,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    strength: float = 1.0,
    guidance_scale: float = 1.0,
    uncond: Any = None,
) -> Tensor:
    """Fill in the region where ``keep_mask`` is 0, keeping ``known`` where it is 1.

    :param known: ``[B, ...]``; its kept region is returned exactly.
    :param keep_mask: 1 = keep, broadcastable to ``known``.
    :param noise: the start noise; drawn from ``generator`` when None.
    :param strength: 1 starts from pure noise; below 1 starts from ``known``
        noised as in :func:`sdedit`, so the filled region stays close to it.

    Uses :func:`sample` with ``known=`` and ``keep_mask=`` (RePaint-style replacement).
    """
    start_step = edit_start_step(scheduler, num_steps, strength)
    if noise is None:
        noise = randn_like(known, generator)
    x_t = _edit_start(scheduler, known, noise, num_steps, start_step)
    return sample(
        model,
        scheduler,
        x_t,
        cond,
        num_steps=num_steps,
        eta=eta,
        guidance_scale=guidance_scale,
        uncond=uncond,
        generator=generator,
        known=known,
        keep_mask=keep_mask,
        start_step=start_step,
    ).samples
