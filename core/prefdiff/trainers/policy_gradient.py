"""Policy gradient over the denoising MDP: DDPO, DPOK and GRPO."""

from __future__ import annotations

from typing import Any

import torch

from prefdiff.data import concat, condition_count, repeat_condition
from prefdiff.errors import UserError
from prefdiff.losses import (gaussian_kl, group_advantages, per_condition_advantages,
                             policy_gradient_kl_loss, ppo_clip_loss)
from prefdiff.models import reference_mode
from prefdiff.sampling import predict_velocity, step_log_prob
from prefdiff.trainers.base import AlignmentModule, check_step_selection

VARIANTS = ("ddpo", "dpok", "grpo")


class PolicyGradientModule(AlignmentModule):
    """Samples trajectories with their log-probs, scores them, and updates the policy.

    * ``ddpo`` (Black et al. 2023): PPO-clip, advantages normalised per condition.
    * ``dpok`` (Fan et al. 2023): REINFORCE with a KL to the reference per step.
    * ``grpo`` (Flow-GRPO, Liu et al. 2025; DanceGRPO): PPO-clip with advantages
      relative to the group of samples of the same condition, optional KL.

    Rewards and advantages are gathered across processes, so DDP trains as one batch.

    :param method: ddpo, dpok or grpo.
    :param samples_per_condition: trajectories per condition in a batch (the group size).
    :param clip_range: PPO clip range.
    :param adv_clip_max: advantages are clamped to [-adv_clip_max, adv_clip_max].
    :param inner_epochs: passes over each sampled batch.
    :param timestep_fraction: fraction of the denoising steps trained per pass.
    :param min_step_std: train only the steps whose noise std is at least this (0: every stochastic
        step). A step's log-prob gradient grows as 1 / std: with DDIM at 10 steps, the step onto t = 1
        draws std 0.009 against 0.15 and more for the others, and dominates the update while barely
        moving the sample (driving's notes, stop 49). flow_grpo's configs leave the last step
        untrained too: ``timestep_fraction = 0.99``, over the steps taken in order.
    :param kl_coef: weight of the per-step KL to the reference (dpok, grpo). The KL is the
        exact one between the two Gaussian steps, ``|mean - mean_ref|^2 / (2 std^2)`` averaged over
        dims, with ``std`` the step's (Flow-GRPO's paper form). On Flow-GRPO's SDE, flow_grpo's code
        divides by ``2 (a sqrt(s / (1 - s)))^2`` instead, leaving out the step's ``|ds|``, so its
        ``beta`` is about ``kl_coef / |ds|`` for a step; on CPS the two agree.
    :param shared_noise: a condition's samples start from the same initial noise (Flow-GRPO's option).
    :param global_std: ddpo and grpo divide a condition's centred rewards by the whole batch's std
        instead of the condition's own (Flow-GRPO's ``global_std``), so that near-ties stay small.
    :param logprob_batch: recompute the log-probs of this many sampling steps in one batched forward
        (and one backward): fewer, larger kernels at the cost of that many steps' activations; 1 takes
        the steps one at a time. The update is the same up to float rounding.

    On a flow-matching model the steps are Flow-GRPO's SDE steps (``--model.eta`` its noise
    level; ``--model.sde_window`` limits them), so ``grpo`` is Flow-GRPO (Liu et al. 2025).
    Only steps that drew noise are trained.
    """

    def __init__(self, *args: Any, method: str = "ddpo", samples_per_condition: int = 4,
                 clip_range: float = 1e-4, adv_clip_max: float = 5.0, inner_epochs: int = 1,
                 timestep_fraction: float = 1.0, min_step_std: float = 0.0, kl_coef: float = 0.0,
                 shared_noise: bool = False,
                 logprob_batch: int = 1, global_std: bool = False, **kwargs: Any) -> None:  # pragma: no mutate block
        super().__init__(*args, **kwargs)
        if method not in VARIANTS:
            raise UserError(f"--model.method must be one of {', '.join(VARIANTS)}, got '{method}'")
        if samples_per_condition < 2 and method == "grpo":
            raise UserError("--model.samples_per_condition must be >= 2 for grpo")
        check_step_selection(timestep_fraction, min_step_std)
        if self.hparams.eta <= 0:
            raise UserError("policy gradient needs stochastic steps: set --model.eta > 0")
        if kl_coef > 0 and self.hparams.lora_rank <= 0:
            raise UserError("the KL term uses the adapter-disabled reference; set --model.lora_rank > 0")
        if global_std and method == "dpok":
            raise UserError("--model.global_std applies to ddpo and grpo, whose advantages are per condition; "
                            "dpok normalises over the whole batch already")
        if logprob_batch < 1:
            raise UserError(f"--model.logprob_batch must be >= 1, got {logprob_batch}")
        self.automatic_optimization = False

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        hp = self.hparams
        optimizer = self.optimizers()
        generator = self.step_generator()
        k = hp.samples_per_condition
        cond = repeat_condition(batch["cond"], k)
        n = k * condition_count(batch["cond"])
        out, rewards = self.sample_and_score(cond, n, generator, group=k if hp.shared_noise else 1)
        advantages = self.advantages(rewards.float(), k).clamp(-hp.adv_clip_max, hp.adv_clip_max)
        kw = self.log_prob_options(cond)
        for _ in range(hp.inner_epochs):
            chosen = self.trainable_steps(out, hp.timestep_fraction, generator, hp.min_step_std)
            for first in range(0, len(chosen), hp.logprob_batch):
                steps = chosen[first:first + hp.logprob_batch]
                recomputed = self.step_log_probs(out, steps, cond, kw)
                if hp.method == "dpok" or hp.kl_coef > 0:
                    with torch.no_grad(), reference_mode(self.denoiser):
                        reference = self.step_log_probs(out, steps, cond, kw)
                loss = 0.0
                for i, (j, (lp, mean, std)) in enumerate(zip(steps, recomputed)):
                    kl = gaussian_kl(mean, reference[i][1], std) if hp.method == "dpok" or hp.kl_coef > 0 else None
                    if hp.method == "dpok":
                        step_loss, metrics = policy_gradient_kl_loss(lp, advantages, kl, hp.kl_coef)
                    else:
                        step_loss, metrics = ppo_clip_loss(lp, out.log_probs[:, j], advantages, hp.clip_range)
                        if kl is not None:
                            step_loss = step_loss + hp.kl_coef * kl.mean()
                            metrics["kl"] = kl.mean().detach()
                    loss = loss + step_loss
                self.manual_backward(loss / len(chosen))
            self.clip_and_step(optimizer)
        self.log_progress("train/reward", rewards.mean(), n)
        self.log_metrics({**metrics, "reward_queries": self.reward_queries})

    def step_log_probs(self, out, steps: list[int], cond: Any, options: dict[str, Any]) -> list[tuple]:
        """``(log_prob, mean, std)`` of each stored step ``j`` in ``steps`` (``latents[:, j] -> latents[:, j + 1]``)
        under the current model, as :func:`~prefdiff.sampling.step_log_prob` gives it.

        With several steps the network sees all of them in one batch; each step's log-prob is then
        taken from its slice of the (guided) output, which is what the per-step call computes.
        """
        scheduler, latents = self.noise_scheduler, out.latents
        if len(steps) == 1:
            j = steps[0]
            return [step_log_prob(self.denoiser, scheduler, latents[:, j], out.timesteps[j], latents[:, j + 1], cond,
                                  **options)]
        n = latents.shape[0]
        x = torch.cat([latents[:, j] for j in steps])
        # Each step's timestep (integer for DDIM, float for flow matching) for each of its n samples.
        t = torch.cat([torch.as_tensor(out.timesteps[j], device=x.device).reshape(()).expand(n) for j in steps])
        times = len(steps)
        stacked, uncond = cond, options["uncond"]
        for _ in range(times - 1):
            stacked = concat(stacked, cond)
            uncond = None if options["uncond"] is None else concat(uncond, options["uncond"])
        output = predict_velocity(self.denoiser, x, t, stacked, options["guidance_scale"], uncond)
        rest = {k: v for k, v in options.items() if k not in ("guidance_scale", "uncond")}
        results = []
        for i, j in enumerate(steps):
            part = output[i * n:(i + 1) * n]
            # The guided output is already computed: a "model" that returns it, unguided.
            results.append(step_log_prob(lambda *_, part=part: part, scheduler, latents[:, j], out.timesteps[j],
                                         latents[:, j + 1], None, **rest))
        return results

    def advantages(self, rewards: torch.Tensor, k: int) -> torch.Tensor:
        """Normalised advantages over the rewards of every process."""
        n = rewards.shape[0]
        world, rank = self.trainer.world_size if self._trainer else 1, self.global_rank
        everything = self.all_gather(rewards).reshape(-1) if world > 1 else rewards
        if self.hparams.method == "grpo":
            adv = group_advantages(everything, k, global_std=self.hparams.global_std)
        elif self.hparams.method == "ddpo":
            ids = torch.arange(everything.shape[0], device=rewards.device) // k
            adv = per_condition_advantages(everything, ids, global_std=self.hparams.global_std)
        else:
            adv = (everything - everything.mean()) / (everything.std(correction=0) + 1e-6)
        return adv[rank * n:(rank + 1) * n] if world > 1 else adv
