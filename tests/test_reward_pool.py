"""Rewards scored in worker processes while sampling goes on: the same numbers as in-process."""

import pytest
import pytorch_lightning as pl
import torch

from prefdiff.datamodule import PrefDataModule
from prefdiff.quiet import quiet_trainer
from prefdiff.trainers import PolicyGradientModule

TINY = dict(kind="unet2d", sample_size=8, channels=3, conditioning="class", num_classes=4,
            block_out_channels=(16, 32), norm_num_groups=8)


def _train(**options):
    pl.seed_everything(0, verbose=False)
    module = PolicyGradientModule(model=TINY, conditioner="class_label", reward="smoothness", num_steps=3,
                                  samples_per_condition=2, lr=1e-2, lora_rank=0, seed=0, **options)
    items = [{"cond": torch.tensor(i % 4)} for i in range(8)]
    quiet_trainer(2).fit(module, datamodule=PrefDataModule.from_datasets(items, batch_size=4))
    return module


def test_a_worker_pool_gives_the_in_process_scores_and_counts_the_queries():
    inline = _train(sample_chunks=2)
    pooled = _train(sample_chunks=2, reward_workers=1)
    for (name, a), b in zip(inline.denoiser.state_dict().items(), pooled.denoiser.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert inline.reward_queries == pooled.reward_queries == 2 * 8
    assert getattr(pooled, "_reward_pool", None) is None  # closed at the end of fit


def test_chunks_cover_whole_groups_and_the_whole_batch():
    module = PolicyGradientModule(model=TINY, conditioner="class_label", reward="smoothness", num_steps=2,
                                  samples_per_condition=2, sample_chunks=3, lora_rank=0)
    cond = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    out, rewards = module.sample_and_score(cond, 8, torch.Generator().manual_seed(0), group=2)
    assert out.samples.shape[0] == rewards.shape[0] == 8 and out.latents.shape[:2] == (8, 3)
    # shared noise within a group survives chunking: each group's two samples start alike
    assert torch.equal(out.latents[0, 0], out.latents[1, 0]) and not torch.equal(out.latents[1, 0], out.latents[2, 0])


def test_bad_pool_options_are_one_clear_error():
    from prefdiff.errors import UserError

    with pytest.raises(UserError, match="--model.sample_chunks must be >= 1 and --model.reward_workers >= 0"):
        PolicyGradientModule(model=TINY, conditioner="class_label", reward="smoothness", reward_workers=-1)
    # A backend is checked when the module is built, not once training has started.
    with pytest.raises(UserError, match="--model.reward_backend must be one of process, ray, got 'dask'"):
        PolicyGradientModule(model=TINY, conditioner="class_label", reward="smoothness", reward_workers=1,
                             reward_backend="dask")


def test_the_ray_backend_without_ray_is_refused_when_the_module_is_built(monkeypatch):
    import importlib.util

    from prefdiff.errors import UserError

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find_spec(name, *a))
    with pytest.raises(UserError, match=r"--model.reward_backend ray needs Ray: pip install 'prefdiff\[ray\]'"):
        PolicyGradientModule(model=TINY, conditioner="class_label", reward="smoothness", reward_workers=1,
                             reward_backend="ray")
    # In this process, as before: no pool, no backend to check.
    PolicyGradientModule(model=TINY, conditioner="class_label", reward="smoothness", reward_backend="ray")
