"""Offline preference pairs: Diffusion-DPO and Diffusion-KTO."""

from __future__ import annotations

from typing import Any

import torch

from prefdiff.data import concat
from prefdiff.errors import UserError
from prefdiff.losses import diffusion_dpo_loss, kto_loss, per_sample_mse
from prefdiff.models import reference_mode
from prefdiff.models.text import sized_prompts
from prefdiff.sampling import noised, training_target
from prefdiff.trainers.base import AlignmentModule, TrainingData

OBJECTIVES = ("dpo", "kto")


class PairModule(AlignmentModule):
    """Trains on ``{"x_w", "x_l", "cond"}`` pairs; the reference is the adapter-disabled model.

    :param objective: ``dpo`` (Wallace et al. 2023) or ``kto`` (Li et al. 2024; the
        winner is a desirable sample, the loser an undesirable one).
    :param beta: the KL strength of the implicit reward.
    :param sft_weight: ``dpo`` only: weight of the winners' denoising loss added to the
        DPO loss (RPO, :func:`~prefdiff.losses.diffusion_dpo_loss`); 0 is plain Diffusion-DPO.
    """

    def __init__(self, *args: Any, objective: str = "dpo", beta: float = 2000.0, sft_weight: float = 0.0,
                 **kwargs: Any) -> None:  # pragma: no mutate block
        super().__init__(*args, **kwargs)
        if objective not in OBJECTIVES:
            raise UserError(f"--model.objective must be one of {', '.join(OBJECTIVES)}, got '{objective}'")
        if beta <= 0:
            raise UserError(f"--model.beta must be > 0, got {beta}")
        if sft_weight < 0 or (sft_weight and objective != "dpo"):
            raise UserError(f"--model.sft_weight must be >= 0 and is for --model.objective dpo only, "
                            f"got {sft_weight} with objective '{objective}'")
        if self.hparams.lora_rank <= 0:
            raise UserError("pair objectives use the adapter-disabled model as reference; "
                            "set --model.lora_rank > 0")

    @classmethod
    def training_data(cls, **options: Any) -> TrainingData:
        """Decided pairs."""
        return TrainingData.PAIRS

    def global_mean_reward(self, model_err: torch.Tensor, ref_err: torch.Tensor) -> torch.Tensor | None:
        """KTO's reference point over every process's share of the batch (None in one process), so
        that DDP trains as one process with the global batch would."""
        if not self._trainer or self.trainer.world_size == 1:
            return None
        reward = -self.hparams.beta * (model_err - ref_err).detach()
        return self.all_gather(reward).mean()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        # Pairs hold samples (images, trajectories); latent models train on their encodings.
        x_w, x_l = self.denoiser.encode(batch["x_w"]), self.denoiser.encode(batch["x_l"])
        cond = sized_prompts(batch["cond"], batch, batch["x_w"])
        n = x_w.shape[0]
        # Winner and loser share the timestep and the noise (Wallace et al. 2023, sec. 4), drawn
        # for the global batch so DDP trains as one process would. In flow form the errors are
        # those of the velocity (flow Diffusion-DPO).
        t, eps = self.draw_training_noise(x_w, self.step_generator(per_rank=False))
        t2, eps2 = torch.cat([t, t]), torch.cat([eps, eps])
        x0 = torch.cat([x_w, x_l])
        x_t = noised(self.noise_scheduler, x0, eps2, t2)
        target = training_target(self.noise_scheduler, x0, eps2, t2)
        cond2 = concat(cond, cond)
        model_err = per_sample_mse(self.denoiser(x_t, t2, cond2), target)
        with torch.no_grad(), reference_mode(self.denoiser):
            ref_err = per_sample_mse(self.denoiser(x_t, t2, cond2), target)
        if self.hparams.objective == "dpo":
            loss, metrics = diffusion_dpo_loss(model_err[:n], model_err[n:], ref_err[:n], ref_err[n:],
                                               self.hparams.beta, self.hparams.sft_weight)
        else:
            desirable = torch.cat([torch.ones(n), torch.zeros(n)]).bool().to(x_w.device)
            loss, metrics = kto_loss(model_err, ref_err, desirable, self.hparams.beta,
                                     reference_point=self.global_mean_reward(model_err, ref_err))
        self.log_progress("train/loss", loss, n)
        self.log_metrics(metrics)
        return loss
