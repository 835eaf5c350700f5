"""Each trainer family runs, updates only the adapter, and uses the right objective."""

import math

import pytest
import pytorch_lightning as pl
import torch

from prefdiff import hookimpl
from prefdiff.datamodule import PrefDataModule
from prefdiff.errors import PluginError, UserError
from prefdiff.models import save_model
from prefdiff.testing import registered_plugin
from prefdiff.trainers import TrainingData

TINY = dict(kind="unet2d", sample_size=8, channels=3, conditioning="class", num_classes=4,
            block_out_channels=(8, 16), norm_num_groups=8)
COMMON = dict(conditioner="class_label", num_steps=4, seed=0, lr=1e-3)


class Conditions(torch.utils.data.Dataset):
    def __init__(self, n=16, with_pairs=False):
        g = torch.Generator().manual_seed(0)
        self.items = []
        for i in range(n):
            item = {"cond": torch.tensor(i % 4), "x0": torch.rand(3, 8, 8, generator=g) * 2 - 1}
            if with_pairs:
                item.update(x_w=torch.zeros(3, 8, 8), x_l=torch.rand(3, 8, 8, generator=g) * 2 - 1)
            self.items.append(item)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "model"
    torch.manual_seed(0)
    from prefdiff.models import build_denoiser

    save_model(build_denoiser(TINY), path)
    return str(path)


def _fit(module, dataset, steps=2, batch=4):
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=PrefDataModule.from_datasets(dataset, batch_size=batch))
    return trainer


def _lora(module):
    return {n: p.detach().clone() for n, p in module.denoiser.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method, extra", [
    ("sft", {}), ("rwr", {}), ("dpo", {"beta": 100.0}), ("kto", {"beta": 100.0}), ("d3po", {}),
    ("ddpo", {"samples_per_condition": 2}), ("dpok", {"samples_per_condition": 2, "kl_coef": 0.1}),
    ("grpo", {"samples_per_condition": 2, "kl_coef": 0.01}),
    ("draft", {"reward": "smoothness", "k": 2, "drift_coef": 0.1}),
    ("alignprop", {"reward": "smoothness", "k": 3}), ("refl", {"reward": "smoothness"}),
])
def test_every_method_trains_only_the_adapter(base, method, extra):
    from prefdiff.trainers import METHODS

    cls, fixed = METHODS[method]
    options = {**COMMON, **fixed, **extra}
    if cls.uses_reward(**fixed):
        options.setdefault("reward", "jpeg_compressibility")
    module = cls(base=base, **options)
    before = {n: p.detach().clone() for n, p in module.denoiser.named_parameters()}
    adapter = {n for n in before if "lora_" in n}
    assert adapter and set(_lora(module)) == adapter, f"{method} trains other weights than the adapter's"
    data_kind = cls.training_data(**fixed)
    data = Conditions(with_pairs=data_kind is TrainingData.PAIRS)
    if data_kind is TrainingData.SCORED_SAMPLES:
        for i, item in enumerate(data.items):
            item["reward"] = torch.tensor(float(i))
    _fit(module, data)
    changed = {n for n, p in module.denoiser.named_parameters() if not torch.equal(before[n], p)}
    assert not changed - adapter, f"{method} changed base weights {sorted(changed - adapter)[:3]}"
    # peft starts B at zero, so every B gets gradient in the first step and every A
    # from the second. A few A's of ReFL's single late timestep get gradients below
    # Adam's eps (the time-embedding projections), hence a fraction for A.
    lora_b = {n for n in adapter if "lora_B" in n}
    lora_a = adapter - lora_b
    assert lora_b <= changed, f"{method} left {sorted(lora_b - changed)[:3]} unchanged"
    assert len(lora_a & changed) >= 0.8 * len(lora_a), f"{method} left {sorted(lora_a - changed)[:3]} unchanged"
    if data_kind is TrainingData.CONDITIONS:  # online methods query the reward themselves
        assert module.reward_queries > 0


