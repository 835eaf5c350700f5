"""Each trainer family pushes the model the right way: winners win, higher rewards weigh more.

A sign or an index swapped inside a trainer leaves every loss finite and every
shape right; these tests catch it by recording what each trainer hands its loss
(the pure functions of prefdiff.losses, tested on their own in test_losses.py)
and checking it against what the test knows: which sample won, which scored
higher. Where a recording cannot tell, a few steps on a toy must move the model
in the known direction.
"""

import inspect
import math

import pytest
import torch

from prefdiff import hookimpl
from prefdiff.datamodule import PrefDataModule
from prefdiff.errors import UserError
from prefdiff.losses import diffusion_dpo_loss, per_sample_mse
from prefdiff.models import reference_mode
from prefdiff.quiet import quiet_trainer
from prefdiff.testing import registered_plugin
from prefdiff.trainers import METHODS, online_pairs, pairs, policy_gradient, sft

TINY = dict(kind="unet2d", sample_size=8, channels=3, conditioning="class", num_classes=4,
            block_out_channels=(8, 16), norm_num_groups=8)
COMMON = dict(model=TINY, conditioner="class_label", num_steps=4, seed=0, lr=1e-3)


def build(method, **options):
    """A fresh module of ``method`` on a tiny random model, the same for the same options."""
    cls, fixed = METHODS[method]
    torch.manual_seed(0)
    return cls(**{**COMMON, **fixed, **options})


def record(monkeypatch, owner, name):
    """Replace ``owner.name`` by a spy that calls it; returns the list of its calls' arguments by name."""
    original = getattr(owner, name)
    signature = inspect.signature(original)
    calls = []

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append({**signature.bind(*args, **kwargs).arguments, "returned": out})
        return out

    monkeypatch.setattr(owner, name, spy)
    return calls


def images(n, seed):
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def fit(module, items, steps=1, batch=2):
    quiet_trainer(steps).fit(module, datamodule=PrefDataModule.from_datasets(items, batch_size=batch))


def conditions(n):
    return [{"cond": torch.tensor(i % 4)} for i in range(n)]


# ------------------------------------------------------------------ pairs


def test_dpo_sft_weight_reaches_the_loss(monkeypatch):
    module = build("dpo", beta=100.0, sft_weight=0.5)
    calls = record(monkeypatch, pairs, "diffusion_dpo_loss")
    module.training_step({"x_w": images(4, seed=1), "x_l": images(4, seed=2), "cond": torch.arange(4)}, 0)
    assert calls[0]["sft_weight"] == 0.5


def test_dpo_passes_the_winners_error_first(monkeypatch):
    module = build("dpo", beta=100.0)
    calls = record(monkeypatch, pairs, "diffusion_dpo_loss")
    x_w, x_l, cond = images(4, seed=1), images(4, seed=2), torch.arange(4)
    # Winner and loser share timestep and noise, and a step's draw is fixed by the
    # seed and step: a batch whose loser is the winner again gives the winner's errors.
    module.training_step({"x_w": x_w, "x_l": x_l, "cond": cond}, 0)
    module.training_step({"x_w": x_w, "x_l": x_w, "cond": cond}, 0)
    real, winner_twice = calls
    torch.testing.assert_close(real["model_err_w"], winner_twice["model_err_w"], rtol=1e-6, atol=0)
    torch.testing.assert_close(real["ref_err_w"], winner_twice["ref_err_w"], rtol=1e-6, atol=0)
    assert (real["model_err_l"] - winner_twice["model_err_l"]).abs().min() > 1e-3


def test_kto_marks_the_winner_desirable(monkeypatch):
    module = build("kto", beta=100.0)
    calls = record(monkeypatch, pairs, "kto_loss")
    x_w, x_l, cond = images(4, seed=1), images(4, seed=2), torch.arange(4)
    module.training_step({"x_w": x_w, "x_l": x_l, "cond": cond}, 0)
    module.training_step({"x_w": x_w, "x_l": x_w, "cond": cond}, 0)
    real, winner_twice = calls
    liked = real["desirable"]
    assert liked.sum() == 4 and torch.equal(liked, winner_twice["desirable"])
    torch.testing.assert_close(real["model_err"][liked], winner_twice["model_err"][liked], rtol=1e-6, atol=0)
    assert (real["model_err"][~liked] - winner_twice["model_err"][~liked]).abs().min() > 1e-3


