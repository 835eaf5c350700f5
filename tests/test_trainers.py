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
    options = {**COMMON, **fixed, "reward": "jpeg_compressibility", **extra}
    if method == "sft":
        options.pop("reward")
    module = cls(base=base, **options)
    before = _lora(module)
    frozen = {n: p.detach().clone() for n, p in module.denoiser.named_parameters() if not p.requires_grad}
    data = Conditions(with_pairs=method in ("dpo", "kto"))
    if method == "rwr":
        for i, item in enumerate(data.items):
            item["reward"] = torch.tensor(float(i))
    _fit(module, data)
    after = _lora(module)
    assert any(not torch.equal(before[n], after[n]) for n in before), f"{method} changed no weight"
    for n, p in module.denoiser.named_parameters():
        if not p.requires_grad:
            assert torch.equal(frozen[n], p), f"{method} changed frozen {n}"
    if method not in ("sft", "rwr", "dpo", "kto"):
        assert module.reward_queries > 0


def test_dpo_loss_is_ln2_with_a_fresh_adapter(base):
    from prefdiff.trainers import PairModule

    module = PairModule(base=base, objective="dpo", beta=5000.0, **COMMON)
    batch = torch.utils.data.default_collate([Conditions(4, with_pairs=True)[i] for i in range(4)])
    loss = module.training_step(batch, 0)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)


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


def test_bad_options_are_user_errors(base):
    from prefdiff.trainers import PairModule, PolicyGradientModule

    with pytest.raises(UserError, match="--model.beta must be > 0"):
        PairModule(base=base, beta=-1.0, **COMMON)
    with pytest.raises(UserError, match="--model.method must be one of"):
        PolicyGradientModule(base=base, method="ppo", **COMMON)
    with pytest.raises(UserError, match="unknown reward 'nope'"):
        PolicyGradientModule(base=base, reward="nope", **COMMON)
    with pytest.raises(UserError, match="exactly one of"):
        PolicyGradientModule(**COMMON)


def test_empty_dataset_is_a_user_error(base):
    from prefdiff.trainers import SFTModule

    with pytest.raises(UserError, match="empty"):
        _fit(SFTModule(base=base, **COMMON), Conditions(0))