def test_dpo_loss_is_ln2_with_a_fresh_adapter(base):
    from prefdiff.trainers import PairModule

    module = PairModule(base=base, objective="dpo", beta=5000.0, **COMMON)
    batch = torch.utils.data.default_collate([Conditions(4, with_pairs=True)[i] for i in range(4)])
    loss = module.training_step(batch, 0)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    # ln 2 holds whichever sample the trainer takes for the winner; the direction is
    # tested by test_trainer_direction.py::test_one_dpo_step_gives_the_true_winner_a_positive_implicit_reward.


@pytest.mark.parametrize("method", ["ddpo", "sft", "dpo"])
def test_max_grad_norm_bounds_every_optimizer_step(base, method):
    from prefdiff.trainers import METHODS

    cls, fixed = METHODS[method]
    extra = {"reward": "smoothness", "samples_per_condition": 2} if method == "ddpo" else {}
    module = cls(base=base, **{**COMMON, **fixed, **extra, "max_grad_norm": 1e-4})
    norms = []
    configure = module.configure_optimizers

    def configure_and_watch():
        optimizer = configure()
        optimizer.register_step_post_hook(lambda opt, args, kwargs: norms.append(torch.linalg.vector_norm(
            torch.stack([p.grad.norm() for group in opt.param_groups for p in group["params"]
                         if p.grad is not None]))))
        return optimizer

    module.configure_optimizers = configure_and_watch
    _fit(module, Conditions(with_pairs=method == "dpo"))
    assert len(norms) == 2
    assert all(norm <= 1e-4 * (1 + 1e-4) for norm in norms), norms


class NaNReward:
    @hookimpl
    def prefdiff_register_rewards(self, register):
        register("nan_reward", lambda: lambda s, c: (torch.full((s.shape[0],), float("nan")), {}))


def test_a_nan_reward_stops_the_run_before_any_update(base):
    from prefdiff.trainers import PolicyGradientModule

    with registered_plugin(NaNReward(), "nan-plugin"):
        module = PolicyGradientModule(base=base, reward="nan_reward", samples_per_condition=2, **COMMON)
        before = _lora(module)
        with pytest.raises(PluginError, match="reward 'nan_reward' \\(plugin 'nan-plugin'\\).*NaN"):
            _fit(module, Conditions())
        after = _lora(module)
        assert all(torch.equal(before[n], after[n]) for n in before)


def test_reward_backprop_needs_a_differentiable_reward(base):
    from prefdiff.trainers import RewardBackpropModule

    module = RewardBackpropModule(base=base, reward="jpeg_compressibility", **COMMON)
    with pytest.raises(UserError, match="not differentiable"):
        _fit(module, Conditions())


@pytest.mark.parametrize("method, truncation, sampled", [
    ("draft", None, "last_k"), ("alignprop", None, "random_k"), ("alignprop", "per_step", "per_step"),
    ("draft", "random_k", "random_k"),
])
def test_reward_backprop_samples_with_its_truncation(base, method, truncation, sampled):
    from prefdiff.trainers import RewardBackpropModule

    module = RewardBackpropModule(base=base, method=method, k=3, truncation=truncation, reward="smoothness",
                                  **COMMON)
    seen = []
    run_sampler = module.run_sampler

    def watched(*args, **kwargs):
        seen.append(kwargs.get("truncation"))
        return run_sampler(*args, **kwargs)

    module.run_sampler = watched
    _fit(module, Conditions(), steps=1)
    assert seen == [sampled]


