"""What the DDIM and the flow-matching samplers share: the output, Gaussian step log-probs, noise, guidance."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

Model = Callable[[Tensor, Tensor, Any], Tensor]


@dataclass
class SampleOutput:
    """What :func:`prefdiff.sampling.sample` returns."""

    samples: Tensor
    """x_0, ``[B, ...]``; carries the graph of the steps run with grad."""
    timesteps: Tensor
    """``[S]`` the timesteps used, in denoising order (high to low)."""
    latents: Tensor | None
    """``[B, S+1, ...]`` x_T .. x_0, detached; with ``return_trajectory=True``."""
    log_probs: Tensor | None
    """``[B, S]`` log-prob of each transition taken, detached; with ``return_trajectory=True``."""
    means: Tensor | None = None
    """``[B, S, ...]`` the mean of each transition, detached; with ``return_trajectory=True``."""
    stochastic: Tensor | None = None
    """``[S]`` bool: the steps that drew noise (a log-prob to train); a deterministic step,
    DDIM's last onto ``final_alpha_cumprod = 1`` or an ODE step, has log-prob 0 and no gradient."""
    noise_std: Tensor | None = None
    """``[S]`` float, on the samples' device: the standard deviation of each step's noise (0 where
    ``stochastic`` is False). A step's log-prob gradient grows as its std shrinks
    (``--model.min_step_std`` leaves the quietest out)."""


def concat_outputs(outputs: list[SampleOutput]) -> SampleOutput:
    """One output for chunks of a batch sampled with the same schedule, joined along the batch."""
    if len(outputs) == 1:
        return outputs[0]
    join = lambda name: None if getattr(outputs[0], name) is None else torch.cat(  # noqa: E731
        [getattr(o, name) for o in outputs])
    first = outputs[0]
    return SampleOutput(samples=join("samples"), timesteps=first.timesteps, latents=join("latents"),
                        log_probs=join("log_probs"), means=join("means"), stochastic=first.stochastic,
                        noise_std=first.noise_std)


def gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor, keep_mask: Tensor | None = None) -> Tensor:
    """log N(x; mean, std^2) averaged over the non-batch dims; 0 where std == 0.

    With ``keep_mask`` (1 where a sampler replaced the draw by known values: inpainting's kept
    region, a planner's pinned start and goal), the average runs over the rest only: the kept
    entries were not drawn from the model, so they are no part of its policy's log-prob.
    """
    deterministic = std == 0
    safe_std = torch.where(deterministic, torch.ones_like(std), std)
    log_prob = -((x - mean) ** 2) / (2 * safe_std**2) - safe_std.log() - 0.5 * math.log(2 * math.pi)
    log_prob = torch.where(deterministic, torch.zeros_like(log_prob), log_prob)
    if keep_mask is None:
        return log_prob.reshape(x.shape[0], -1).mean(dim=1)
    drawn = (1 - keep_mask).to(log_prob.dtype).expand_as(log_prob).reshape(x.shape[0], -1)
    return (log_prob.reshape(x.shape[0], -1) * drawn).sum(dim=1) / drawn.sum(dim=1).clamp(min=1)


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype a sampler step's arithmetic runs in: ``x``'s, and never below float32 (a model in
    bfloat16 or float16 gets float32 around its calls, as diffusers' schedulers give it)."""
    return torch.promote_types(x.dtype, torch.float32)


def randn_like(like: Tensor, generator: torch.Generator | None) -> Tensor:
    # Draw on the generator's device so one CPU seed reproduces the same noise on any device.
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def predict_velocity(model: Model, x: Tensor, t: Tensor, cond: Any, guidance_scale: float = 1.0,
                     uncond: Any = None) -> Tensor:
    """The model's own output at ``(x_t, t)`` (noise, v, or flow velocity), guided.

    Classifier-free guidance (Ho & Salimans 2022, eq. 6 with w = guidance_scale - 1):
    out = out(0) + guidance_scale * (out(c) - out(0)).
    """
    if guidance_scale == 1:
        out = model(x, t, cond)
    else:
        if torch.is_tensor(cond) and torch.is_tensor(uncond) and cond.shape == uncond.shape:
            pair = torch.cat([uncond, cond])
        elif isinstance(cond, list) and isinstance(uncond, list):
            pair = [*uncond, *cond]  # prompts: one batch of both
        else:
            pair = None
        if pair is not None:
            out_uncond, out_cond = model(torch.cat([x, x]), torch.cat([t, t]), pair).chunk(2)
        else:
            out_uncond, out_cond = model(x, t, uncond), model(x, t, cond)
        out = out_uncond + guidance_scale * (out_cond - out_uncond)
    return out


def check_guidance(guidance_scale: float, uncond: Any) -> None:
    if guidance_scale != 1 and uncond is None:
        raise ValueError(f"guidance_scale={guidance_scale} needs uncond (the unconditional cond)")


TRUNCATIONS = ("last_k", "random_k", "per_step")
"""How :func:`grad_steps` picks the steps whose model calls keep gradients."""


def grad_steps(num_steps: int, grad_last_k: int, truncation: str, generator) -> list[bool]:
    """Which of ``num_steps`` steps backpropagate into the model: one flag a step.

    * ``last_k``: the last K = ``grad_last_k`` steps (DRaFT-K, Clark et al. 2023); -1 all, 0 none.
    * ``random_k``: the last K, K drawn uniformly from 1..``grad_last_k`` on each call
      (AlignProp's randomized truncated backpropagation, Prabhudesai et al. 2023).
    * ``per_step``: step ``i`` keeps its gradient when a fresh draw ``r_i``, uniform on
      ``num_steps - K .. num_steps - 1``, is at most ``i``: TRL's ``AlignPropTrainer``
      (``truncated_rand_backprop_minmax``). Each step has the chance it has under ``random_k``,
      ``(i - num_steps + K + 1) / K``, but the steps are drawn independently, so the kept
      steps need not be contiguous.

    Every draw comes from ``generator``, before the loop's first noise draw.
    """
    if grad_last_k < -1:
        raise ValueError(f"grad_last_k must be -1 (all steps), 0 (none) or a step count, got {grad_last_k}")
    if truncation not in TRUNCATIONS:
        raise ValueError(f"truncation must be one of {', '.join(TRUNCATIONS)}, got '{truncation}'")
    k = num_steps if grad_last_k == -1 else min(grad_last_k, num_steps)
    if truncation != "last_k" and k == 0:
        raise ValueError(f"truncation='{truncation}' needs grad_last_k != 0")
    device = generator.device if generator is not None else "cpu"
    if truncation == "per_step":
        r = torch.randint(num_steps - k, num_steps, (num_steps,), generator=generator, device=device).tolist()
        return [i >= r_i for i, r_i in enumerate(r)]
    if truncation == "random_k":
        k = int(torch.randint(1, k + 1, (1,), generator=generator, device=device))
    return [i >= num_steps - k for i in range(num_steps)]
