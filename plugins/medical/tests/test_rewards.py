"""Rewards and judge on trained segmenters: the contract, real beats noise, judge is independent;
the soft and hard Dice against MONAI's, and the rewards on a fixed fake segmenter."""

import json

import pytest
import torch

from prefdiff.errors import UserError
from prefdiff.plugins import get_manager
from prefdiff.testing import check_reward
from prefdiff_medical.data import DecathlonSlices
from prefdiff_medical.rewards import _gradient_magnitude, intensity_drift
from prefdiff_medical.segmenters import hard_dice, load_segmenter, one_hot_mask, soft_dice


@pytest.fixture(scope="module")
def real(prepared):
    test = DecathlonSlices(split="test", **prepared.dataset_options)
    items = [test[i] for i in range(0, len(test), max(1, len(test) // 8))][:8]
    return torch.stack([i["x0"] for i in items]), torch.stack([i["cond"] for i in items])


@pytest.mark.parametrize("name, options", [("segmentation_consistency", "reward_options"),
                                           ("segmentation_consistency_soft", "reward_options"),
                                           ("segmentation_judge", "judge_options")])
def test_reward_contract_and_real_images_beat_noise(prepared, real, name, options):
    images, masks = real
    reward = get_manager().reward(name, **getattr(prepared, options))
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
    reward_net, reward_meta = load_segmenter(prepared.reward_options["checkpoint"])
    judge_net, judge_meta = load_segmenter(prepared.judge_options["checkpoint"])
    assert prepared.reward_options["checkpoint"] != prepared.judge_options["checkpoint"]
    assert (reward_meta["arch"], judge_meta["arch"]) == ("unet", "basicunet")
    assert reward_meta["seed"] != judge_meta["seed"]
    assert reward_meta["val_dice"] > 0.7 and judge_meta["val_dice"] > 0.7
    # Every training method gets the reward's checkpoint, never the judge's.
    for method in prepared.methods:
        name, options = prepared.reward_for(method)
        assert name.startswith("segmentation_consistency") and options == prepared.reward_options
    training = json.dumps([prepared.reward_options, prepared.other_reward_options, prepared.methods])
    assert prepared.judge_options["checkpoint"] not in training
    images, _ = real
    with torch.no_grad():
        assert not torch.allclose(reward_net(images).softmax(1), judge_net(images).softmax(1), atol=1e-3)


def test_soft_reward_gradient_points_towards_the_mask(prepared, real):
    images, masks = real
    reward = get_manager().reward("segmentation_consistency_soft", **prepared.reward_options)
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
    reward = manager.reward("segmentation_consistency", **prepared.reward_options)
    with pytest.raises(UserError, match="do not match images"):
        reward(images, masks[..., :16, :16])


def test_intensity_drift_is_zero_for_real_data_and_grows_with_damage(real):
    images, _ = real
    assert intensity_drift(images, images) == pytest.approx(0.0, abs=1e-9)
    darker = intensity_drift(images * 0.5 - 0.3, images)
    noisy = intensity_drift(torch.rand_like(images) * 2 - 1, images)
    assert 0.1 < darker and 0.1 < noisy


def test_gradient_magnitude_is_the_norm_of_the_forward_differences_at_each_pixel():
    # On x = i * j the horizontal forward difference is the row index i and the vertical one the
    # column index j, so pixel (i, j) has magnitude sqrt(i^2 + j^2); the last row and column have none.
    i, j = torch.meshgrid(torch.arange(5.0), torch.arange(6.0), indexing="ij")
    expected = (i[:-1, :-1] ** 2 + j[:-1, :-1] ** 2).sqrt()
    torch.testing.assert_close(_gradient_magnitude((i * j)[None, None]), expected[None, None])


# ------------------------------------------- Dice against MONAI, term by term ----


def monai_dice(pred: torch.Tensor, masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per image, MONAI's Dice of two class-index masks averaged over the foreground classes present in
    either; a class absent from both is left out, and an image with no foreground at all scores 1."""
    from monai.metrics import compute_dice

    p, t = one_hot_mask(pred, num_classes), one_hot_mask(masks, num_classes)
    dice = compute_dice(p, t, include_background=False, ignore_empty=False)
    seen = (p[:, 1:] + t[:, 1:]).flatten(2).sum(-1) > 0
    mean = torch.where(seen, dice, torch.nan).nanmean(1)
    return torch.where(seen.any(1), mean, torch.ones_like(mean))


def confident(pred: torch.Tensor, num_classes: int, gap: float = 1e4) -> torch.Tensor:
    """Logits whose softmax is the one-hot of the class-index mask ``pred`` (0/1 with the default gap)."""
    return one_hot_mask(pred, num_classes) * gap


def random_masks(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks of classes 0..2 (class 3 never occurs) and predictions with a third of the pixels redrawn."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.randint(0, 3, (6, 1, 24, 24), generator=g).float()
    redraw = torch.rand(masks.shape, generator=g) < 0.3
    pred = masks.clone()
    pred[redraw] = torch.randint(0, 3, (int(redraw.sum()),), generator=g).float()
    pred[0][pred[0] == 2] = 0.0                                  # a structure of the mask missed entirely
    return masks, pred


def test_soft_dice_of_a_binary_prediction_is_monai_hard_dice():
    """On 0/1 probabilities the soft Dice is MONAI's Dice, with the same conventions: a class missed or
    hallucinated counts 0, a class absent from both prediction and mask is left out of the mean."""
    masks, pred = random_masks(0)
    reference = monai_dice(pred, masks, 3)
    assert reference[0] < reference[1:].min() and (reference < 0.95).all()
    torch.testing.assert_close(hard_dice(confident(pred, 3), masks, 3), reference)
    # without V-Net's smoothing the two are the same number; with it they differ by under 1/(area + 1)
    torch.testing.assert_close(soft_dice(confident(pred, 3), masks, 3, smooth=1e-6), reference)
    torch.testing.assert_close(soft_dice(confident(pred, 3), masks, 3), reference, atol=0.01, rtol=0.0)
    # class 3, absent from both, is left out: the score is the one of a two-class task
    torch.testing.assert_close(soft_dice(confident(pred, 3), masks, 3), soft_dice(confident(pred, 2), masks, 2))
    # a hallucinated class-3 structure of 20 pixels counts 0 in both (the soft form weighs it 20/21)
    hallucinated = pred.clone()
    hallucinated[:, :, :4, :5] = 3.0
    reference = monai_dice(hallucinated, masks, 3)
    torch.testing.assert_close(hard_dice(confident(hallucinated, 3), masks, 3), reference)
    torch.testing.assert_close(soft_dice(confident(hallucinated, 3), masks, 3, smooth=1e-6), reference,
                               atol=0.02, rtol=0.0)
    assert (soft_dice(confident(hallucinated, 3), masks, 3) < soft_dice(confident(pred, 3), masks, 3)).all()


def test_soft_dice_of_an_empty_image_rightly_segmented_is_one_like_the_hard_dice():
    """Convention for empty against empty: the image scores 1 (``hard_dice``, documented)."""
    empty = torch.zeros(2, 1, 16, 16)
    torch.testing.assert_close(monai_dice(empty, empty, 2), torch.ones(2))
    torch.testing.assert_close(hard_dice(confident(empty, 2), empty, 2), torch.ones(2))
    # a segmenter sure of its background by a logit gap of 10
    torch.testing.assert_close(soft_dice(confident(empty, 2, gap=10.0), empty, 2), torch.ones(2), atol=1e-3, rtol=0)


class IntensityToClass(torch.nn.Module):
    """A fixed fake segmenter: pixel intensity ``-1 + 2 k / K`` is class ``k``, nothing trained."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("levels", torch.linspace(-1, 1, num_classes + 1).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -20.0 * (x - self.levels) ** 2


@pytest.mark.parametrize("name", ["segmentation_consistency", "segmentation_consistency_soft", "segmentation_judge"])
def test_reward_scores_the_image_of_its_mask_above_the_image_of_another(monkeypatch, name):
    from prefdiff_medical import segmenters

    k = 2
    monkeypatch.setattr(segmenters, "load_segmenter",
                        lambda path: (IntensityToClass(k), {"arch": "fake", "num_classes": k, "resolution": 32}))
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    masks = torch.zeros(4, 1, 32, 32)
    for i in range(4):                     # an organ and a smaller lesion, placed differently in each image
        masks[i, 0][(yy - 10 - 3 * i) ** 2 + (xx - 12 - 2 * i) ** 2 < 49] = 1.0
        masks[i, 0][(yy - 20 + i) ** 2 + (xx - 22 + 3 * i) ** 2 < 9] = 2.0
    images = masks * (2 / k) - 1                                   # what the fake segmenter reads back exactly
    reward = get_manager().reward(name, checkpoint="fake")
    own, _ = reward(images, masks)
    other, _ = reward(images.roll(1, 0), masks)
    torch.testing.assert_close(own, torch.ones(4))
    expected = monai_dice(masks.roll(1, 0), masks, k)
    assert (expected < 0.6).all()
    torch.testing.assert_close(other, expected, atol=0.03 if name.endswith("_soft") else 1e-6, rtol=0.0)


def use_fake_segmenter(monkeypatch, net: torch.nn.Module, num_classes: int) -> None:
    """Make every segmentation reward load ``net`` (architecture "fake", trained at 32 px)."""
    from prefdiff_medical import segmenters

    monkeypatch.setattr(segmenters, "load_segmenter", lambda path: (
        net, {"arch": "fake", "num_classes": num_classes, "resolution": 32}))


class SeesStructureBelowTheRange(torch.nn.Module):
    """A fixed fake segmenter: class 1 wherever a pixel is darker than -1.25, below the display
    range [-1, 1] it was trained on; background elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), -1.25 - x], 1)


@pytest.mark.parametrize("name", ["segmentation_consistency", "segmentation_judge"])
def test_hard_reward_scores_samples_beyond_the_display_range_as_their_clamped_versions(monkeypatch, name):
    use_fake_segmenter(monkeypatch, SeesStructureBelowTheRange(), 1)
    masks = torch.zeros(3, 1, 32, 32)
    images = torch.zeros(3, 1, 32, 32)
    # a sampler's overshoot on the empty background: slightly (-1.5) and far (-3) below the range
    images[0, 0, 4:8, 4:8] = -1.5
    images[1, 0, 20:24, 10:14] = -3.0
    scores, _ = get_manager().reward(name, checkpoint="fake")(images, masks)
    # clamped to -1 the overshoot is background, so every image is its empty mask exactly
    torch.testing.assert_close(scores, torch.ones(3))


def test_soft_reward_scales_the_logits_by_its_sharpness(monkeypatch):
    k = 2
    net = IntensityToClass(k)
    use_fake_segmenter(monkeypatch, net, k)
    masks = torch.zeros(2, 1, 32, 32)
    masks[:, :, 8:20, 6:18] = 1.0
    masks[1, :, 24:28, 24:28] = 2.0
    # off the fake segmenter's levels its softmax is far from one-hot, so the sharpness shows
    noise = 0.3 * torch.randn(masks.shape, generator=torch.Generator().manual_seed(0))
    images = masks * (2 / k) - 1 + noise
    scores = {}
    for sharpness in (0.2, 3.0):
        reward = get_manager().reward("segmentation_consistency_soft", checkpoint="fake", sharpness=sharpness)
        scores[sharpness], _ = reward(images, masks)
        torch.testing.assert_close(scores[sharpness], soft_dice(net(images), masks, k, sharpness=sharpness))
    assert (scores[3.0] - scores[0.2]).abs().min() > 0.05


@pytest.mark.parametrize("name", ["segmentation_consistency", "segmentation_consistency_soft", "segmentation_judge"])
def test_reward_info_names_the_segmenter_architecture(monkeypatch, name):
    use_fake_segmenter(monkeypatch, IntensityToClass(2), 2)
    masks = torch.zeros(2, 1, 32, 32)
    _, info = get_manager().reward(name, checkpoint="fake")(masks - 1, masks)
    assert info == {"segmenter": "fake"}
