"""Rewards and judge on trained segmenters: the contract, real beats noise, judge is independent."""

import json

import pytest
import torch

from prefdiff.errors import UserError
from prefdiff.plugins import get_manager
from prefdiff.testing import check_reward
from prefdiff_medical.data import DecathlonSlices
from prefdiff_medical.rewards import intensity_drift
from prefdiff_medical.segmenters import load_segmenter


@pytest.fixture(scope="module")
def real(prepared):
    test = DecathlonSlices(split="test", **prepared["dataset_options"])
    items = [test[i] for i in range(0, len(test), max(1, len(test) // 8))][:8]
    return torch.stack([i["x0"] for i in items]), torch.stack([i["cond"] for i in items])


@pytest.mark.parametrize("name, options", [("segmentation_consistency", "reward_options"),
                                           ("segmentation_consistency_soft", "reward_options"),
                                           ("segmentation_judge", "judge_options")])
def test_reward_contract_and_real_images_beat_noise(prepared, real, name, options):
    images, masks = real
    reward = get_manager().reward(name, **prepared[options])
    assert reward.differentiable == name.endswith("_soft")
    scores = check_reward(reward, masks, images, atol=1e-4)
    noise = torch.rand(images.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise_scores, _ = reward(noise, masks)
    assert scores.mean() > 0.6, scores
    assert scores.mean() > noise_scores.mean() + 0.3
    # A real image scored against another image's mask scores lower than against its own.
    shuffled, _ = reward(images, masks.roll(1, 0))
    assert scores.mean() > shuffled.mean()


def test_judge_is_another_network_than_the_reward(prepared, real):
    reward_net, reward_meta = load_segmenter(prepared["reward_options"]["checkpoint"])
    judge_net, judge_meta = load_segmenter(prepared["judge_options"]["checkpoint"])
    assert prepared["reward_options"]["checkpoint"] != prepared["judge_options"]["checkpoint"]
    assert (reward_meta["arch"], judge_meta["arch"]) == ("unet", "basicunet")
    assert reward_meta["seed"] != judge_meta["seed"]
    assert reward_meta["val_dice"] > 0.7 and judge_meta["val_dice"] > 0.7
    # Every training method gets the reward's checkpoint, never the judge's.
    for options in prepared["methods"].values():
        assert options["reward_options"] == prepared["reward_options"]
    assert prepared["judge_options"]["checkpoint"] not in json.dumps(prepared["methods"])
    images, _ = real
    with torch.no_grad():
        assert not torch.allclose(reward_net(images).softmax(1), judge_net(images).softmax(1), atol=1e-3)


def test_soft_reward_gradient_points_towards_the_mask(prepared, real):
    images, masks = real
    reward = get_manager().reward("segmentation_consistency_soft", **prepared["reward_options"])
    x = torch.zeros_like(images, requires_grad=True)
    reward(x, masks)[0].sum().backward()
    # Raising the brightness inside the structures should raise the soft Dice.
    assert x.grad[masks > 0].mean() > x.grad[masks == 0].mean()


def test_reward_errors_name_the_fix(prepared, real, tmp_path):
    images, masks = real
    manager = get_manager()
    with pytest.raises(UserError, match="checkpoint=PATH.*train-segmenter"):
        manager.reward("segmentation_consistency")
    with pytest.raises(UserError, match="does not exist"):
        manager.reward("segmentation_judge", checkpoint=str(tmp_path / "none.safetensors"))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\0" * 64)
    with pytest.raises(UserError, match="not a prefdiff-medical segmenter checkpoint"):
        manager.reward("segmentation_judge", checkpoint=str(broken))
    reward = manager.reward("segmentation_consistency", **prepared["reward_options"])
    with pytest.raises(UserError, match="do not match images"):
        reward(images, masks[..., :16, :16])


def test_intensity_drift_is_zero_for_real_data_and_grows_with_damage(real):
    images, _ = real
    assert intensity_drift(images, images) == pytest.approx(0.0, abs=1e-9)
    darker = intensity_drift(images * 0.5 - 0.3, images)
    noisy = intensity_drift(torch.rand_like(images) * 2 - 1, images)
    assert 0.1 < darker and 0.1 < noisy