def test_bad_options_are_user_errors(base):
    from prefdiff.trainers import PairModule, PolicyGradientModule, RewardBackpropModule

    with pytest.raises(UserError, match="--model.beta must be > 0"):
        PairModule(base=base, beta=-1.0, **COMMON)
    with pytest.raises(UserError, match="--model.method must be one of"):
        PolicyGradientModule(base=base, method="ppo", **COMMON)
    with pytest.raises(UserError, match="unknown reward 'nope'"):
        PolicyGradientModule(base=base, reward="nope", **COMMON)
    with pytest.raises(UserError, match="exactly one of"):
        PolicyGradientModule(**COMMON)
    with pytest.raises(UserError, match="global_std applies to ddpo and grpo"):
        PolicyGradientModule(base=base, method="dpok", global_std=True, **COMMON)
    with pytest.raises(UserError, match="--model.truncation must be one of last_k, random_k, per_step"):
        RewardBackpropModule(base=base, method="alignprop", truncation="trl", **COMMON)
    with pytest.raises(UserError, match="--model.truncation applies to draft and alignprop"):
        RewardBackpropModule(base=base, method="refl", truncation="per_step", **COMMON)


def test_empty_dataset_is_a_user_error(base):
    from prefdiff.trainers import SFTModule

    with pytest.raises(UserError, match="empty"):
        _fit(SFTModule(base=base, **COMMON), Conditions(0))


def test_ranks_sample_differently_and_share_the_data_draws(base, monkeypatch):
    """Online methods: each rank samples its own noise. Data methods: one draw for the global
    batch, each rank keeping its slice (docs/scaling.md)."""
    from prefdiff.trainers import PolicyGradientModule, SFTModule

    def as_rank(module, rank, world):
        monkeypatch.setattr(type(module), "global_rank", property(lambda self: rank))
        monkeypatch.setattr(type(module), "world_size", property(lambda self: world))

    online = PolicyGradientModule(base=base, reward="smoothness", **COMMON)
    noise = []
    for rank in (0, 1):
        as_rank(online, rank, 2)
        noise.append(online.draw_noise(4, online.step_generator()))
    assert not torch.equal(noise[0], noise[1])

    data = SFTModule(base=base, **COMMON)
    x0 = torch.zeros(2, 3, 8, 8)
    as_rank(data, 0, 1)
    t_all, eps_all = data.draw_training_noise(torch.zeros(4, 3, 8, 8), data.step_generator(per_rank=False))
    for rank in (0, 1):
        as_rank(data, rank, 2)
        t, eps = data.draw_training_noise(x0, data.step_generator(per_rank=False))
        torch.testing.assert_close(t, t_all[2 * rank:2 * rank + 2])
        torch.testing.assert_close(eps, eps_all[2 * rank:2 * rank + 2])


def test_initial_noise_comes_from_the_steps_generator_and_groups_share_it(base):
    from prefdiff.trainers import PolicyGradientModule

    module = PolicyGradientModule(base=base, reward="smoothness", **COMMON)
    first = module.draw_noise(4, torch.Generator().manual_seed(5))
    torch.manual_seed(999)  # the global generator must not matter: resume and ranks rely on it
    assert torch.equal(module.draw_noise(4, torch.Generator().manual_seed(5)), first)
    grouped = module.draw_noise(4, torch.Generator().manual_seed(5), group=2)
    assert torch.equal(grouped[0], grouped[1]) and torch.equal(grouped[2], grouped[3])
    assert not torch.equal(grouped[1], grouped[2])


@pytest.mark.parametrize("method", ["ddpo", "grpo"])
def test_global_std_reaches_the_advantages(base, method):
    from prefdiff.trainers import PolicyGradientModule

    rewards = torch.tensor([0.5, 0.51, 1.0, 3.0])  # a near-tie group, then a wide one
    per_group = PolicyGradientModule(base=base, reward="smoothness", method=method, **COMMON).advantages(rewards, 2)
    torch.testing.assert_close(per_group[:2], torch.tensor([-1.0, 1.0]), atol=1e-3, rtol=0)
    module = PolicyGradientModule(base=base, reward="smoothness", method=method, global_std=True, **COMMON)
    spread = rewards.std(correction=0)
    expected = torch.tensor([-0.005, 0.005, -1.0, 1.0]) / spread
    torch.testing.assert_close(module.advantages(rewards, 2), expected)


