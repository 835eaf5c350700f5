"""Mask conditioners: one-hot channels for concatenation, and a ControlNet's inputs."""

import pytest
import torch

from prefdiff.errors import UserError
from prefdiff.models import ModelPreset, build_denoiser, load_model, save_model
from prefdiff.plugins import get_manager


def masks(batch=2, size=16):
    m = torch.zeros(batch, 1, size, size)
    m[0, 0, 2:6, 2:6] = 1
    m[-1, 0, 8:12, 8:12] = 2
    return m


def test_mask_onehot_has_one_channel_per_foreground_class():
    out = get_manager().conditioner("mask_onehot", num_classes=2)(masks())
    assert out.shape == (2, 2, 16, 16)
    assert out[0, 0, 2:6, 2:6].eq(1).all() and out[0, 0].sum() == 16 and out[0, 1].sum() == 0
    assert out[1, 1, 8:12, 8:12].eq(1).all() and out[1, 0].sum() == 0
    assert get_manager().conditioner("mask_onehot", num_classes=2)(torch.zeros(1, 1, 4, 4)).sum() == 0
    # A class without a channel would read as background: one line saying which option to raise.
    with pytest.raises(UserError, match="holds class 3, but the mask conditioner has num_classes=2"):
        get_manager().conditioner("mask_onehot", num_classes=2)(torch.full((1, 1, 4, 4), 3.0))


def test_concat_denoiser_depends_on_the_mask(tmp_path):
    preset = ModelPreset(kind="unet2d", sample_size=16, channels=1, conditioning="concat", cond_channels=2,
                         block_out_channels=(8, 16))
    torch.manual_seed(0)
    denoiser = build_denoiser(preset, get_manager().conditioner("mask_onehot", num_classes=2))
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([10, 500])
    with torch.no_grad():
        eps = denoiser(x, t, masks())
        assert eps.shape == x.shape
        assert not torch.allclose(eps, denoiser(x, t, torch.zeros(2, 1, 16, 16)))
        loaded = load_model(save_model(denoiser, tmp_path / "m"), get_manager().conditioner("mask_onehot"))
        assert torch.allclose(loaded(x, t, masks()), eps, atol=1e-6)


def test_controlnet_conditioner_drives_a_diffusers_controlnet():
    preset = ModelPreset(kind="unet2d_condition", sample_size=16, channels=1, conditioning="controlnet",
                         cond_channels=2, cross_attention_dim=16, block_out_channels=(16, 32), norm_num_groups=8)
    torch.manual_seed(0)
    conditioner = get_manager().conditioner("mask_controlnet", num_classes=2, context_dim=16)
    denoiser = build_denoiser(preset, conditioner)
    cond = conditioner(masks())
    assert cond["image"].shape == (2, 2, 16, 16) and cond["context"].shape == (2, 1, 16)
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([10, 500])
    eps = denoiser(x, t, masks())
    assert eps.shape == x.shape
    eps.pow(2).mean().backward()
    # The mask reaches the output through the ControlNet and the presence token.
    assert conditioner.presence.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in denoiser.controlnet.parameters())
