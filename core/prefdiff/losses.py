"""Training objectives for aligning diffusion models, as pure tensor functions.

Every loss returns ``(loss, metrics)``: ``loss`` is a scalar tensor that
carries the graph, ``metrics`` maps names to detached scalar tensors for
logging. The advantage helpers return per-sample tensors. Nothing here owns
parameters or calls a model; trainers compute the errors, log-probabilities and
rewards and pass them in.

Shapes: ``B`` is the batch size. Per-sample quantities are ``[B]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

Metrics = dict[str, Tensor]


# ---------------------------------------------------------------- helpers


def per_sample_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Return the mean squared error of each sample, shape ``[B]``.

    :param pred: prediction, ``[B, ...]``.
    :param target: target of the same shape.

    Averages over every dimension but the first. Half-precision inputs are
    computed in float32 so the squared error neither overflows nor loses
    the small differences DPO-style losses compare; wider dtypes are kept.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    dtype = torch.promote_types(torch.promote_types(pred.dtype, target.dtype), torch.float32)
    diff = pred.to(dtype) - target.to(dtype)
    return diff.pow(2).reshape(diff.shape[0], -1).mean(dim=1)


def _check_positive(value: float, name: str) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _detached(**values: Tensor) -> Metrics:
    return {name: value.detach() for name, value in values.items()}


def _win_rate(margin: Tensor) -> Tensor:
    """Fraction of pairs whose margin is positive; a tie counts as half."""
    return ((margin > 0).to(margin.dtype) + 0.5 * (margin == 0).to(margin.dtype)).mean()


# ------------------------------------------------------- supervised losses


def sft_loss(eps_pred: Tensor, eps: Tensor, weights: Tensor | None = None) -> tuple[Tensor, Metrics]:
    """Noise-prediction loss, optionally reward-weighted.

    :param eps_pred: the model's noise prediction, ``[B, ...]``.
    :param eps: the noise that was added, same shape.
    :param weights: optional per-sample weights ``[B]``, e.g. from
        :func:`rwr_weights`. Used as given: the loss is ``mean(w * mse)``,
        so weights whose mean is 1 keep the loss on the plain SFT scale.
    :returns: ``(loss, {"mse": unweighted mean MSE})``.
    """
    # Ho et al. 2020, "Denoising Diffusion Probabilistic Models", eq. 14
    # (L_simple); weighted per sample by reward as in Lee et al. 2023.
    mse = per_sample_mse(eps_pred, eps)
    if weights is None:
        loss = mse.mean()
    else:
        if weights.shape != mse.shape:
            raise ValueError(f"weights must have shape {tuple(mse.shape)}, got {tuple(weights.shape)}")
        loss = (weights.to(mse.dtype) * mse).mean()
    return loss, _detached(mse=mse.mean())


def rwr_weights(rewards: Tensor, temperature: float) -> Tensor:
    """Reward-weighted-regression weights ``B * softmax(rewards / temperature)``.

    :param rewards: per-sample rewards ``[B]``.
    :param temperature: softmax temperature; smaller is greedier.
    :returns: weights ``[B]`` whose mean is 1, without gradient.
    """
    # Peters & Schaal 2007, "Reinforcement learning by reward-weighted
    # regression": weights exp(r / T), here normalised over the batch; used
    # for text-to-image alignment by Lee et al. 2023, "Aligning Text-to-Image
    # Models using Human Feedback". Scaling by B keeps the mean weight at 1 so
    # the learning rate means the same as for plain SFT.
    _check_positive(temperature, "temperature")
    rewards = rewards.detach()
    return torch.softmax(rewards / temperature, dim=0) * rewards.shape[0]


# ------------------------------------------------------ preference losses


def diffusion_dpo_loss(
    model_err_w: Tensor,
    model_err_l: Tensor,
    ref_err_w: Tensor,
    ref_err_l: Tensor,
    beta: float,
    sft_weight: float = 0.0,
) -> tuple[Tensor, Metrics]:
    """Diffusion-DPO loss on per-sample noise-prediction errors.

    :param model_err_w: policy MSE on the preferred sample, ``[B]``.
    :param model_err_l: policy MSE on the rejected sample, ``[B]``.
    :param ref_err_w: reference MSE on the preferred sample, ``[B]``.
    :param ref_err_l: reference MSE on the rejected sample, ``[B]``.
    :param beta: KL strength (``beta_dpo``; thousands for SD-sized models).
    :param sft_weight: weight of the winners' own denoising loss added to the DPO
        term (0: plain Diffusion-DPO).
    :returns: ``(loss, metrics)`` with ``implicit_acc`` (ties count 0.5),
        ``reward_margin`` (mean logit), ``model_err_w`` and ``model_err_l``.

    Winner and loser of a pair must share timestep and noise. The errors are
    means over pixels (:func:`per_sample_mse`), so ``beta`` absorbs the
    ``T * omega(lambda_t)`` factor and the pixel count of the paper's sum.
    """
    # Wallace et al. 2023, "Diffusion Model Alignment Using Direct Preference
    # Optimization", eq. 14, in the scaling of the authors' training code:
    # the policy should lower its error on x^w, relative to the reference,
    # more than on x^l.
    _check_positive(beta, "beta")
    inside = -0.5 * beta * ((model_err_w - model_err_l) - (ref_err_w - ref_err_l))
    loss = -F.logsigmoid(inside).mean()
    if sft_weight:
        # The DPO term alone can lower the winners' likelihood as long as it lowers the losers'
        # more; the winners' negative log-likelihood, here their denoising loss, keeps it up
        # (RPO: Pang et al. 2024, "Iterative Reasoning Preference Optimization", eq. 1).
        _check_positive(sft_weight, "sft_weight")
        loss = loss + sft_weight * model_err_w.mean()
    return loss, _detached(
        implicit_acc=_win_rate(inside),
        reward_margin=inside.mean(),
        model_err_w=model_err_w.mean(),
        model_err_l=model_err_l.mean(),
    )


def kto_loss(
    model_err: Tensor,
    ref_err: Tensor,
    desirable: Tensor,
    beta: float,
    lambda_desirable: float = 1.0,
    lambda_undesirable: float = 1.0,
    reference_point: Tensor | None = None,
) -> tuple[Tensor, Metrics]:
    """Diffusion-KTO loss on per-sample noise-prediction errors.

    :param model_err: policy MSE per sample, ``[B]``.
    :param ref_err: reference MSE per sample, ``[B]``.
    :param desirable: bool ``[B]``, True where the sample was liked.
    :param beta: KL strength.
    :param lambda_desirable: weight on liked samples.
    :param lambda_undesirable: weight on disliked samples.
    :param reference_point: the mean implicit reward of the whole batch when it is split across
        processes (DDP; the Diffusion-KTO code averages it over them); None: this batch's mean.
    :returns: ``(loss, metrics)`` with ``kl_ref`` (the reference point
        ``z``, after clamping), ``reward_desirable`` and
        ``reward_undesirable`` (mean implicit reward of each kind, 0 when
        the batch has none).
    """
    # Li et al. 2024, "Aligning Diffusion Models by Optimizing Human Utility"
    # (Diffusion-KTO), applying Ethayarajh et al. 2024 (KTO) to the
    # Diffusion-DPO implicit reward r = -beta * (err_theta - err_ref).
    # The reference point z estimates KL(policy || ref) from the batch, and,
    # as in KTO, carries no gradient and is never negative.
    _check_positive(beta, "beta")
    if desirable.dtype != torch.bool:
        raise ValueError(f"desirable must be a bool tensor, got {desirable.dtype}")
    reward = -beta * (model_err - ref_err)
    z = (reward.mean() if reference_point is None else reference_point).detach().clamp(min=0)
    per_sample = torch.where(
        desirable,
        lambda_desirable * (1 - torch.sigmoid(reward - z)),
        lambda_undesirable * (1 - torch.sigmoid(z - reward)),
    )
    return per_sample.mean(), _detached(
        kl_ref=z,
        reward_desirable=_mean_or_zero(reward[desirable]),
        reward_undesirable=_mean_or_zero(reward[~desirable]),
    )


def _mean_or_zero(values: Tensor) -> Tensor:
    return values.mean() if values.numel() else values.new_zeros(())


def d3po_loss(
    logp_w: Tensor,
    logp_l: Tensor,
    ref_logp_w: Tensor,
    ref_logp_l: Tensor,
    beta: float,
    ratio_clip: float | None = None,
    decided: Tensor | None = None,
) -> tuple[Tensor, Metrics]:
    """D3PO loss: DPO on the log-probabilities of denoising steps.

    :param logp_w: policy log-prob of the preferred trajectory's step(s).
    :param logp_l: policy log-prob of the rejected trajectory's step(s).
    :param ref_logp_w: reference log-prob of the preferred step(s).
    :param ref_logp_l: reference log-prob of the rejected step(s).
    :param beta: KL strength.
    :param ratio_clip: ``eps`` in (0, 1): each step's ratio ``pi / pi_ref`` is clamped to
        ``[1 - eps, 1 + eps]`` first, so a step whose ratio left that range gives no gradient
        (the D3PO authors' code, ``train.eps = 0.1``); None: the paper's unclipped form.
    :param decided: ``[B]`` bools, False for a pair whose rewards tie: its logit is 0, so it adds
        the constant ``log 2`` and no gradient, as the authors' ``compare`` gives a tie no
        preference (with a binary or rounded reward many pairs tie, and neither is the winner).
    :returns: ``(loss, {"implicit_acc", "margin"})``; ``margin`` is the mean
        logit ``beta * (...)``. The loss averages over every element, so
        ``[B]`` for one step and ``[B, T]`` for several both work.
    """
    # Yang et al. 2024, "Using Human Feedback to Fine-tune Diffusion Models
    # without Any Reward Model" (D3PO): the DPO loss of Rafailov et al. 2023,
    # eq. 7, with each denoising step treated as an action of the MDP. The
    # clamp is their code's ("clip the Q value"; yk7333/d3po, scripts/train_with_rm.py),
    # not the paper's.
    _check_positive(beta, "beta")
    log_ratio_w, log_ratio_l = logp_w - ref_logp_w, logp_l - ref_logp_l
    if ratio_clip is not None:
        if not 0 < ratio_clip < 1:
            raise ValueError(f"ratio_clip must be in (0, 1), got {ratio_clip}")
        low, high = math.log(1 - ratio_clip), math.log(1 + ratio_clip)
        log_ratio_w, log_ratio_l = log_ratio_w.clamp(low, high), log_ratio_l.clamp(low, high)
    logits = beta * (log_ratio_w - log_ratio_l)
    if decided is not None:
        logits = logits * decided.reshape(-1, *([1] * (logits.dim() - 1))).to(logits.dtype)
    loss = -F.logsigmoid(logits).mean()
    return loss, _detached(implicit_acc=_win_rate(logits), margin=logits.mean())


# --------------------------------------------------- reinforcement losses


def ppo_clip_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    clip_range: float,
) -> tuple[Tensor, Metrics]:
    """PPO clipped surrogate over one denoising step, as DDPO uses it.

    :param log_prob: current policy log-prob of the sampled step, ``[B]``.
    :param old_log_prob: log-prob when the step was sampled, ``[B]``.
    :param advantages: per-sample advantages ``[B]`` (no gradient needed).
    :param clip_range: the ratio is clipped to ``[1 - clip, 1 + clip]``.
    :returns: ``(loss, {"approx_kl", "clipfrac", "ratio"})``.
    """
    # Black et al. 2023, "Training Diffusion Models with Reinforcement
    # Learning" (DDPO), the importance-sampling policy gradient with the
    # clipped surrogate of Schulman et al. 2017 (PPO, eq. 7), negated to be
    # minimised.
    _check_positive(clip_range, "clip_range")
    log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    return loss, _detached(
        approx_kl=0.5 * log_ratio.pow(2).mean(),
        clipfrac=((ratio - 1.0).abs() > clip_range).to(ratio.dtype).mean(),
        ratio=ratio.mean(),
    )


def policy_gradient_kl_loss(
    log_prob: Tensor,
    advantages: Tensor,
    kl: Tensor,
    kl_coef: float,
) -> tuple[Tensor, Metrics]:
    """Policy gradient with a KL penalty to the reference model (DPOK).

    :param log_prob: policy log-prob of the sampled step, ``[B]``.
    :param advantages: per-sample advantages ``[B]``.
    :param kl: per-sample KL to the reference, ``[B]``, e.g. from
        :func:`gaussian_kl`.
    :param kl_coef: weight of the KL term.
    :returns: ``(loss, {"pg": policy-gradient term, "kl": mean KL})``.
    """
    # Fan et al. 2023, "DPOK: Reinforcement Learning for Fine-tuning
    # Text-to-Image Diffusion Models": REINFORCE on the denoising MDP plus
    # the per-step KL upper bound on KL(p_theta || p_ref) as a regulariser.
    pg = (-advantages * log_prob).mean()
    kl_mean = kl.mean()
    return pg + kl_coef * kl_mean, _detached(pg=pg, kl=kl_mean)


def gaussian_kl(mean_p: Tensor, mean_q: Tensor, std: Tensor | float) -> Tensor:
    """KL between two Gaussians with the same isotropic std, per sample.

    :param mean_p: policy step mean, ``[B, ...]``.
    :param mean_q: reference step mean, same shape.
    :param std: shared std: a scalar or anything broadcastable to the means.
    :returns: ``[B]``: ``sum((mean_p - mean_q)^2 / (2 std^2))`` divided by
        the elements per sample, i.e. a mean over non-batch dims, matching
        DDPO's log-prob, which is also a mean over dims.
    """
    # With equal covariances the log-det and trace terms of the Gaussian KL
    # cancel, leaving the Mahalanobis term; used per denoising step by DPOK.
    # broadcast_to fails loudly if std would widen the means' shape.
    # A deterministic step (std = 0, e.g. DDIM's last step onto alpha = 1) is not
    # a Gaussian policy step: it contributes no KL (and must not divide by zero).
    std = torch.as_tensor(std, dtype=mean_p.dtype, device=mean_p.device)
    safe = torch.where(std > 0, std, torch.ones_like(std))
    half_sq = ((mean_p - mean_q) / safe).pow(2) / 2
    half_sq = torch.broadcast_to(torch.where(std > 0, half_sq, torch.zeros_like(half_sq)), mean_p.shape)
    return half_sq.reshape(mean_p.shape[0], -1).mean(dim=1)


def reward_backprop_loss(
    rewards: Tensor,
    drift: Tensor | None = None,
    drift_coef: float = 0.0,
) -> tuple[Tensor, Metrics]:
    """Maximise a differentiable reward, optionally penalising drift.

    :param rewards: per-sample rewards ``[B]`` with gradient to the model.
    :param drift: optional per-sample drift penalty ``[B]`` (e.g. distance to
        the reference model's output).
    :param drift_coef: weight of the drift term; ignored without ``drift``.
    :returns: ``(loss, {"reward": mean reward, "drift": mean drift or 0})``.
    """
    # Clark et al. 2023 (DRaFT), Prabhudesai et al. 2023 (AlignProp) and
    # Xu et al. 2023 (ImageReward's ReFL) all descend on -reward through the
    # (possibly truncated) sampling chain; the loss is the same, they differ in
    # which steps keep gradient, which is the trainer's business.
    reward = rewards.mean()
    loss = -reward
    drift_mean = rewards.new_zeros(())
    if drift is not None:
        drift_mean = drift.mean()
        loss = loss + drift_coef * drift_mean
    return loss, _detached(reward=reward, drift=drift_mean)


# ------------------------------------------------------------- advantages
# Standard deviations use correction=0 (the population std): groups are small,
# and the batch is the whole population being normalised, not a sample of one.


def per_condition_advantages(rewards: Tensor, condition_ids: Tensor, eps: float = 1e-6,
                             global_std: bool = False) -> Tensor:
    """Normalise rewards within each condition (prompt) of the batch.

    :param rewards: per-sample rewards ``[B]``.
    :param condition_ids: long ``[B]``; equal ids share a prompt.
    :param eps: added to the std to avoid dividing by zero.
    :param global_std: divide by the whole batch's std instead of the condition's (Flow-GRPO's
        ``global_std``): a condition whose samples score almost alike then gets small advantages
        instead of its reward noise scaled up to unit size.
    :returns: advantages ``[B]``: ``(r - mean_c) / (std_c + eps)``, or ``(r - mean_c) / (std_B + eps)``
        with ``global_std``. A condition seen only once uses the whole batch's mean and std.
    """
    # Black et al. 2023 (DDPO), per-prompt stat tracking, restricted to the
    # current batch instead of a running buffer of past rewards.
    if rewards.shape != condition_ids.shape or rewards.dim() != 1:
        raise ValueError(
            f"rewards and condition_ids must both be [B], got {tuple(rewards.shape)} and {tuple(condition_ids.shape)}"
        )
    batch_mean = rewards.mean()
    batch_std = rewards.std(correction=0)
    advantages = torch.empty_like(rewards)
    for cid in torch.unique(condition_ids):
        members = condition_ids == cid
        group = rewards[members]
        if group.numel() > 1:
            mean, std = group.mean(), batch_std if global_std else group.std(correction=0)
        else:
            mean, std = batch_mean, batch_std
        advantages[members] = (group - mean) / (std + eps)
    return advantages


def group_advantages(rewards: Tensor, group_size: int, eps: float = 1e-6, global_std: bool = False) -> Tensor:
    """Group-relative advantages over consecutive blocks of the batch.

    :param rewards: per-sample rewards ``[B]``, ``B`` divisible by
        ``group_size``; samples ``[k*G, (k+1)*G)`` share a prompt.
    :param group_size: samples per prompt ``G``.
    :param eps: added to the std to avoid dividing by zero.
    :param global_std: divide by the whole batch's std instead of each group's, as Flow-GRPO's
        ``global_std`` option does (Liu et al. 2025).
    :returns: advantages ``[B]``: ``(r - mean_g) / (std_g + eps)``, or ``(r - mean_g) / (std_B + eps)``
        with ``global_std``.
    """
    # Shao et al. 2024 (GRPO, DeepSeekMath), as applied to diffusion and
    # flow models by Liu et al. 2025 (Flow-GRPO) and Xue et al. 2025
    # (DanceGRPO).
    if group_size <= 0 or rewards.shape[0] % group_size != 0:
        raise ValueError(f"batch size {rewards.shape[0]} must be a positive multiple of group_size={group_size}")
    groups = rewards.reshape(-1, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    std = rewards.std(correction=0) if global_std else groups.std(dim=1, keepdim=True, correction=0)
    return ((groups - mean) / (std + eps)).reshape(rewards.shape)