def test_trainable_steps_are_a_fraction_of_the_stochastic_ones_and_at_least_one(base):
    from types import SimpleNamespace

    from prefdiff.trainers import PolicyGradientModule

    module = PolicyGradientModule(base=base, reward="smoothness", **COMMON)
    out = SimpleNamespace(stochastic=torch.tensor([True] * 7 + [False]))  # DDIM's last step draws nothing
    for fraction, count in ((1.0, 7), (0.5, 3), (0.01, 1)):
        steps = module.trainable_steps(out, fraction, torch.Generator().manual_seed(0))
        assert len(steps) == len(set(steps)) == count and 7 not in steps, (fraction, steps)


def test_a_std_floor_keeps_the_quiet_steps_out_and_says_when_it_keeps_none(base):
    from types import SimpleNamespace

    from prefdiff.trainers import PolicyGradientModule

    module = PolicyGradientModule(base=base, reward="smoothness", **COMMON)
    out = SimpleNamespace(stochastic=torch.tensor([True, True, True, True, False]),
                          noise_std=torch.tensor([0.8, 0.3, 0.1, 0.009, 0.0]))
    g = torch.Generator().manual_seed(0)
    assert sorted(module.trainable_steps(out, 1.0, g, min_std=0.1)) == [0, 1, 2]  # the floor is inclusive
    assert sorted(module.trainable_steps(out, 1.0, g, min_std=0.05)) == [0, 1, 2]
    assert sorted(module.trainable_steps(out, 1.0, g)) == [0, 1, 2, 3]
    assert len(module.trainable_steps(out, 0.5, g, min_std=0.2)) == 1  # the fraction is of what the floor keeps
    with pytest.raises(UserError, match="largest is 0.8"):
        module.trainable_steps(out, 1.0, g, min_std=0.9)
    with pytest.raises(UserError, match="min_step_std must be >= 0"):
        PolicyGradientModule(base=base, reward="smoothness", min_step_std=-0.1, **COMMON)


@pytest.mark.parametrize("method", ["grpo", "d3po"])
def test_min_step_std_reaches_the_steps_each_update_trains(base, method, monkeypatch):
    # 4 DDIM steps (linear betas): the step onto t = 0 draws std ~0.01 and the others 0.1 or more; the
    # last (onto alpha 1) draws nothing. With a floor of 0.05 only the first two are ever trained.
    from prefdiff.trainers import METHODS

    cls, fixed = METHODS[method]
    extra = {"samples_per_condition": 2} if method == "grpo" else {}
    module = cls(base=base, **COMMON, **fixed, **extra, reward="smoothness", eta=1.0, min_step_std=0.05)
    trained, stds = [], []
    chooser = module.trainable_steps

    def recording(out, *args):
        stds.append(out.noise_std)
        steps = chooser(out, *args)
        trained.append(sorted(steps))
        return steps

    monkeypatch.setattr(module, "trainable_steps", recording)
    _fit(module, Conditions(8), steps=2, batch=2)
    assert trained == [[0, 1]] * 2, trained
    assert 0 < stds[0][2] < 0.05 <= stds[0][1] and stds[0][3] == 0, stds[0]


def test_validation_logs_the_held_out_reward_and_keeps_the_first_batchs_samples(base, tmp_path):
    from prefdiff.trainers import PolicyGradientModule

    module = PolicyGradientModule(base=base, reward="smoothness", **COMMON)
    batches = [{"cond": torch.tensor([0, 1, 2])}, {"cond": torch.tensor([3])}]
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    loader = torch.utils.data.DataLoader(batches, batch_size=None)  # the batches as they are
    (metrics,) = trainer.validate(module, dataloaders=loader, verbose=False)
    assert math.isfinite(metrics["val/reward"])
    assert module._last_val_samples.shape[0] == 3  # the grid shows the first batch
    assert (tmp_path / "samples" / "epoch000.png").is_file()