def test_one_dpo_step_gives_the_true_winner_a_positive_implicit_reward(monkeypatch):
    # With a fresh adapter the loss is ln 2 whichever sample the trainer calls the
    # winner; only after a step does the implicit reward margin show the direction.
    beta = 5000.0
    module = build("dpo", beta=beta)
    noised = record(monkeypatch, module.noise_scheduler, "add_noise")
    x_w, x_l, cond = images(4, seed=1), images(4, seed=2), torch.arange(4)
    loss = module.training_step({"x_w": x_w, "x_l": x_l, "cond": cond}, 0)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    optimizer = module.configure_optimizers()
    loss.backward()
    optimizer.step()

    (step,) = noised  # the trainer's timesteps and noise; the roles are the test's own
    x0, x_t, eps, t = step["original_samples"], step["returned"], step["noise"], step["timesteps"]
    assert torch.equal(x0, torch.cat([x_w, x_l]))
    with torch.no_grad():
        model_err = per_sample_mse(module.denoiser(x_t, t, torch.cat([cond, cond])), eps)
        with reference_mode(module.denoiser):
            ref_err = per_sample_mse(module.denoiser(x_t, t, torch.cat([cond, cond])), eps)
    _, metrics = diffusion_dpo_loss(model_err[:4], model_err[4:], ref_err[:4], ref_err[4:], beta)
    assert metrics["reward_margin"] > 0
    assert metrics["implicit_acc"] == 1.0


def test_d3po_prefers_the_trajectory_with_the_higher_reward(monkeypatch):
    module = build("d3po", reward="smoothness")
    sampled = record(monkeypatch, module, "run_sampler")
    scored = record(monkeypatch, module, "score")
    losses = record(monkeypatch, online_pairs, "d3po_loss")
    fit(module, conditions(2))

    out = sampled[0]["returned"]
    rewards = scored[0]["returned"][0].view(-1, 2)  # two trajectories per condition
    winner = torch.arange(0, 4, 2) + (rewards[:, 1] > rewards[:, 0]).long()
    loser = torch.arange(0, 4, 2) + (rewards[:, 1] <= rewards[:, 0]).long()
    assert (rewards[:, 0] != rewards[:, 1]).all()
    # A fresh adapter is the sampling policy: each call's log-probs are the sampler's
    # own for one step j, the winners' first.
    log_probs = out.log_probs
    informative = 0
    for call in losses:
        steps = [j for j in range(log_probs.shape[1])
                 if torch.allclose(call["logp_w"], log_probs[winner, j], atol=1e-4)
                 and torch.allclose(call["logp_l"], log_probs[loser, j], atol=1e-4)]
        assert steps, "d3po_loss got log-probs that are not the winners' then the losers'"
        informative += bool((log_probs[winner, steps[0]] - log_probs[loser, steps[0]]).abs().min() > 1e-3)
    assert informative >= 2


class HalfBright:
    """A pass/fail reward: 1 where a sample's mean is above 0. Pairs of one outcome tie."""

    @hookimpl
    def prefdiff_register_rewards(self, register):
        register("half_bright", lambda: lambda samples, cond: ((samples.flatten(1).mean(1) > 0).float(), {}))


def test_d3po_pairs_that_tie_have_no_winner_and_give_no_gradient(monkeypatch):
    with registered_plugin(HalfBright(), "half-bright-plugin"):
        module = build("d3po", reward="half_bright")
        scored = record(monkeypatch, module, "score")
        losses = record(monkeypatch, online_pairs, "d3po_loss")
        fit(module, conditions(4), batch=4)
    rewards = scored[0]["returned"][0].view(-1, 2)
    ties = rewards[:, 0] == rewards[:, 1]
    assert ties.any()  # pass/fail rewards tie often: 4 pairs, not all decided (seed 0)
    for call in losses:
        assert torch.equal(call["decided"], ~ties)
    # A tie adds log 2 and nothing to learn from, whichever of its two is handed as the winner.
    logp = torch.randn(4, requires_grad=True)
    loss, _ = online_pairs.d3po_loss(logp, torch.zeros(4), torch.zeros(4), torch.zeros(4), 1.0, None, ~ties)
    loss.backward()
    assert (logp.grad[ties] == 0).all() and (logp.grad[~ties] != 0).all()


