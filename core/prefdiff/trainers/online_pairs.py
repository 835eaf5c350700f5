"""D3PO: DPO on denoising steps of online pairs ranked by a reward (Yang et al. 2024)."""

from __future__ import annotations

from typing import Any

import torch

from prefdiff.data import condition_count, repeat_condition, select
from prefdiff.errors import UserError
from prefdiff.losses import d3po_loss
from prefdiff.models import reference_mode
from prefdiff.sampling import step_log_prob
from prefdiff.trainers.base import AlignmentModule, check_step_selection


class D3POModule(AlignmentModule):
    """Each step samples two trajectories per condition, lets the reward pick the winner,
    and applies the DPO loss to the ratio of per-step log-probs against the reference.
    A pair whose rewards tie has no winner and gives no gradient (the authors' code).

    :param beta: DPO temperature on the log-prob ratios.
    :param timestep_fraction: fraction of the denoising steps trained per batch.
    :param min_step_std: train only the steps whose noise std is at least this (0: every stochastic
        step); see :meth:`~prefdiff.trainers.base.AlignmentModule.trainable_steps`.
    :param ratio_clip: clamp each step's ratio to the reference to ``[1 - eps, 1 + eps]`` before
        the loss, as the D3PO authors' code does (``eps`` 0.1 there): a step that has moved further
        gives no gradient. None (the default) is the paper's unclipped loss.
    :param shared_noise: a pair's two trajectories start from the same initial noise x_T, as the
        authors' code samples them (``latents=latents1[:, 0]``; yk7333/d3po, scripts/rm/train_d3po.py), so
        the reward compares what the denoising steps did, not two starting points. False draws each
        trajectory its own x_T.
    """

    def __init__(self, *args: Any, beta: float = 0.1, timestep_fraction: float = 1.0, min_step_std: float = 0.0,
                 ratio_clip: float | None = None, shared_noise: bool = True,
                 **kwargs: Any) -> None:  # pragma: no mutate block
        super().__init__(*args, **kwargs)
        if beta <= 0:
            raise UserError(f"--model.beta must be > 0, got {beta}")
        if ratio_clip is not None and not 0 < ratio_clip < 1:
            raise UserError(f"--model.ratio_clip must be in (0, 1) (the D3PO authors use 0.1), got {ratio_clip}")
        check_step_selection(timestep_fraction, min_step_std)
        if self.hparams.eta <= 0:
            raise UserError("D3PO needs stochastic steps for log-probs: set --model.eta > 0")
        self.automatic_optimization = False

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        optimizer = self.optimizers()
        generator = self.step_generator()
        cond = repeat_condition(batch["cond"], 2)
        n = 2 * condition_count(batch["cond"])
        out, scores = self.sample_and_score(cond, n, generator, group=2 if self.hparams.shared_noise else 1)
        pairs = scores.view(-1, 2)
        first_wins, decided = pairs[:, 0] > pairs[:, 1], pairs[:, 0] != pairs[:, 1]
        idx = torch.arange(0, n, 2, device=scores.device)
        win, lose = torch.where(first_wins, idx, idx + 1), torch.where(first_wins, idx + 1, idx)
        order = torch.cat([win, lose])
        latents, cond_wl = out.latents[order], select(cond, order)
        chosen = self.trainable_steps(out, self.hparams.timestep_fraction, generator, self.hparams.min_step_std)
        half = n // 2
        kw = self.log_prob_options(cond_wl)
        for j in chosen:
            t = out.timesteps[j]
            lp, _, _ = step_log_prob(self.denoiser, self.noise_scheduler, latents[:, j], t,
                                     latents[:, j + 1], cond_wl, **kw)
            with torch.no_grad(), reference_mode(self.denoiser):
                ref, _, _ = step_log_prob(self.denoiser, self.noise_scheduler, latents[:, j], t,
                                          latents[:, j + 1], cond_wl, **kw)
            loss, metrics = d3po_loss(lp[:half], lp[half:], ref[:half], ref[half:], self.hparams.beta,
                                      self.hparams.ratio_clip, decided)
            self.manual_backward(loss / len(chosen))
        self.clip_and_step(optimizer)
        self.log_progress("train/reward", scores.mean(), n)
        self.log_metrics({**metrics, "reward_queries": self.reward_queries})
