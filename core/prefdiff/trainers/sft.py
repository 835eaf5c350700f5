"""Supervised fine-tuning: plain (pretraining the base model) and reward-weighted."""

from __future__ import annotations

from typing import Any

import torch

from prefdiff.data import condition_count
from prefdiff.errors import UserError
from prefdiff.losses import rwr_weights, sft_loss
from prefdiff.models.text import sized_prompts
from prefdiff.trainers.base import AlignmentModule, TrainingData


class SFTModule(AlignmentModule):
    """Noise-prediction training on ``{"x0", "cond"}`` batches (DDPM, Ho et al. 2020).

    :param reward_weighted: weight each sample by softmax(reward / temperature)
        (reward-weighted regression, Lee et al. 2023); batches then carry ``"reward"``.
    :param temperature: RWR temperature.
    :param p_uncond: probability of dropping the condition (trains CFG's unconditional model).
    """

    def __init__(self, *args: Any, reward_weighted: bool = False, temperature: float = 0.1,
                 p_uncond: float = 0.0, **kwargs: Any) -> None:  # pragma: no mutate block
        super().__init__(*args, **kwargs)
        if not 0.0 <= p_uncond < 1.0:
            raise UserError(f"--model.p_uncond must be in [0, 1), got {p_uncond}")
        if reward_weighted and temperature <= 0:
            raise UserError(f"--model.temperature must be > 0, got {temperature}")

    @classmethod
    def training_data(cls, reward_weighted: bool = False, **options: Any) -> TrainingData:
        """Targets with their conditions; scored samples when reward-weighted."""
        return TrainingData.SCORED_SAMPLES if reward_weighted else TrainingData.TARGETS

    @classmethod
    def uses_reward(cls, reward_weighted: bool = False, **options: Any) -> bool:
        """Plain SFT needs no reward; reward-weighted SFT learns from one."""
        return reward_weighted

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        generator = self.step_generator(per_rank=False)
        x0, cond = self.denoiser.encode(batch["x0"]), sized_prompts(batch.get("cond"), batch, batch["x0"])
        x_t, t, target = self.add_noise(x0, generator)
        if self.hparams.p_uncond > 0 and cond is not None:
            cond = self._drop_condition(cond, generator)
        weights = None
        if self.hparams.reward_weighted:
            if "reward" not in batch:
                raise UserError("reward-weighted SFT needs batches with 'reward' (mined samples)")
            weights = rwr_weights(batch["reward"].float(), self.hparams.temperature)
        loss, metrics = sft_loss(self.denoiser(x_t, t, cond), target, weights)
        self.log_progress("train/loss", loss, x0.shape[0])
        self.log_metrics(metrics)
        return loss

    def _drop_condition(self, cond: Any, generator: torch.Generator) -> Any:
        null = self.denoiser.null_condition(cond)
        draws = torch.rand(condition_count(cond) * self.world_size, generator=generator)
        drop = self.rank_share(draws) < self.hparams.p_uncond

        def pick(c: Any, n: Any) -> Any:
            if isinstance(c, (list, tuple)):  # prompts: a dropped one becomes the negative prompt
                return [n_i if d else c_i for c_i, n_i, d in zip(c, n, drop.tolist())]
            mask = drop.to(c.device).view(-1, *([1] * (c.ndim - 1)))
            return torch.where(mask, n, c)

        if isinstance(cond, dict):
            return {k: pick(cond[k], null[k]) for k in cond}
        return pick(cond, null)