@pytest.mark.parametrize("shared", [True, False])
def test_d3po_pairs_start_from_one_noise_as_the_authors_sample_them(monkeypatch, shared):
    module = build("d3po", reward="smoothness", shared_noise=shared)
    sampled = record(monkeypatch, module, "run_sampler")
    fit(module, conditions(2))
    starts = sampled[0]["returned"].latents[:, 0]  # conditions c0, c0, c1, c1: pairs are consecutive rows
    assert torch.equal(starts[0], starts[1]) == shared and torch.equal(starts[2], starts[3]) == shared
    assert not torch.equal(starts[0], starts[2])
    assert not torch.equal(sampled[0]["returned"].samples[0], sampled[0]["returned"].samples[1])


def test_d3po_hands_its_ratio_clip_to_the_loss(monkeypatch):
    module = build("d3po", reward="smoothness", ratio_clip=0.1)
    losses = record(monkeypatch, online_pairs, "d3po_loss")
    fit(module, conditions(2))
    assert losses and all(call["ratio_clip"] == 0.1 for call in losses)
    with pytest.raises(UserError, match=r"--model.ratio_clip must be in \(0, 1\)"):
        build("d3po", reward="smoothness", ratio_clip=0.0)


# -------------------------------------------------------- policy gradient


@pytest.mark.parametrize("method, loss_name", [
    ("ddpo", "ppo_clip_loss"), ("grpo", "ppo_clip_loss"), ("dpok", "policy_gradient_kl_loss"),
])
def test_advantages_rise_with_the_reward(monkeypatch, method, loss_name):
    k = 4
    module = build(method, reward="smoothness", samples_per_condition=k, kl_coef=0.1)
    scored = record(monkeypatch, module, "score")
    losses = record(monkeypatch, policy_gradient, loss_name)
    fit(module, conditions(2))

    rewards = scored[0]["returned"][0]
    advantages = losses[0]["advantages"]
    assert all(torch.equal(call["advantages"], advantages) for call in losses)
    assert torch.corrcoef(torch.stack([rewards, advantages]))[0, 1] > 0.5
    for group in range(rewards.shape[0] // k):  # the samples of one condition
        r, a = rewards[group * k:(group + 1) * k], advantages[group * k:(group + 1) * k]
        assert torch.equal(torch.argsort(a), torch.argsort(r)), (r, a)


# ----------------------------------------------------------- reward backprop


class Brightness:
    """A differentiable toy reward: the mean pixel value, raised by brightening everything."""

    @hookimpl
    def prefdiff_register_rewards(self, register):
        register("brightness", lambda: lambda samples, cond: (samples.flatten(1).mean(1), {}),
                 differentiable=True)


@pytest.mark.parametrize("method, options", [
    ("draft", {"k": 2}), ("alignprop", {"k": 3}), ("refl", {}),
])
def test_reward_backprop_raises_a_differentiable_reward(method, options):
    with registered_plugin(Brightness(), "brightness-plugin"):
        module = build(method, reward="brightness", lr=3e-2, **options)

        def mean_reward():
            generator = torch.Generator().manual_seed(123)
            with torch.no_grad():
                samples = module.run_sampler(torch.arange(4), 4, generator, eta=0.0).samples
            return module.reward_fn(samples)[0].mean().item()

        before = mean_reward()
        fit(module, conditions(8), steps=3, batch=4)
        assert mean_reward() > before + 0.05


@pytest.mark.parametrize("method, options, grad_calls", [
    # DRaFT-2 samples 2 steps without gradients and 2 with (each recomputed in backward: checkpointing);
    # ReFL samples all 4 steps without gradients, then predicts x_0 from one of them in a single call.
    ("draft", {"k": 2}, [False, False, True, True, True, True]),
    ("refl", {}, [False, False, False, False, True]),
])
def test_reward_backprop_takes_its_methods_gradient_path(method, options, grad_calls):
    with registered_plugin(Brightness(), "brightness-plugin"):
        module = build(method, reward="brightness", **options)
        seen = []
        module.denoiser.net.register_forward_pre_hook(lambda net, args: seen.append(torch.is_grad_enabled()))
        fit(module, conditions(4), steps=1, batch=4)
    assert seen == grad_calls


# ------------------------------------------------------------------- RWR


def test_rwr_weighs_higher_rewards_more(monkeypatch):
    module = build("rwr", temperature=0.5)
    calls = record(monkeypatch, sft, "sft_loss")
    rewards = torch.tensor([0.3, -1.0, 2.0, 0.9])
    module.training_step({"x0": images(4, seed=1), "cond": torch.arange(4), "reward": rewards}, 0)
    weights = calls[0]["weights"]
    assert torch.equal(torch.argsort(weights), torch.argsort(rewards))
    assert weights.mean().item() == pytest.approx(1.0)
