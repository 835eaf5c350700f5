"""Tests for prefdiff.losses.

Expected values are computed here from the papers' formulas with plain Python
``math`` on hand-picked numbers, never by calling the module under test.
"""

import math

import pytest
import torch
from torch.testing import assert_close

from prefdiff import losses

F64 = torch.float64


def t(values, dtype=F64, **kwargs):
    return torch.tensor(values, dtype=dtype, **kwargs)


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def mean(xs):
    return sum(xs) / len(xs)


def pop_std(xs):
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))


def assert_all_detached(metrics):
    for name, value in metrics.items():
        assert not value.requires_grad, name
        assert value.dim() == 0, name


# ------------------------------------------------------------------- helpers


def test_per_sample_mse_averages_non_batch_dims():
    pred = t([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]])
    target = t([[[0.0, 0.0], [0.0, 0.0]], [[1.0, -1.0], [2.0, 0.0]]])
    expected = [(1 + 4 + 9 + 16) / 4, (1 + 1 + 4 + 0) / 4]
    assert_close(losses.per_sample_mse(pred, target), t(expected))


def test_per_sample_mse_upcasts_half_precision():
    pred = torch.full((2, 3), 300.0, dtype=torch.float16)
    target = torch.zeros_like(pred)
    out = losses.per_sample_mse(pred, target)
    assert out.dtype == torch.float32
    # 300^2 = 90000 overflows float16 (max 65504).
    assert_close(out, torch.full((2,), 90000.0))


def test_per_sample_mse_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        losses.per_sample_mse(torch.zeros(2, 3), torch.zeros(2, 4))


# ----------------------------------------------------------------------- SFT


