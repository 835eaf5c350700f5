"""DDIM sampling written out step by step, with the hooks preference alignment needs.

One loop serves every trainer: DDPO/DPOK/D3PO keep the trajectory and the
log-probability of each transition, DRaFT/AlignProp/ReFL backpropagate a reward
through the last denoising steps, and SDEdit and inpainting run the same loop
from a partly noised start. The update is DDIM eq. 12 (Song et al. 2021),
spelled out in :func:`ddim_step`; the diffusers ``DDIMScheduler`` supplies only
the noise schedule (``alphas_cumprod``, ``final_alpha_cumprod``) and the
timestep spacing.

Conventions:

- ``model(x_t, t, cond)`` predicts the noise, or v for a scheduler whose
  ``prediction_type`` is ``v_prediction`` (:func:`to_epsilon` converts); ``t``
  is a LongTensor ``[B]`` and ``cond`` is passed through untouched (tensor,
  dict, list of prompts or None).
- Tensors are ``[B, ...]``: images ``[B, C, H, W]`` and trajectories
  ``[B, C, T]`` go through the same code.
- The scheduler's own ``clip_sample`` and ``thresholding`` settings are not
  used; pass ``clip_sample=`` here to clamp the predicted x_0.
- :func:`ddim_timesteps` (called by :func:`sample`) sets
  ``scheduler.num_inference_steps``, which fixes the step size ``t -> t_prev``
  that :func:`ddim_step` and :func:`step_log_prob` use afterwards.
- With ``timestep_spacing="leading"``, ``steps_offset=0`` and
  ``set_alpha_to_one=False`` the last timestep is 0 and its step lands on
  ``alphas_cumprod[0]`` again: it is the identity, with log-prob 0 and no
  gradient to the model, so DRaFT-1 would learn nothing. Use
  ``steps_offset=1``, ``set_alpha_to_one=True`` or ``"trailing"`` spacing.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.utils.checkpoint
from torch import Tensor

from prefdiff.sampling.common import (Model, SampleOutput, check_guidance, compute_dtype, gaussian_log_prob,
                                      grad_steps, predict_velocity, randn_like)


# ------------------------------------------------------------ schedule


def ddim_timesteps(scheduler, num_steps: int) -> Tensor:
    """Set ``scheduler`` to ``num_steps`` DDIM steps and return its timesteps.

    :param scheduler: a diffusers ``DDIMScheduler``; ``set_timesteps`` is called on it.
    :param num_steps: number of denoising steps S.

    Returns a LongTensor ``[S]``, high to low, in the scheduler's own
    ``timestep_spacing``.
    """
    scheduler.set_timesteps(num_steps)
    return scheduler.timesteps.clone()


def add_noise(scheduler, x0: Tensor, t: int | Tensor, noise: Tensor) -> Tensor:
    """Draw x_t from q(x_t | x_0) = N(sqrt(a_t) x_0, (1 - a_t) I) with the given noise.

    :param x0: clean sample, ``[B, ...]``.
    :param t: timestep, an int or a LongTensor ``[B]``.
    :param noise: standard normal noise broadcastable to ``x0``.
    """
    alpha = _alpha_bar(scheduler, _batch_timesteps(t, x0), x0)
    return (alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise).to(torch.promote_types(x0.dtype, noise.dtype))


def predict_x0(scheduler, x_t: Tensor, eps: Tensor, t: int | Tensor) -> Tensor:
    """Return the x_0 implied by a noise prediction (DDIM eq. 12, "predicted x_0").

    :param x_t: noisy sample, ``[B, ...]``.
    :param eps: predicted noise, same shape.
    :param t: timestep, an int or a LongTensor ``[B]``.
    """
    alpha = _alpha_bar(scheduler, _batch_timesteps(t, x_t), x_t)
    return ((x_t - (1 - alpha).sqrt() * eps) / alpha.sqrt()).to(torch.promote_types(x_t.dtype, eps.dtype))


DDIM_PREDICTIONS = ("epsilon", "v_prediction")


def _check_scheduler(scheduler) -> None:
    prediction_type = scheduler.config.prediction_type
    if prediction_type not in DDIM_PREDICTIONS:
        raise ValueError(f"the DDIM sampler takes prediction_type epsilon or v_prediction, got {prediction_type!r}")


def to_epsilon(scheduler, output: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
    """The noise a model output implies, by the scheduler's ``prediction_type``.

    For v-prediction (Salimans & Ho 2022, eq. 7), v = sqrt(a) eps - sqrt(1 - a) x_0,
    so eps = sqrt(a) v + sqrt(1 - a) x_t.
    """
    if scheduler.config.prediction_type == "epsilon":
        return output
    alpha = _alpha_bar(scheduler, _batch_timesteps(t, x_t), x_t)
    return (alpha.sqrt() * output + (1 - alpha).sqrt() * x_t).to(torch.promote_types(output.dtype, x_t.dtype))


def x0_from_v(scheduler, v: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
    """The x_0 a v-prediction implies, x_0 = sqrt(a) x_t - sqrt(1 - a) v (Salimans & Ho 2022, from eq. 7),
    as diffusers' ``DDIMScheduler.step`` computes it: without dividing by sqrt(a), so it stays finite
    where a is 0, the last timestep of a zero-terminal-SNR schedule (Lin et al. 2024, sec. 3.1:
    ``rescale_betas_zero_snr``), at which the noise equals x_t and says nothing of x_0.
    Kept in the schedule's precision (float32 at least), as :func:`ddim_step` computes."""
    alpha = _alpha_bar(scheduler, _batch_timesteps(t, x_t), x_t)
    return alpha.sqrt() * x_t - (1 - alpha).sqrt() * v


