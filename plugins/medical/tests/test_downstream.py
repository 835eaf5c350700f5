"""Downstream utility: a third segmenter trained on each row's images and tested on real scans."""

import pytest
import torch

from prefdiff_medical.data import DecathlonSlices
from prefdiff_medical.downstream import _copies, downstream_metrics, ratio_ci


@pytest.fixture(scope="module")
def scans(small_task):
    test = DecathlonSlices(small_task, split="train", resolution=32, percentiles=[0.0, 100.0])
    items = [test[i] for i in range(min(24, len(test)))]
    return torch.stack([i["x0"] for i in items]), torch.stack([i["cond"] for i in items])


def test_real_images_teach_a_segmenter_and_others_do_not(scans):
    images, masks = scans
    # Inverted contrast: a segmenter learns these as well as real ones, but is tested on real scans.
    inverted = -images
    k = 2  # two samples per condition, as a run with eval_samples=2 lines them up
    rows = {"real": images.repeat_interleave(k, 0), "base": images.repeat_interleave(k, 0),
            "inverted": inverted.repeat_interleave(k, 0)}
    out = downstream_metrics(rows, masks.repeat_interleave(k, 0), num_classes=int(masks.max()), steps=60)
    assert out["real"]["downstream_n"] == len(images) // 2
    assert out["real"]["downstream_dice"] > out["inverted"]["downstream_dice"] + 0.1
    # The same images from the same seed train the same network: a ratio of exactly 1.
    assert out["base"]["downstream_ratio_to_real"] == pytest.approx(1.0)
    assert out["base"]["downstream_ratio_to_real_ci95"] == pytest.approx([1.0, 1.0])
    assert out["inverted"]["downstream_ratio_to_real_ci95"][1] < 1
    assert out["inverted"]["downstream_gain_over_base"] < 0 and out["inverted"]["downstream_gain_over_base_ci95"][1] < 0
    assert "downstream_gain_over_base" not in out["base"]


def test_no_real_row_no_downstream_numbers(scans):
    images, masks = scans
    assert downstream_metrics({"base": images}, masks, num_classes=1, steps=1) == {}


def test_the_copies_of_each_scan_are_counted():
    scans = torch.randn(6, 1, 4, 4)
    assert _copies(scans) == 1
    assert _copies(scans.repeat_interleave(4, 0)) == 4


def test_the_ratio_interval_is_of_the_ratio_of_means():
    num, den = torch.full((50,), 0.4), torch.full((50,), 0.8)
    assert ratio_ci(num, den) == pytest.approx([0.5, 0.5])
    g = torch.Generator().manual_seed(1)
    num, den = torch.rand(200, generator=g) * 0.5, torch.rand(200, generator=g) * 0.5 + 0.5
    lo, hi = ratio_ci(num, den)
    assert lo < float(num.mean() / den.mean()) < hi and hi - lo < 0.2
