"""Reward backpropagation through the sampler: DRaFT-K, AlignProp and ReFL."""

from __future__ import annotations

from typing import Any

import torch

from prefdiff.data import condition_count
from prefdiff.errors import UserError
from prefdiff.losses import per_sample_mse, reward_backprop_loss
from prefdiff.models import reference_mode
from prefdiff.sampling import predict_noise, predict_sample, predict_velocity
from prefdiff.sampling.common import TRUNCATIONS
from prefdiff.trainers.base import AlignmentModule

VARIANTS = ("draft", "alignprop", "refl")
OWN_TRUNCATION = {"draft": "last_k", "alignprop": "random_k"}
"""The steps each variant backpropagates unless ``truncation`` says otherwise."""


class RewardBackpropModule(AlignmentModule):
    """Maximises a differentiable reward of the sampled x_0 by backpropagation.

    * ``draft`` (Clark et al. 2023, DRaFT-K): gradients through the last K steps.
    * ``alignprop`` (Prabhudesai et al. 2023): K drawn at random from 1..k per
      batch, with gradient checkpointing.
    * ``refl`` (Xu et al. 2023): sample to a random late step without gradients,
      then predict x_0 in one step with gradients.

    :param method: draft, alignprop or refl.
    :param k: gradient steps (draft), or their maximum (alignprop).
    :param checkpoint: gradient checkpointing of the steps that keep gradients.
    :param drift_coef: weight of the drift penalty ||eps_theta - eps_ref||^2 at
        the last step's input, a KL between the step Gaussians (as DPOK's).
    :param refl_window: ReFL draws its step from the last fraction of the schedule.
    :param truncation: which of the last k steps keep gradients, overriding the variant's own
        (draft: ``last_k``; alignprop: ``random_k``, the paper's last K with K uniform in 1..k).
        ``per_step`` is TRL's ``AlignPropTrainer``: each step keeps its gradient with
        ``random_k``'s chance, drawn independently (:func:`~prefdiff.sampling.common.grad_steps`).
    """

    def __init__(self, *args: Any, method: str = "draft", k: int = 1, checkpoint: bool = True,
                 drift_coef: float = 0.0, refl_window: float = 0.25, truncation: str | None = None,
                 **kwargs: Any) -> None:  # pragma: no mutate block
        super().__init__(*args, **kwargs)
        if method not in VARIANTS:
            raise UserError(f"--model.method must be one of {', '.join(VARIANTS)}, got '{method}'")
        if k < 1 or k > self.hparams.num_steps:
            raise UserError(f"--model.k must be in [1, num_steps={self.hparams.num_steps}], got {k}")
        if drift_coef < 0:
            raise UserError(f"--model.drift_coef must be >= 0, got {drift_coef}")
        if drift_coef > 0 and self.hparams.lora_rank <= 0:
            raise UserError("the drift penalty uses the adapter-disabled reference; set --model.lora_rank > 0")
        if truncation is not None and truncation not in TRUNCATIONS:
            raise UserError(f"--model.truncation must be one of {', '.join(TRUNCATIONS)}, got '{truncation}'")
        if truncation is not None and method == "refl":
            raise UserError("--model.truncation applies to draft and alignprop; refl backpropagates one step")
        self.automatic_optimization = False

    def on_fit_start(self) -> None:
        self.require_reward(differentiable=True)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        hp = self.hparams
        optimizer = self.optimizers()
        generator = self.step_generator()
        cond = batch["cond"]
        n = condition_count(cond)
        want_drift = hp.drift_coef > 0
        if hp.method == "refl":
            with torch.no_grad():
                out = self.run_sampler(cond, n, generator, return_trajectory=True)
            steps = len(out.timesteps)
            first = int(steps * (1 - hp.refl_window))
            j = int(torch.randint(min(first, steps - 1), steps, (1,), generator=generator))
            x_t, t = out.latents[:, j], out.timesteps[j]
            x0 = self._predict_sample(x_t, t, cond)
        else:
            out = self.run_sampler(cond, n, generator, grad_last_k=hp.k,
                                   truncation=hp.truncation or OWN_TRUNCATION[hp.method],
                                   checkpoint=hp.checkpoint, return_trajectory=want_drift)
            x0 = out.samples
            j = len(out.timesteps) - 1
        x0 = self.denoiser.decode(x0, checkpoint=hp.checkpoint)  # the reward scores samples, not latents
        drift = None
        if want_drift:
            x_t, t = out.latents[:, j], out.timesteps[j]
            with torch.no_grad(), reference_mode(self.denoiser):
                out_ref = self._output(x_t, t, cond)
            drift = per_sample_mse(self._output(x_t, t, cond), out_ref)
        scores, info = self.score(x0, cond)
        loss, metrics = reward_backprop_loss(scores, drift, hp.drift_coef)
        self.manual_backward(loss)
        self.clip_and_step(optimizer)
        self.log_metrics({**metrics, "reward_queries": self.reward_queries})  # holds train/reward

    def _guided(self, t: torch.Tensor, n: int, cond: Any) -> tuple[torch.Tensor, float, Any]:
        guidance = self.hparams.guidance_scale
        uncond = self.denoiser.null_condition(cond) if guidance != 1 else None
        return (t.expand(n) if t.ndim == 0 else t), guidance, uncond

    def _output(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """The guided prediction the drift penalty compares: the noise (DDIM) or the velocity (flow).
        Its squared distance to the reference's is, up to a factor, the KL between the two step Gaussians."""
        tt, guidance, uncond = self._guided(t, x_t.shape[0], cond)
        if self.flow:
            return predict_velocity(self.denoiser, x_t, tt, cond, guidance, uncond)
        return predict_noise(self.denoiser, self.noise_scheduler, x_t, tt, cond, guidance, uncond)

    def _predict_sample(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        tt, guidance, uncond = self._guided(t, x_t.shape[0], cond)
        return predict_sample(self.denoiser, self.noise_scheduler, x_t, tt, cond, guidance, uncond)