def test_sft_loss_is_mean_of_per_sample_mse():
    eps_pred = t([[1.0, 3.0], [2.0, 2.0], [0.0, -1.0]])
    eps = t([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    per_sample = [(1 + 9) / 2, (1 + 1) / 2, (0 + 4) / 2]
    loss, metrics = losses.sft_loss(eps_pred, eps)
    assert_close(loss, t(mean(per_sample)))
    assert_close(metrics["mse"], t(mean(per_sample)))


def test_sft_loss_uses_weights_as_given():
    eps_pred = t([[1.0, 3.0], [2.0, 2.0], [0.0, -1.0]])
    eps = t([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    per_sample = [5.0, 1.0, 2.0]
    weights = [0.5, 2.0, 4.0]  # mean != 1 on purpose: nothing is renormalised
    loss, metrics = losses.sft_loss(eps_pred, eps, t(weights))
    assert_close(loss, t(sum(w * m for w, m in zip(weights, per_sample)) / 3))
    assert_close(metrics["mse"], t(mean(per_sample)))


def test_sft_loss_rejects_misshaped_weights():
    with pytest.raises(ValueError, match="weights must have shape"):
        losses.sft_loss(torch.zeros(3, 2), torch.zeros(3, 2), torch.ones(3, 1))


def test_rwr_weights_match_exponential_weighting():
    rewards = [0.0, 1.0, 3.0, -2.0]
    temperature = 0.7
    exps = [math.exp(r / temperature) for r in rewards]
    expected = [len(rewards) * e / sum(exps) for e in exps]
    weights = losses.rwr_weights(t(rewards), temperature)
    assert_close(weights, t(expected))
    assert_close(weights.mean(), t(1.0))


def test_rwr_weights_carry_no_gradient():
    rewards = t([0.1, 0.2], requires_grad=True)
    assert not losses.rwr_weights(rewards, 1.0).requires_grad


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_rwr_weights_reject_non_positive_temperature(temperature):
    with pytest.raises(ValueError, match=r"^temperature must be > 0, got"):
        losses.rwr_weights(t([0.0, 1.0]), temperature)


# ----------------------------------------------------------------- Diffusion-DPO


def dpo_reference(mw, ml, rw, rl, beta):
    """Wallace et al. 2023 eq. 14 as scaled in the authors' code, per pair."""
    inside = [-0.5 * beta * ((a - b) - (c - d)) for a, b, c, d in zip(mw, ml, rw, rl)]
    loss = mean([-log_sigmoid(x) for x in inside])
    acc = mean([1.0 if x > 0 else 0.5 if x == 0 else 0.0 for x in inside])
    return loss, acc, mean(inside)


def test_diffusion_dpo_matches_formula():
    mw, ml = [0.10, 0.30, 0.25], [0.20, 0.10, 0.25]
    rw, rl = [0.15, 0.20, 0.30], [0.15, 0.20, 0.30]
    beta = 5.0
    loss, metrics = losses.diffusion_dpo_loss(t(mw), t(ml), t(rw), t(rl), beta)
    expected_loss, expected_acc, expected_margin = dpo_reference(mw, ml, rw, rl, beta)
    assert_close(loss, t(expected_loss))
    assert_close(metrics["implicit_acc"], t(expected_acc))
    assert_close(metrics["reward_margin"], t(expected_margin))
    assert_close(metrics["model_err_w"], t(mean(mw)))
    assert_close(metrics["model_err_l"], t(mean(ml)))
    # One winner, one loser, one tie.
    assert metrics["implicit_acc"].item() == pytest.approx(0.5)


def test_diffusion_dpo_is_ln2_when_model_equals_reference():
    err_w, err_l = t([0.3, 0.1, 0.7]), t([0.2, 0.5, 0.7])
    loss, metrics = losses.diffusion_dpo_loss(err_w, err_l, err_w, err_l, beta=2000.0)
    assert_close(loss, t(math.log(2.0)))
    assert_close(metrics["implicit_acc"], t(0.5))


def test_diffusion_dpo_decreases_when_winner_error_drops():
    ref_w, ref_l, model_l = t([0.2, 0.4]), t([0.3, 0.3]), t([0.3, 0.3])
    before, _ = losses.diffusion_dpo_loss(t([0.2, 0.4]), model_l, ref_w, ref_l, 10.0)
    after, _ = losses.diffusion_dpo_loss(t([0.1, 0.3]), model_l, ref_w, ref_l, 10.0)
    assert after < before


def test_diffusion_dpo_gradient_lowers_winner_and_raises_loser_error():
    model_w = t([0.2, 0.4], requires_grad=True)
    model_l = t([0.3, 0.3], requires_grad=True)
    loss, metrics = losses.diffusion_dpo_loss(model_w, model_l, t([0.2, 0.4]), t([0.3, 0.3]), 10.0)
    loss.backward()
    assert (model_w.grad > 0).all()  # descent lowers the winner's error
    assert (model_l.grad < 0).all()  # and raises the loser's
    assert_all_detached(metrics)


def test_diffusion_dpo_sft_weight_adds_the_winners_denoising_loss():
    mw, ml = [0.10, 0.30, 0.25], [0.20, 0.10, 0.25]
    rw, rl = [0.15, 0.20, 0.30], [0.15, 0.20, 0.30]
    model_w = t(mw, requires_grad=True)
    loss, _ = losses.diffusion_dpo_loss(model_w, t(ml), t(rw), t(rl), 5.0, sft_weight=2.0)
    expected, _, _ = dpo_reference(mw, ml, rw, rl, 5.0)
    assert_close(loss, t(expected + 2.0 * mean(mw)))
    # Against plain DPO, each winner's error gets 2 / B more gradient, the loser's none.
    loss.backward()
    plain_w = t(mw, requires_grad=True)
    losses.diffusion_dpo_loss(plain_w, t(ml), t(rw), t(rl), 5.0)[0].backward()
    assert_close(model_w.grad - plain_w.grad, t([2.0 / 3] * 3))
    with pytest.raises(ValueError, match=r"^sft_weight must be > 0"):
        losses.diffusion_dpo_loss(model_w, t(ml), t(rw), t(rl), 5.0, sft_weight=-1.0)


@pytest.mark.parametrize("beta", [0.0, -1.0])
def test_diffusion_dpo_rejects_non_positive_beta(beta):
    x = t([0.1])
    with pytest.raises(ValueError, match=r"^beta must be > 0, got"):
        losses.diffusion_dpo_loss(x, x, x, x, beta)


# ----------------------------------------------------------------------- KTO


def kto_reference(model, ref, desirable, beta, lam_d, lam_u, reference_point=None):
    rewards = [-beta * (m - r) for m, r in zip(model, ref)]
    z = max(mean(rewards) if reference_point is None else reference_point, 0.0)
    per = [
        lam_d * (1 - sigmoid(r - z)) if d else lam_u * (1 - sigmoid(z - r))
        for r, d in zip(rewards, desirable)
    ]
    return mean(per), z, rewards


def test_kto_matches_formula_with_positive_reference_point():
    model, ref = [0.10, 0.20, 0.15, 0.40], [0.30, 0.25, 0.10, 0.45]
    desirable = [True, False, True, False]
    beta, lam_d, lam_u = 3.0, 1.5, 0.7
    expected, z, rewards = kto_reference(model, ref, desirable, beta, lam_d, lam_u)
    assert z > 0  # the reference point is not clamped here
    loss, metrics = losses.kto_loss(t(model), t(ref), torch.tensor(desirable), beta, lam_d, lam_u)
    assert_close(loss, t(expected))
    assert_close(metrics["kl_ref"], t(z))
    assert_close(metrics["reward_desirable"], t(mean([rewards[0], rewards[2]])))
    assert_close(metrics["reward_undesirable"], t(mean([rewards[1], rewards[3]])))


def test_kto_takes_the_global_batchs_reference_point_when_given():
    # Under DDP each process holds part of the batch; z is the mean over all of them.
    model, ref = [0.10, 0.20, 0.15, 0.40], [0.30, 0.25, 0.10, 0.45]
    desirable = [True, False, True, False]
    expected, z, _ = kto_reference(model, ref, desirable, 3.0, 1.0, 1.0, reference_point=0.9)
    assert z == 0.9 and abs(expected - kto_reference(model, ref, desirable, 3.0, 1.0, 1.0)[0]) > 1e-3
    loss, metrics = losses.kto_loss(t(model), t(ref), torch.tensor(desirable), 3.0, reference_point=t(0.9))
    assert_close(loss, t(expected))
    assert_close(metrics["kl_ref"], t(0.9))
    _, metrics = losses.kto_loss(t(model), t(ref), torch.tensor(desirable), 3.0, reference_point=t(-0.2))
    assert_close(metrics["kl_ref"], t(0.0))


def test_kto_clamps_negative_reference_point_to_zero():
    # Policy worse than reference everywhere: mean reward < 0, so z = 0.
    model, ref = [0.5, 0.6, 0.4], [0.1, 0.2, 0.3]
    desirable = [True, False, False]
    beta = 2.0
    assert mean([-beta * (m - r) for m, r in zip(model, ref)]) < 0
    expected, z, _ = kto_reference(model, ref, desirable, beta, 1.0, 1.0)
    loss, metrics = losses.kto_loss(t(model), t(ref), torch.tensor(desirable), beta)
    assert z == 0.0
    assert_close(metrics["kl_ref"], t(0.0))
    assert_close(loss, t(expected))


def test_kto_reference_point_carries_no_gradient():
    # With z held constant, sample i's loss depends on its own error only:
    # d/dm_i of lam (1 - sigmoid(+-(r_i - z))) with r_i = -beta (m_i - ref_i).
    model, ref = [0.1, 0.2, 0.35], [0.3, 0.3, 0.3]
    desirable = [True, False, False]
    beta = 1.5
    rewards = [-beta * (m - r) for m, r in zip(model, ref)]
    z = max(mean(rewards), 0.0)
    assert z > 0  # so the clamp does not cut the gradient path by itself
    expected = []
    for r, d in zip(rewards, desirable):
        s = sigmoid(r - z) if d else sigmoid(z - r)
        expected.append((beta if d else -beta) * s * (1 - s) / len(model))
    model_t = t(model, requires_grad=True)
    loss, metrics = losses.kto_loss(model_t, t(ref), torch.tensor(desirable), beta)
    loss.backward()
    assert_close(model_t.grad, t(expected))
    assert_all_detached(metrics)


def test_kto_reports_zero_reward_for_absent_kind():
    _, metrics = losses.kto_loss(t([0.1, 0.2]), t([0.3, 0.3]), torch.tensor([True, True]), 1.0)
    assert_close(metrics["reward_undesirable"], t(0.0))


def test_kto_rejects_bad_inputs():
    x = t([0.1])
    with pytest.raises(ValueError, match=r"^beta must be > 0, got"):
        losses.kto_loss(x, x, torch.tensor([True]), 0.0)
    with pytest.raises(ValueError, match="bool"):
        losses.kto_loss(x, x, torch.tensor([1]), 1.0)


# ---------------------------------------------------------------------- D3PO


def test_d3po_matches_formula():
    lw, ll = [-1.0, -2.0, -0.5], [-1.5, -1.0, -0.5]
    rw, rl = [-1.2, -1.8, -0.7], [-1.4, -1.1, -0.7]
    beta = 0.3
    logits = [beta * ((a - c) - (b - d)) for a, b, c, d in zip(lw, ll, rw, rl)]
    loss, metrics = losses.d3po_loss(t(lw), t(ll), t(rw), t(rl), beta)
    assert_close(loss, t(mean([-log_sigmoid(x) for x in logits])))
    assert_close(metrics["margin"], t(mean(logits)))
    assert_close(metrics["implicit_acc"], t(mean([1.0 if x > 0 else 0.5 if x == 0 else 0.0 for x in logits])))


def test_d3po_a_tied_pair_adds_log_2_and_no_gradient():
    lw, ll, ref = t([-1.0, -2.0, -0.5], requires_grad=True), t([-1.5, -1.0, -3.0]), t([-1.2, -1.8, -0.7])
    beta = 0.3
    loss, _ = losses.d3po_loss(lw, ll, ref, ref, beta, decided=torch.tensor([True, False, True]))
    logits = [beta * ((a - c) - (b - d)) for a, b, c, d in zip([-1.0, -2.0, -0.5], [-1.5, -1.0, -3.0],
                                                                 [-1.2, -1.8, -0.7], [-1.2, -1.8, -0.7])]
    assert_close(loss, t(mean([-log_sigmoid(logits[0]), math.log(2.0), -log_sigmoid(logits[2])])))
    loss.backward()
    assert lw.grad[1] == 0 and lw.grad[0] < 0 and lw.grad[2] < 0
    # [B, T] log-probs of several steps: the pair's mask covers all of its steps
    many = t([[-1.0, -2.0], [-0.5, -0.3]], requires_grad=True)
    loss, _ = losses.d3po_loss(many, many.detach() - 1, many.detach(), many.detach(), beta,
                               decided=torch.tensor([False, True]))
    loss.backward()
    assert (many.grad[0] == 0).all() and (many.grad[1] < 0).all()


def test_d3po_gradient_raises_winner_log_prob():
    logp_w = t([-1.0, -2.0], requires_grad=True)
    logp_l = t([-1.0, -2.0], requires_grad=True)
    ref = t([-1.0, -2.0])
    loss, metrics = losses.d3po_loss(logp_w, logp_l, ref, ref, 0.5)
    assert_close(loss, t(math.log(2.0)))
    loss.backward()
    assert (logp_w.grad < 0).all()
    assert (logp_l.grad > 0).all()
    assert_all_detached(metrics)


def test_d3po_ratio_clip_clamps_each_ratio_and_stops_its_gradient_outside():
    eps, beta = 0.1, 2.0
    ref = t([-1.0, -1.0, -1.0])
    # log-ratios: winner +0.05 (inside), +0.3 (above 1 + eps), -0.02; loser -0.3 (below 1 - eps), 0.0, +0.08
    logp_w = t([-0.95, -0.7, -1.02], requires_grad=True)
    logp_l = t([-1.3, -1.0, -0.92], requires_grad=True)
    loss, metrics = losses.d3po_loss(logp_w, logp_l, ref, ref, beta, ratio_clip=eps)
    clamp = lambda x: min(max(x, math.log(1 - eps)), math.log(1 + eps))  # noqa: E731
    logits = [beta * (clamp(w) - clamp(lo)) for w, lo in zip([0.05, 0.3, -0.02], [-0.3, 0.0, 0.08])]
    assert_close(loss, t(mean([-log_sigmoid(x) for x in logits])))
    assert_close(metrics["margin"], t(mean(logits)))
    loss.backward()
    assert logp_w.grad[1] == 0 and logp_l.grad[0] == 0  # clamped: no gradient
    assert logp_w.grad[0] < 0 and logp_w.grad[2] < 0 and logp_l.grad[1] > 0 and logp_l.grad[2] > 0
    unclipped, _ = losses.d3po_loss(logp_w, logp_l, ref, ref, beta)
    assert not torch.isclose(unclipped, loss)
    with pytest.raises(ValueError, match=r"^ratio_clip must be in \(0, 1\), got 1.5"):
        losses.d3po_loss(ref, ref, ref, ref, beta, ratio_clip=1.5)


def test_d3po_rejects_non_positive_beta():
    x = t([0.1])
    with pytest.raises(ValueError, match=r"^beta must be > 0, got"):
        losses.d3po_loss(x, x, x, x, -0.1)


# ----------------------------------------------------------------- PPO / DDPO


def test_ppo_clip_matches_formula():
    log_prob = [0.0, 0.5, -0.5, 0.05]
    old = [0.0, 0.0, 0.0, 0.0]
    adv = [1.0, 2.0, -1.0, -0.5]
    clip = 0.2
    per = []
    for lp, o, a in zip(log_prob, old, adv):
        ratio = math.exp(lp - o)
        per.append(max(-a * ratio, -a * min(max(ratio, 1 - clip), 1 + clip)))
    ratios = [math.exp(lp - o) for lp, o in zip(log_prob, old)]
    loss, metrics = losses.ppo_clip_loss(t(log_prob), t(old), t(adv), clip)
    assert_close(loss, t(mean(per)))
    assert_close(metrics["approx_kl"], t(0.5 * mean([(lp - o) ** 2 for lp, o in zip(log_prob, old)])))
    assert_close(metrics["clipfrac"], t(mean([1.0 if abs(r - 1) > clip else 0.0 for r in ratios])))
    assert_close(metrics["ratio"], t(mean(ratios)))
    assert metrics["clipfrac"].item() == pytest.approx(0.5)


def test_ppo_positive_advantage_pushes_log_prob_up_until_clipped():
    # Sample 0 is inside the clip range, sample 1 beyond 1 + clip.
    log_prob = t([0.05, 0.5], requires_grad=True)
    loss, metrics = losses.ppo_clip_loss(log_prob, t([0.0, 0.0]), t([1.0, 1.0]), 0.2)
    loss.backward()
    assert log_prob.grad[0] < 0
    assert_close(log_prob.grad[0], t(-math.exp(0.05) / 2))
    assert log_prob.grad[1] == 0
    assert_all_detached(metrics)


def test_ppo_negative_advantage_pushes_log_prob_down_until_clipped():
    # Sample 1 is below 1 - clip, where a negative advantage is clipped.
    log_prob = t([-0.05, -0.5], requires_grad=True)
    loss, _ = losses.ppo_clip_loss(log_prob, t([0.0, 0.0]), t([-1.0, -1.0]), 0.2)
    loss.backward()
    assert log_prob.grad[0] > 0
    assert log_prob.grad[1] == 0


def test_ppo_rejects_non_positive_clip_range():
    x = t([0.0])
    with pytest.raises(ValueError, match=r"^clip_range must be > 0, got"):
        losses.ppo_clip_loss(x, x, x, 0.0)


# ---------------------------------------------------------------------- DPOK


def test_policy_gradient_kl_matches_formula():
    log_prob, adv, kl = [-1.0, -0.2, 0.3], [0.5, -1.0, 2.0], [0.1, 0.4, 0.0]
    kl_coef = 0.25
    pg = mean([-a * lp for a, lp in zip(adv, log_prob)])
    loss, metrics = losses.policy_gradient_kl_loss(t(log_prob), t(adv), t(kl), kl_coef)
    assert_close(loss, t(pg + kl_coef * mean(kl)))
    assert_close(metrics["pg"], t(pg))
    assert_close(metrics["kl"], t(mean(kl)))


def test_policy_gradient_kl_gradient_signs():
    log_prob = t([0.0, 0.0], requires_grad=True)
    kl = t([0.2, 0.2], requires_grad=True)
    loss, metrics = losses.policy_gradient_kl_loss(log_prob, t([1.0, -1.0]), kl, 0.5)
    loss.backward()
    assert log_prob.grad[0] < 0 < log_prob.grad[1]
    assert_close(kl.grad, t([0.25, 0.25]))
    assert_all_detached(metrics)


def test_gaussian_kl_matches_formula_per_sample():
    mean_p = t([[[1.0, 2.0], [0.0, 0.5]], [[0.0, 0.0], [0.0, 0.0]]])
    mean_q = t([[[0.0, 2.0], [1.0, 0.0]], [[0.3, -0.3], [0.0, 0.6]]])
    std = 0.5
    expected = []
    for b in range(2):
        total = 0.0
        for i in range(2):
            for j in range(2):
                total += (mean_p[b, i, j].item() - mean_q[b, i, j].item()) ** 2 / (2 * std**2)
        expected.append(total / 4)
    assert_close(losses.gaussian_kl(mean_p, mean_q, t(std)), t(expected))
    assert_close(losses.gaussian_kl(mean_p, mean_q, std), t(expected))


def test_gaussian_kl_takes_per_sample_std_and_is_zero_for_equal_means():
    mean_p = t([[1.0, 2.0], [3.0, 4.0]])
    mean_q = t([[0.0, 2.0], [3.0, 2.0]])
    std = t([[1.0], [2.0]])
    expected = [(1.0 / 2) / 2, (4.0 / 8) / 2]
    assert_close(losses.gaussian_kl(mean_p, mean_q, std), t(expected))
    assert_close(losses.gaussian_kl(mean_p, mean_p, std), t([0.0, 0.0]))


# ------------------------------------------------------------- reward backprop


def test_reward_backprop_matches_formula():
    rewards, drift = [0.2, 0.8, -0.1], [1.0, 0.0, 2.0]
    loss, metrics = losses.reward_backprop_loss(t(rewards), t(drift), drift_coef=0.1)
    assert_close(loss, t(-mean(rewards) + 0.1 * mean(drift)))
    assert_close(metrics["reward"], t(mean(rewards)))
    assert_close(metrics["drift"], t(mean(drift)))


def test_reward_backprop_without_drift_ascends_reward():
    rewards = t([0.2, 0.8], requires_grad=True)
    loss, metrics = losses.reward_backprop_loss(rewards)
    assert_close(loss, t(-0.5))
    assert_close(metrics["drift"], t(0.0))
    loss.backward()
    assert_close(rewards.grad, t([-0.5, -0.5]))
    assert_all_detached(metrics)


# ----------------------------------------------------------------- advantages


def test_per_condition_advantages_normalise_within_condition():
    rewards = [1.0, 3.0, 10.0, 2.0, 14.0, 5.0]
    ids = [0, 0, 1, 0, 1, 2]  # condition 2 is seen once
    expected = []
    for r, c in zip(rewards, ids):
        group = [x for x, d in zip(rewards, ids) if d == c]
        pool = group if len(group) > 1 else rewards
        expected.append((r - mean(pool)) / (pop_std(pool) + 1e-6))
    out = losses.per_condition_advantages(t(rewards), torch.tensor(ids))
    assert_close(out, t(expected))
    # The singleton uses the batch statistics, not its own (which would give 0).
    assert out[5].abs() > 0.1


def test_per_condition_advantages_reject_misshaped_inputs():
    with pytest.raises(ValueError, match="must both be"):
        losses.per_condition_advantages(t([1.0, 2.0]), torch.tensor([0, 0, 1]))


def test_group_advantages_match_formula_and_are_centred():
    rewards = [1.0, 2.0, 4.0, 0.5, 0.5, 3.5]
    out = losses.group_advantages(t(rewards), group_size=3)
    expected = []
    for k in range(2):
        group = rewards[3 * k : 3 * k + 3]
        expected += [(r - mean(group)) / (pop_std(group) + 1e-6) for r in group]
    assert_close(out, t(expected))
    assert_close(out.reshape(2, 3).mean(dim=1), t([0.0, 0.0]))


def test_global_std_divides_by_the_batch_std():
    # Flow-GRPO's global_std: centred per group, scaled by the std of the whole batch. A near-tie
    # group (0.5, 0.51) keeps small advantages instead of being scaled up to +-1.
    rewards = [1.0, 2.0, 4.0, 0.5, 0.51, 3.5]
    batch = pop_std(rewards)
    expected = []
    for k in range(2):
        group = rewards[3 * k : 3 * k + 3]
        expected += [(r - mean(group)) / (batch + 1e-6) for r in group]
    assert_close(losses.group_advantages(t(rewards), group_size=3, global_std=True), t(expected))
    ids = torch.tensor([0, 0, 0, 1, 1, 1])
    assert_close(losses.per_condition_advantages(t(rewards), ids, global_std=True), t(expected))
    tie = losses.group_advantages(t([0.5, 0.51, 3.0, 1.0]), group_size=2, global_std=True)
    assert tie[:2].abs().max() < 0.01


def test_group_advantages_of_constant_group_are_zero():
    out = losses.group_advantages(t([2.0, 2.0, 1.0, 3.0]), group_size=2)
    assert_close(out[:2], t([0.0, 0.0]))


@pytest.mark.parametrize("group_size", [3, 0])
def test_group_advantages_reject_bad_group_size(group_size):
    with pytest.raises(ValueError, match="positive multiple of group_size="):
        losses.group_advantages(t([1.0, 2.0, 3.0, 4.0]), group_size)


def test_gaussian_kl_is_zero_on_a_deterministic_step():
    # DDIM's last step onto alpha = 1 has std 0: no KL, and no NaN to poison the run.
    from prefdiff.losses import gaussian_kl

    mean = torch.randn(2, 3, 4, 4)
    std = torch.tensor([0.0, 0.5]).view(2, 1, 1, 1)
    kl = gaussian_kl(mean, mean + 0.1, std)
    assert torch.isfinite(kl).all()
    assert kl[0] == 0 and torch.isclose(kl[1], torch.tensor(0.1**2 / (2 * 0.25)))
