"""Mask edits (add, remove, grow) and inpainting that keeps the unchanged region."""

import pytest
import torch

from prefdiff.models import ModelPreset, build_denoiser
from prefdiff.plugins import get_manager
from prefdiff.schedulers import build_scheduler
from prefdiff_medical.data import DecathlonSlices
from prefdiff_medical.editing import edit_examples, edit_images, edit_mask, keep_region, preservation


def mask_with_blob():
    m = torch.zeros(1, 32, 32)
    m[0, 4:10, 4:10] = 1
    m[0, 20:24, 20:24] = 2
    return m


def test_mask_edits_do_what_they_say():
    m = mask_with_blob()
    g = torch.Generator().manual_seed(0)
    added = edit_mask(m, "add", 2, g)
    assert (added > 0).sum() > (m > 0).sum()
    assert torch.equal(added[m > 0], m[m > 0])  # nothing else touched
    removed = edit_mask(m, "remove", 2, g)
    assert int((removed > 0).sum()) in (16, 36)  # exactly one of the two blobs is gone
    grown = edit_mask(m, "grow", 2, g)
    assert (grown > 0).sum() > (m > 0).sum() and torch.equal(grown[m > 0], m[m > 0])
    assert edit_mask(torch.zeros(1, 32, 32), "remove", 2, g) is None


def test_keep_region_excludes_the_change_and_its_margin():
    m = mask_with_blob()
    new = m.clone()
    new[0, 4:10, 4:10] = 0
    keep = keep_region(m, new, margin=2)
    assert keep[0, 4:10, 4:10].eq(0).all() and keep[0, 2:12, 2:12].eq(0).all()
    assert keep[0, 20:, 20:].eq(1).all()


def test_inpainting_preserves_the_unchanged_region(small_task):
    data = DecathlonSlices(small_task, split="test", percentiles=(0, 100))
    images, old, new, kinds = edit_examples(data, 3, data.num_classes, seed=0)
    assert kinds == ["add", "remove", "grow"][:len(kinds)] and len(kinds) >= 2
    torch.manual_seed(0)
    model = build_denoiser(ModelPreset(kind="unet2d", sample_size=32, channels=1, conditioning="concat",
                                       cond_channels=2, block_out_channels=(8, 16)),
                           get_manager().conditioner("mask_onehot", num_classes=2))
    edited = edit_images(model, build_scheduler(), images, old, new, num_steps=3, margin=1)
    keep = keep_region(old, new, margin=1).bool()
    assert torch.equal(edited[keep], images[keep])
    assert not torch.allclose(edited[~keep], images[~keep])
    same = preservation(images, images, torch.ones_like(images))
    assert same["psnr"].eq(60).all() and torch.allclose(same["ssim"], torch.ones(len(images)))
    kept = preservation(images, edited, (old == new).float())
    assert (kept["ssim"] < 1).all() and (kept["psnr"] < 60).all()
    whole = preservation(images, edited, torch.ones_like(images))
    assert (kept["psnr"] >= whole["psnr"]).all()


def test_sdedit_changes_the_whole_image_and_bad_method_is_named():
    model = build_denoiser(ModelPreset(kind="unet2d", sample_size=32, channels=1, conditioning="concat",
                                       cond_channels=2, block_out_channels=(8, 16)),
                           get_manager().conditioner("mask_onehot", num_classes=2))
    m = mask_with_blob().unsqueeze(0)
    x = torch.zeros(1, 1, 32, 32)
    out = edit_images(model, build_scheduler(), x, m, m, method="sdedit", strength=0.5, num_steps=4)
    assert out.shape == x.shape and not torch.allclose(out, x)
    from prefdiff.errors import UserError

    with pytest.raises(UserError, match="edit method must be one of inpaint, sdedit, got .paint."):
        edit_images(model, build_scheduler(), x, m, m, method="paint")