def training_target(scheduler, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """What the network is trained to predict for ``x_t = add_noise(x0, noise, t)``: the noise, or
    v = sqrt(a) eps - sqrt(1 - a) x_0 for v-prediction."""
    _check_scheduler(scheduler)
    if scheduler.config.prediction_type == "epsilon":
        return noise
    alpha = _alpha_bar(scheduler, _batch_timesteps(t, x0), x0)
    return (alpha.sqrt() * noise - (1 - alpha).sqrt() * x0).to(torch.promote_types(noise.dtype, x0.dtype))


def _step_ratio(scheduler) -> int:
    """Distance from t to the previous DDIM timestep, as diffusers' DDIMScheduler.step has it."""
    if scheduler.num_inference_steps is None:
        raise ValueError("the scheduler has no step count: call ddim_timesteps(scheduler, num_steps) first")
    return scheduler.config.num_train_timesteps // scheduler.num_inference_steps


def _batch_timesteps(t: int | Tensor, x: Tensor) -> Tensor:
    """Return ``t`` as a LongTensor ``[B]`` on ``x``'s device."""
    t = torch.as_tensor(t, device=x.device).long()
    if t.dim() == 0:
        return t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be an int or have shape [{x.shape[0]}], got {tuple(t.shape)}")
    return t


def _alpha_bar(scheduler, t: Tensor, x: Tensor) -> Tensor:
    """alpha-bar at each row's timestep, shaped ``[B, 1, ...]`` on ``x``'s device, in ``compute_dtype(x)``.

    A negative ``t`` is the end of the sampling chain and uses ``final_alpha_cumprod``.
    Never in half precision: bfloat16 keeps 8 bits, so every alpha-bar above 0.998 (the
    first steps of Stable Diffusion's schedule) rounds to 1 and ``1 - a_t`` to 0, and the
    step's x_0 and variance become NaN. A model in bfloat16 (``--trainer.precision
    bf16-true``) gets float32 arithmetic around its calls, as diffusers' schedulers give it.
    """
    dtype = compute_dtype(x)
    alphas = scheduler.alphas_cumprod.to(device=x.device, dtype=dtype)
    final = torch.as_tensor(scheduler.final_alpha_cumprod, device=x.device, dtype=dtype)
    alpha = torch.where(t >= 0, alphas[t.clamp(min=0)], final)
    return alpha.view(-1, *([1] * (x.dim() - 1)))


# ---------------------------------------------------------------- step


def ddim_step(
    scheduler,
    eps: Tensor,
    t: int | Tensor,
    x_t: Tensor,
    eta: float,
    *,
    prev_sample: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    clip_sample: float | None = None,
    x0: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Take one DDIM step x_t -> x_{t_prev} and return its log-probability.

    :param scheduler: a ``DDIMScheduler`` on which :func:`ddim_timesteps` was called.
    :param eps: predicted noise at ``(x_t, t)``.
    :param t: current timestep, an int or a LongTensor ``[B]``; the previous one
        is ``t - num_train_timesteps // num_inference_steps``.
    :param x_t: current sample, ``[B, ...]``.
    :param eta: 0 is deterministic DDIM, 1 the DDPM posterior variance.
    :param prev_sample: a stored x_{t_prev}; when given nothing is drawn and the
        log-prob of that transition is returned (DDPO's recomputation).
    :param noise: standard normal noise for the step; drawn from ``generator`` when None.
    :param generator: source of the step noise.
    :param clip_sample: clamp the predicted x_0 to ``[-clip_sample, clip_sample]``.
    :param x0: the predicted x_0 when the model gives it directly (v-prediction,
        :func:`x0_from_v`); by default it is derived from ``eps`` (eq. 12), which divides by
        sqrt(alpha-bar_t) and so cannot serve a zero-terminal-SNR schedule's first step.

    Returns ``(x_prev, log_prob, mean, std)``: ``log_prob`` is ``[B]``, the
    Gaussian log density of ``x_prev`` averaged over the non-batch dims (as
    ddpo-pytorch, so its scale does not depend on resolution), with ``x_prev``
    held constant so gradients flow through ``mean`` only; ``std`` is
    ``[B, 1, ...]``. A step with ``std == 0`` (``eta=0``, or a last step onto
    ``final_alpha_cumprod = 1``) is deterministic: ``x_prev = mean`` and its
    log-prob is 0.
    """
    _check_scheduler(scheduler)
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    t = _batch_timesteps(t, x_t)
    dtype = torch.promote_types(x_t.dtype, eps.dtype)  # the result's, as the inputs promote; the step runs in
    # compute_dtype, float32 at least (a bfloat16 eps from autocast beside a float32 x_t gives float32)
    x_t = x_t.to(torch.promote_types(dtype, torch.float32))
    eps = eps.to(x_t.dtype)
    alpha_t = _alpha_bar(scheduler, t, x_t)
    alpha_prev = _alpha_bar(scheduler, t - _step_ratio(scheduler), x_t)

    x0 = predict_x0(scheduler, x_t, eps, t) if x0 is None else x0.to(x_t.dtype)
    if clip_sample is not None:
        x0 = x0.clamp(-clip_sample, clip_sample)

    # sigma_t(eta) of DDIM eq. 16: sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev).
    variance = (1 - alpha_prev) / (1 - alpha_t) * (1 - alpha_t / alpha_prev)
    std = eta * variance.sqrt()
    # DDIM eq. 12: x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z.
    # The clamp keeps rounding from turning a zero "direction to x_t" into NaN.
    mean = alpha_prev.sqrt() * x0 + (1 - alpha_prev - std**2).clamp(min=0).sqrt() * eps

    if prev_sample is None:
        if eta > 0:
            if noise is None:
                noise = randn_like(x_t, generator)
            prev_sample = mean + std * noise
        else:
            prev_sample = mean
        prev_sample = prev_sample.to(dtype)
    log_prob = gaussian_log_prob(prev_sample.detach().to(mean.dtype), mean, std)
    return prev_sample, log_prob, mean, std


def predict_noise(model: Model, scheduler, x: Tensor, t: Tensor, cond: Any, guidance_scale: float = 1.0,
                  uncond: Any = None) -> Tensor:
    """The noise ``model`` predicts at ``(x_t, t)``, guided, whatever its prediction type.

    Classifier-free guidance is linear in the outputs (:func:`predict_velocity`), so it
    commutes with the conversion to noise (:func:`to_epsilon`).
    """
    return to_epsilon(scheduler, predict_velocity(model, x, t, cond, guidance_scale, uncond), x, t)


def predict_noise_and_x0(model: Model, scheduler, x: Tensor, t: Tensor, cond: Any, guidance_scale: float = 1.0,
                         uncond: Any = None) -> tuple[Tensor, Tensor | None]:
    """``(eps, x0)`` for :func:`ddim_step`: the guided noise prediction, and for a v-prediction model
    the x_0 from v itself (:func:`x0_from_v`); None for a noise-predicting one, whose x_0 the step derives."""
    output = predict_velocity(model, x, t, cond, guidance_scale, uncond)
    eps = to_epsilon(scheduler, output, x, t)
    if scheduler.config.prediction_type == "epsilon":
        return eps, None
    return eps, x0_from_v(scheduler, output, x, t)


def ddim_step_log_prob(
    model: Model,
    scheduler,
    x_t: Tensor,
    t: int | Tensor,
    x_prev: Tensor,
    cond: Any,
    *,
    eta: float = 1.0,
    guidance_scale: float = 1.0,
    uncond: Any = None,
    clip_sample: float | None = None,
    keep_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Log-prob of a stored transition x_t -> x_prev under the current model, with grad.

    The training-time recomputation of DDPO (Black et al. 2023), DPOK and D3PO.
    The scheduler must still be set to the step count the trajectory was
    sampled with, and ``eta``, guidance and ``clip_sample`` must match the
    sampling call for the result to reproduce :attr:`SampleOutput.log_probs`.

    :param x_t: ``latents[:, i]``.
    :param t: ``timesteps[i]``, an int or a LongTensor ``[B]``.
    :param x_prev: ``latents[:, i + 1]``.
    :param keep_mask: the region the sampler replaced by known values (its ``keep_mask``),
        left out of the log-prob as the sampler leaves it out.

    Returns ``(log_prob [B], mean, std)`` as :func:`ddim_step`.
    """
    check_guidance(guidance_scale, uncond)
    t = _batch_timesteps(t, x_t)
    eps, x0 = predict_noise_and_x0(model, scheduler, x_t, t, cond, guidance_scale, uncond)
    _, log_prob, mean, std = ddim_step(scheduler, eps, t, x_t, eta, prev_sample=x_prev, clip_sample=clip_sample,
                                       x0=x0)
    if keep_mask is not None:
        log_prob = gaussian_log_prob(x_prev.detach(), mean, std, keep_mask)
    return log_prob, mean, std


# ---------------------------------------------------------------- loop


def sample_ddim(
    model: Model,
    scheduler,
    noise: Tensor,
    cond: Any,
    *,
    num_steps: int = 20,
    eta: float = 1.0,
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
    clip_sample: float | None = None,
) -> SampleOutput:
    """Run the DDIM loop from ``noise`` to x_0.

    :param model: ``model(x_t, t, cond) -> eps``.
    :param scheduler: a ``DDIMScheduler``; it is set to ``num_steps`` steps.
    :param noise: the start x_T, ``[B, ...]`` (or x at ``timesteps[start_step]``).
    :param cond: conditioning, passed to the model untouched.
    :param num_steps: number of DDIM steps of the full schedule.
    :param eta: step stochasticity, see :func:`ddim_step`; its noise comes from ``generator``.
    :param guidance_scale: classifier-free guidance weight; 1 means no guidance.
    :param uncond: the unconditional cond, required when ``guidance_scale != 1``.
        Tensor cond and uncond of equal shape go through one call of doubled batch.
    :param generator: source of every random draw in the loop.
    :param return_trajectory: also return latents, log-probs and means.
    :param grad_last_k: 0 runs every step without grad; K > 0 keeps grad in the
        last K steps only (DRaFT-K, Clark et al. 2023; ReFL, Xu et al. 2023,
        backpropagates one step); -1 keeps grad in all of them (full
        backprop, as in DRaFT). The input to the first grad step is detached.
    :param truncation: which steps keep grad, see :func:`~prefdiff.sampling.common.grad_steps`:
        ``last_k`` (the last ``grad_last_k``), ``random_k`` (the last K, K drawn
        from 1..``grad_last_k``: AlignProp) or ``per_step`` (each step drawn with
        ``random_k``'s chance: TRL's AlignProp). A step without grad between two
        with grad still passes gradients through its update of x; only its model
        call is detached.
    :param checkpoint: recompute each grad step's model call in backward
        (``torch.utils.checkpoint``) to save memory.
    :param known: values to keep, broadcastable to x; with ``keep_mask``.
    :param keep_mask: 1 where ``known`` is kept, broadcastable to x. After
        every step the kept region is replaced by ``known`` noised to the new
        timestep (RePaint, Lugmayr et al. 2022, without resampling), and by
        ``known`` itself after the last step. Also pins a planner's start and goal
        (:meth:`~prefdiff.models.Denoiser.pinned`).
    :param start_step: skip the first ``start_step`` timesteps (editing).
    :param clip_sample: clamp the predicted x_0, see :func:`ddim_step`.

    With ``known``, the stored log-probs are those of the model's own draws, the region
    outside ``keep_mask`` of each stored transition; :func:`step_log_prob` given the same
    ``keep_mask`` reproduces them.
    """
    _check_scheduler(scheduler)
    check_guidance(guidance_scale, uncond)
    if (known is None) != (keep_mask is None):
        raise ValueError("known and keep_mask must be given together")
    if not 0 <= start_step < num_steps:
        raise ValueError(f"start_step must be in [0, {num_steps}), got {start_step}")
    timesteps = ddim_timesteps(scheduler, num_steps)[start_step:].to(noise.device)
    step_ratio = _step_ratio(scheduler)
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
                eps, x0 = torch.utils.checkpoint.checkpoint(
                    predict_noise_and_x0, model, scheduler, x, t_batch, cond, guidance_scale, uncond,
                    use_reentrant=False,
                )
            else:
                with torch.set_grad_enabled(model_grad[i]):
                    eps, x0 = predict_noise_and_x0(model, scheduler, x, t_batch, cond, guidance_scale, uncond)
            x, log_prob, mean, std = ddim_step(
                scheduler, eps, t_batch, x, eta, generator=generator, clip_sample=clip_sample, x0=x0
            )
            stds.append(std.reshape(-1)[0])  # one number per step (it depends on t only), left on the device
            if known is not None:
                if i == len(timesteps) - 1:
                    known_now = known
                else:
                    known_now = add_noise(scheduler, known, t - step_ratio, randn_like(x, generator))
                x = keep_mask * known_now + (1 - keep_mask) * x
                log_prob = gaussian_log_prob(x.detach(), mean, std, keep_mask)
        if return_trajectory:
            latents.append(x.detach())
            log_probs.append(log_prob.detach())
            means.append(mean.detach())

    noise_std = torch.stack(stds).float()
    noisy = (noise_std > 0).cpu()  # the loop's one host synchronisation
    if not return_trajectory:
        return SampleOutput(samples=x, timesteps=timesteps, latents=None, log_probs=None, stochastic=noisy,
                            noise_std=noise_std)
    return SampleOutput(
        samples=x,
        timesteps=timesteps,
        latents=torch.stack(latents, dim=1),
        log_probs=torch.stack(log_probs, dim=1),
        means=torch.stack(means, dim=1),
        stochastic=noisy,
        noise_std=noise_std,
    )
