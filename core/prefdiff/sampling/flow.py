"""Flow-matching sampling written out step by step: the Euler ODE, Flow-GRPO's SDE and CPS.

Rectified flow (Liu et al. 2023; Lipman et al. 2023) interpolates
``x_s = (1 - s) x_0 + s eps`` for a noise level s in [0, 1], and the network
predicts the velocity ``v = eps - x_0`` (the convention of SD3, FLUX and
diffusers' ``FlowMatchEulerDiscreteScheduler``, whose ``timesteps`` are
``1000 s`` and whose ``sigmas`` are the s of each step, shift included).

Going from s to s' < s (``ds = s' - s < 0``):

- **ODE** (Euler): ``x' = x + ds v``; deterministic, log-prob 0.
- **SDE** (Flow-GRPO, Liu et al. 2025, eq. 8): the reverse SDE with the ODE's
  marginals, ``dx = [v + g^2 / (2 s) (x + (1 - s) v)] ds + g dw`` with
  ``g = a sqrt(s / (1 - s))`` (at s = 1, ``1 - s'`` in the denominator, as flow_grpo)
  and ``a`` the noise level; one Euler-Maruyama
  step is Gaussian with mean ``x + [v + g^2/(2s) (x + (1-s) v)] ds`` and
  standard deviation ``g sqrt(-ds)``.
- **CPS** (coefficients-preserving sampling, Wang et al. 2025): from the
  predicted ``x_0 = x - s v`` and ``eps = x + (1 - s) v``, the mean is
  ``(1 - s') x_0 + s' cos(a pi / 2) eps`` and the standard deviation
  ``s' sin(a pi / 2)``, so the sample keeps the coefficients of ``x_{s'}``. Its step
  onto ``s' = 0`` draws nothing: it is the Euler step, and not marked stochastic.

A window of stochastic steps with ODE steps elsewhere (Flow-GRPO-Fast,
MixGRPO) makes the policy-gradient update cheaper: only the window's steps
have a log-probability to train. Log-probs are Gaussian densities averaged
over the non-batch dims, as the DDIM sampler's (ddpo-pytorch, flow_grpo).

For CPS this departs from flow_grpo's code, which scores a CPS step by
``-(x' - mean)^2`` averaged over dims, without the density's ``1 / (2 std^2)``
and constants. That factor changes from step to step (``std = s' sin(a pi/2)``
shrinks towards the last steps), so it does not cancel in a PPO ratio: with
the density, the low-noise steps' ratios move much further per update
(6300 times flow_grpo's at s' = 0.01 and a = 0.7). prefdiff keeps the density, so
that a ratio is the true likelihood ratio of the step; a ``clip_range`` tuned
for flow_grpo's CPS does not carry over.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.utils.checkpoint
from torch import Tensor

from prefdiff.sampling.common import (SampleOutput, check_guidance, compute_dtype, gaussian_log_prob,
                                      grad_steps, predict_velocity, randn_like)

SDE_KINDS = ("sde", "cps")


def is_flow(scheduler) -> bool:
    """Whether ``scheduler`` is a flow-matching one (diffusers' ``FlowMatchEulerDiscreteScheduler``)."""
    return any(c.__name__ == "FlowMatchEulerDiscreteScheduler" for c in type(scheduler).__mro__)


def flow_timesteps(scheduler, num_steps: int) -> tuple[Tensor, Tensor]:
    """Set ``scheduler`` to ``num_steps`` steps; return its ``timesteps [S]`` and ``sigmas [S + 1]`` (last 0)."""
    scheduler.set_timesteps(num_steps)
    return scheduler.timesteps.clone(), scheduler.sigmas.clone()


def noise_level_of(scheduler, t: Tensor | float) -> Tensor:
    """The noise level s of a model timestep ``t = 1000 s`` (``num_train_timesteps`` s)."""
    return torch.as_tensor(t, dtype=torch.float32) / scheduler.config.num_train_timesteps


def add_flow_noise(x0: Tensor, noise: Tensor, s: Tensor) -> Tensor:
    """``x_s = (1 - s) x_0 + s eps`` with ``s`` per row ``[B]`` or a scalar."""
    s = torch.as_tensor(s, device=x0.device, dtype=compute_dtype(x0)).reshape(-1, *([1] * (x0.dim() - 1)))
    return ((1 - s) * x0 + s * noise).to(torch.promote_types(x0.dtype, noise.dtype))


def predict_x0_flow(x_t: Tensor, v: Tensor, s: Tensor) -> Tensor:
    """The x_0 a velocity implies at noise level s: ``x_0 = x_s - s v``."""
    s = torch.as_tensor(s, device=x_t.device, dtype=compute_dtype(x_t)).reshape(-1, *([1] * (x_t.dim() - 1)))
    return (x_t - s * v).to(torch.promote_types(x_t.dtype, v.dtype))


def check_noise_level(noise_level: float) -> None:
    """The SDE noise level ``a`` must be in [0, 1] (0 is the ODE)."""
    if not 0.0 <= noise_level <= 1.0:
        raise ValueError(f"the SDE noise level must be in [0, 1], got {noise_level}")


def flow_step(
    v: Tensor,
    s: Tensor,
    s_prev: Tensor,
    x: Tensor,
    noise_level: float,
    *,
    kind: str = "sde",
    prev_sample: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One step from noise level ``s`` to ``s_prev < s``; returns ``(x_prev, log_prob, mean, std)``.

    :param v: the velocity at ``(x, s)``.
    :param s, s_prev: scalars or ``[B]`` noise levels.
    :param noise_level: ``a``; 0 takes the Euler ODE step.
    :param kind: ``sde`` (Flow-GRPO) or ``cps``.
    :param prev_sample: a stored ``x_prev``: nothing is drawn, its log-prob is returned.

    ``log_prob`` is ``[B]`` with ``x_prev`` held constant (gradients flow through the mean),
    and 0 for a deterministic step; ``std`` is ``[B, 1, ...]``. The step runs in float32 at
    least, as diffusers' ``FlowMatchEulerDiscreteScheduler.step`` does: in bfloat16 the noise
    levels near 1 are 0.004 apart, as coarse as a step of a 50-step schedule is long.
    ``x_prev`` comes back in the dtype ``x`` and ``v`` promote to.
    """
    if kind not in SDE_KINDS:
        raise ValueError(f"kind must be one of {SDE_KINDS}, got {kind!r}")
    check_noise_level(noise_level)
    dtype = torch.promote_types(x.dtype, v.dtype)  # the result's, as the inputs promote
    x = x.to(torch.promote_types(dtype, torch.float32))
    v = v.to(x.dtype)
    shape = (-1, *([1] * (x.dim() - 1)))
    s = torch.as_tensor(s, device=x.device, dtype=x.dtype).reshape(shape).expand(x.shape[0], *shape[1:])
    s_prev = torch.as_tensor(s_prev, device=x.device, dtype=x.dtype).reshape(shape).expand_as(s)
    ds = s_prev - s
    if noise_level == 0:
        mean, std = x + ds * v, torch.zeros_like(s)
    elif kind == "sde":
        # g^2 = a^2 s / (1 - s); at s = 1 it is infinite, so the first step divides by
        # 1 - s' instead, as flow_grpo's sampler does.
        g2 = noise_level ** 2 * s / torch.where(s >= 1, 1 - s_prev, 1 - s)
        mean = x + (v + g2 / (2 * s) * (x + (1 - s) * v)) * ds
        std = (g2 * (-ds)).clamp(min=0).sqrt()
    else:
        x0, eps = x - s * v, x + (1 - s) * v
        angle = noise_level * math.pi / 2
        mean = (1 - s_prev) * x0 + s_prev * math.cos(angle) * eps
        std = s_prev * math.sin(angle)
    if prev_sample is None:
        # Decided on the host, as ddim_step does: a step with noise_level > 0 draws its noise even where
        # std is 0 (CPS's last step), which adds exactly 0, so the loop never waits on the device.
        if noise_level > 0:
            noise = randn_like(x, generator) if noise is None else noise
            prev_sample = mean + std * noise
        else:
            prev_sample = mean
        prev_sample = prev_sample.to(dtype)
    return prev_sample, gaussian_log_prob(prev_sample.detach().to(mean.dtype), mean, std), mean, std


def shifted(scheduler, s: Tensor) -> Tensor:
    """Noise levels ``s`` under the scheduler's static shift, ``shift s / (1 + (shift - 1) s)`` (Esser et
    al. 2024, "resolution-dependent shifting"), as ``FlowMatchEulerDiscreteScheduler`` shifts its
    training sigmas; unchanged where it shifts dynamically (FLUX: by the image's size, when sampling)."""
    config = scheduler.config
    if config.get("use_dynamic_shifting", False) or config.shift == 1:
        return s
    return config.shift * s / (1 + (config.shift - 1) * s)


def stochastic_steps(num_steps: int, noise_level: float, window: tuple[int, int] | None) -> list[bool]:
    """Which of the ``num_steps`` steps are stochastic: all (``window`` None) or ``window = (first, end)``."""
    if noise_level == 0:
        return [False] * num_steps
    if window is None:
        return [True] * num_steps
    first, end = window
    if not 0 <= first < end <= num_steps:
        raise ValueError(f"the SDE window must satisfy 0 <= first < end <= {num_steps}, got {window}")
    return [first <= i < end for i in range(num_steps)]


def sample_flow(
    model,
    scheduler,
    noise: Tensor,
    cond: Any,
    *,
    num_steps: int = 20,
    eta: float = 0.0,
    sde: str = "sde",
    sde_window: tuple[int, int] | None = None,
    guidance_scale: float = 1.0,
    uncond: Any = None,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
    grad_last_k: int = 0,
    truncation: str = "last_k",
    checkpoint: bool = False,
    known: Tensor | None = None,
    keep_mask: Tensor | None = None,
    start_step: int = 0,
):
    """The flow-matching loop from ``noise`` (x at ``s = sigmas[start_step]``) to x_0.

    Arguments as :func:`prefdiff.sampling.sample`, with ``eta`` the SDE noise level
    ``a`` (0: the Euler ODE), ``sde`` its kind (``sde`` or ``cps``) and ``sde_window``
    the steps that are stochastic (default: all). ``SampleOutput.stochastic`` marks them.
    """
    check_guidance(guidance_scale, uncond)
    check_noise_level(eta)
    if (known is None) != (keep_mask is None):
        raise ValueError("known and keep_mask must be given together")
    if not 0 <= start_step < num_steps:
        raise ValueError(f"start_step must be in [0, {num_steps}), got {start_step}")
    timesteps, sigmas = flow_timesteps(scheduler, num_steps)
    noisy = stochastic_steps(num_steps, eta, sde_window)
    if sde == "cps":  # its std is s' sin(a pi / 2): the step onto s' = 0 draws nothing, an Euler step
        noisy = [n and s_next > 0 for n, s_next in zip(noisy, sigmas[1:].tolist())]  # one read of the schedule
    noisy = noisy[start_step:]
    timesteps, sigmas = timesteps[start_step:].to(noise.device), sigmas[start_step:].to(noise.device)
    model_grad = grad_steps(len(timesteps), grad_last_k, truncation, generator)
    first_grad_step = model_grad.index(True) if any(model_grad) else len(timesteps)

    x = noise
    latents, log_probs, means, stds = [x.detach()], [], [], []
    for i, t in enumerate(timesteps):
        t_batch = t.expand(x.shape[0])
        with_grad = i >= first_grad_step
        if i == first_grad_step:
            x = x.detach()
        with torch.set_grad_enabled(with_grad):
            if model_grad[i] and checkpoint:
                v = torch.utils.checkpoint.checkpoint(predict_velocity, model, x, t_batch, cond, guidance_scale,
                                                      uncond, use_reentrant=False)
            else:
                with torch.set_grad_enabled(model_grad[i]):
                    v = predict_velocity(model, x, t_batch, cond, guidance_scale, uncond)
            x, log_prob, mean, std = flow_step(v, sigmas[i], sigmas[i + 1], x, eta if noisy[i] else 0.0, kind=sde,
                                               generator=generator)
            stds.append(std.reshape(-1)[0])  # one number per step, left on the device
            if known is not None:
                last = i == len(timesteps) - 1
                known_now = known if last else add_flow_noise(known, randn_like(x, generator), sigmas[i + 1])
                x = keep_mask * known_now + (1 - keep_mask) * x
                log_prob = gaussian_log_prob(x.detach(), mean, std, keep_mask)
        if return_trajectory:
            latents.append(x.detach())
            log_probs.append(log_prob.detach())
            means.append(mean.detach())
    stochastic = torch.tensor(noisy, dtype=torch.bool)
    noise_std = torch.stack(stds).float()  # left on the device: the loop still never waits on it
    if not return_trajectory:
        return SampleOutput(samples=x, timesteps=timesteps, latents=None, log_probs=None, stochastic=stochastic,
                            noise_std=noise_std)
    return SampleOutput(samples=x, timesteps=timesteps, latents=torch.stack(latents, dim=1),
                        log_probs=torch.stack(log_probs, dim=1), means=torch.stack(means, dim=1),
                        stochastic=stochastic, noise_std=noise_std)


def flow_step_log_prob(model, scheduler, x_t: Tensor, t: Tensor, x_prev: Tensor, cond: Any, *, eta: float,
                       sde: str = "sde", guidance_scale: float = 1.0, uncond: Any = None,
                       keep_mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Log-prob of a stored flow step ``x_t -> x_prev`` under the current model, with grad.

    The scheduler must still be set to the step count the trajectory was sampled with
    (its ``sigmas`` give the step from ``t``'s noise level to the next). ``keep_mask``: the
    region the sampler replaced by known values, left out as the sampler leaves it out.
    """
    timesteps = scheduler.timesteps.to(x_t.device)
    t = torch.as_tensor(t, device=x_t.device, dtype=timesteps.dtype)
    # Each row's step (a [B] t may mix steps, as DDIM's step_log_prob allows); stays on the device.
    index = torch.argmin((timesteps[None, :] - t.reshape(-1, 1)).abs(), dim=1)
    sigmas = scheduler.sigmas.to(x_t.device)
    s, s_prev = sigmas[index], sigmas[index + 1]
    v = predict_velocity(model, x_t, t.expand(x_t.shape[0]) if t.ndim == 0 else t, cond, guidance_scale, uncond)
    _, log_prob, mean, std = flow_step(v, s, s_prev, x_t, eta, kind=sde, prev_sample=x_prev)
    if keep_mask is not None:
        log_prob = gaussian_log_prob(x_prev.detach(), mean, std, keep_mask)
    return log_prob, mean, std
