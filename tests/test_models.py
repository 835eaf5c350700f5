"""Builders, LoRA with the adapter-disabled reference, save and load."""

import json

import pytest
import torch

from prefdiff.errors import UserError
from prefdiff.models import (LoraOptions, ModelPreset, add_lora, build_denoiser, has_lora,
                             load_lora, load_model, load_pipeline_unet, reference_mode, save_lora,
                             save_lora_for_pipeline, save_model)
from prefdiff.testing import tiny_denoiser

T = torch.tensor([10, 500])


@pytest.mark.parametrize("preset, x, cond", [
    (dict(kind="unet2d", sample_size=8, channels=1, block_out_channels=(8, 16)),
     torch.randn(2, 1, 8, 8), None),
    (dict(kind="unet2d", sample_size=8, channels=1, conditioning="class", num_classes=3,
          block_out_channels=(8, 16)), torch.randn(2, 1, 8, 8), torch.tensor([0, 2])),
    (dict(kind="unet2d", sample_size=8, channels=1, conditioning="concat", cond_channels=2,
          block_out_channels=(8, 16), attention=True), torch.randn(2, 1, 8, 8), torch.randn(2, 2, 8, 8)),
    (dict(kind="unet2d_condition", sample_size=8, channels=4, conditioning="cross_attention",
          cross_attention_dim=16, block_out_channels=(16, 32)), torch.randn(2, 4, 8, 8), torch.randn(2, 5, 16)),
    (dict(kind="unet2d_condition", sample_size=8, channels=4, conditioning="controlnet", cond_channels=1,
          cross_attention_dim=16, block_out_channels=(16, 32)), torch.randn(2, 4, 8, 8),
     {"context": torch.randn(2, 5, 16), "image": torch.randn(2, 1, 8, 8)}),
    (dict(kind="unet1d", sample_size=16, channels=6, conditioning="concat", cond_channels=4,
          block_out_channels=(16, 32)), torch.randn(2, 6, 16), torch.randn(2, 4)),
])
def test_builders_predict_noise_of_input_shape(preset, x, cond):
    denoiser = build_denoiser(preset)
    assert denoiser(x, T, cond).shape == x.shape
    null = denoiser.null_condition(cond)
    assert denoiser(x, T, null).shape == x.shape
    if preset.get("conditioning") == "class":  # the extra class index the UNet keeps for "no class"
        assert null.tolist() == [preset["num_classes"]] * 2
    with torch.no_grad():  # one timestep for the whole batch
        torch.testing.assert_close(denoiser(x, T[1], cond), denoiser(x, T[1].expand(2), cond))


def test_controlnet_residuals_reach_the_unet():
    torch.manual_seed(0)
    denoiser = build_denoiser(dict(kind="unet2d_condition", sample_size=8, channels=4, conditioning="controlnet",
                                   cond_channels=1, cross_attention_dim=16, block_out_channels=(16, 32)))
    with torch.no_grad():  # ControlNet's zero convolutions start at zero; a trained one's do not
        for p in denoiser.controlnet.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, context = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 16)
    with torch.no_grad():
        shaped = denoiser(x, T, {"context": context, "image": torch.randn(2, 1, 8, 8)})
        blank = denoiser(x, T, {"context": context, "image": torch.zeros(2, 1, 8, 8)})
    assert (shaped - blank).abs().max() > 1e-3


def test_monai_denoiser():
    denoiser = build_denoiser(dict(kind="monai", sample_size=8, channels=1, conditioning="concat",
                                   cond_channels=1, block_out_channels=(8, 16)))
    assert denoiser(torch.randn(2, 1, 8, 8), T, torch.randn(2, 1, 8, 8)).shape == (2, 1, 8, 8)
    assert denoiser.frozen_parts() == []  # pixel space, a trained conditioner: nothing is loaded frozen
    torch.manual_seed(0)
    attending = build_denoiser(dict(kind="monai", sample_size=8, channels=1, conditioning="cross_attention",
                                    cross_attention_dim=4, block_out_channels=(8, 16), attention=True))
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():  # MONAI starts its output and attention projections at zero
        for p in attending.parameters():
            p.add_(0.1 * torch.randn_like(p))
        a, b = (attending(x, T, torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(s))) for s in (1, 2))
    assert a.shape == x.shape and (a - b).abs().max() > 1e-5  # the context reaches the attention
    classed = build_denoiser(dict(kind="monai", sample_size=8, channels=1, conditioning="class", num_classes=3,
                                  block_out_channels=(8, 16)))
    with torch.no_grad():
        for p in classed.parameters():
            p.add_(0.1 * torch.randn_like(p))
        a, b = (classed(x, T, torch.tensor(labels)) for labels in ([0, 1], [2, 2]))
    assert (a - b).abs().max() > 1e-5  # the class reaches the network


def test_bad_preset_is_a_user_error():
    with pytest.raises(UserError, match="--model.kind must be one of"):
        ModelPreset(kind="vit")
    with pytest.raises(UserError, match="a transformer is loaded from its pipeline folder"):
        build_denoiser(ModelPreset(kind="transformer"))
    with pytest.raises(UserError, match="norm_num_groups=8 must divide"):
        ModelPreset(block_out_channels=(12, 24))


def test_fresh_lora_equals_reference_and_reference_ignores_training():
    denoiser = tiny_denoiser()
    x, c = torch.randn(2, 3, 16, 16), torch.tensor([1, 2])
    before = denoiser(x, T, c).detach()
    add_lora(denoiser, LoraOptions(r=4))
    assert has_lora(denoiser)
    torch.testing.assert_close(denoiser(x, T, c), before)  # B starts at zero
    trainable = [p for p in denoiser.parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n, p in denoiser.named_parameters() if p.requires_grad)
    with torch.no_grad():
        for p in trainable:
            p.add_(0.05 * torch.randn_like(p))
    assert not torch.allclose(denoiser(x, T, c), before)
    with reference_mode(denoiser):
        torch.testing.assert_close(denoiser(x, T, c), before)
    assert all(p.requires_grad for p in trainable)  # re-enabled afterwards


@pytest.mark.parametrize("rank", [4, 8])
def test_gaussian_lora_init_draws_a_with_std_one_over_rank(rank):
    # TRL's DDPO and AlignProp start A as N(0, 1/r) (peft's "gaussian"); peft's default is
    # Kaiming-uniform, bounded by sqrt(6 / ((1 + 5) fan_in)) = 1/sqrt(fan_in). B starts at zero in both.
    x, c = torch.randn(2, 3, 16, 16), torch.tensor([1, 2])

    def a_and_b(init):
        torch.manual_seed(0)
        denoiser = add_lora(tiny_denoiser(), LoraOptions(r=rank, init=init))
        named = dict(denoiser.net.named_parameters())
        a = torch.cat([p.flatten() for n, p in named.items() if "lora_A" in n])
        b = torch.cat([p.flatten() for n, p in named.items() if "lora_B" in n])
        return denoiser, a, b

    reference = tiny_denoiser()(x, T, c).detach()
    gaussian, a, b = a_and_b("gaussian")
    assert a.std().item() == pytest.approx(1 / rank, rel=0.05) and b.abs().max() == 0
    torch.testing.assert_close(gaussian(x, T, c), reference)
    _, a_kaiming, b_kaiming = a_and_b("kaiming")
    assert a_kaiming.std().item() < 0.5 / rank and b_kaiming.abs().max() == 0
    _, a_field_default, _ = a_and_b(None)  # a field's UNet keeps peft's start
    torch.testing.assert_close(a_field_default, a_kaiming)
    with pytest.raises(UserError, match="--model.lora_init"):
        LoraOptions(init="pissa")
    assert LoraOptions(r=1).r == 1  # rank 1 is a LoRA too; 0 is none
    with pytest.raises(UserError, match=r"--lora.r must be > 0, got 0"):
        LoraOptions(r=0)


def test_lora_init_default_is_the_old_name_of_kaiming_and_says_so(caplog):
    # Configs written before text-to-image pipelines started gaussian said `lora_init: default`
    # for peft's Kaiming start; they keep that start, with a warning that the name changed.
    with caplog.at_level("WARNING", logger="prefdiff"):
        options = LoraOptions(r=4, init="default")
    assert options.init == "kaiming"
    assert "--model.lora_init default is now called kaiming" in caplog.text


def _perturbed_lora(seed=0):
    denoiser = add_lora(tiny_denoiser(seed), LoraOptions(r=4))
    with torch.no_grad():
        for p in denoiser.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return denoiser


def test_save_and_load_roundtrip(tmp_path):
    denoiser = _perturbed_lora()
    x, c = torch.randn(2, 3, 16, 16), torch.tensor([0, 3])
    expected = denoiser(x, T, c)
    save_model(denoiser, tmp_path / "m")
    assert (tmp_path / "m/net/config.json").is_file()
    assert (tmp_path / "m/lora/adapter_model.safetensors").is_file()
    config = json.loads((tmp_path / "m/lora/adapter_config.json").read_text())
    assert config["r"] == 4 and config["peft_type"] == "LORA"
    from safetensors.torch import load_file

    keys = list(load_file(str(tmp_path / "m/lora/adapter_model.safetensors")))
    assert all(k.startswith("base_model.model.") and ".lora_" in k for k in keys)
    torch.testing.assert_close(load_model(tmp_path / "m")(x, T, c), expected)
    # An adapter alone onto a plain base.
    save_lora(denoiser, tmp_path / "adapter")
    loaded = load_lora(tiny_denoiser(), tmp_path / "adapter")
    torch.testing.assert_close(loaded(x, T, c), expected)
    assert all(p.requires_grad == (".lora_" in n) for n, p in loaded.named_parameters())  # only the adapter trains
    with pytest.raises(UserError, match=r"^the LoRA adapter folder .*nowhere does not exist; pass the `lora/`"):
        load_lora(tiny_denoiser(), tmp_path / "nowhere")
    with pytest.raises(UserError, match=r"^the LoRA adapter folder .*adapter_config.json is a file, not a folder"):
        load_lora(tiny_denoiser(), tmp_path / "adapter" / "adapter_config.json")
    with pytest.raises(UserError, match=r"^the LoRA adapter in .*adapter is for another model \(size mismatch for "):
        load_lora(tiny_denoiser(block_out_channels=(32, 64)), tmp_path / "adapter")
    from safetensors.torch import load_file, save_file

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "adapter_config.json").write_bytes((tmp_path / "adapter" / "adapter_config.json").read_bytes())
    state = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    save_file({**state, "base_model.model.elsewhere.to_q.lora_A.weight": torch.zeros(4, 8)},
              str(foreign / "adapter_model.safetensors"))
    with pytest.raises(UserError, match=r"^the LoRA adapter in .*foreign is for another model \(unexpected 'elsewhere"):
        load_lora(tiny_denoiser(), foreign)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"^.*empty holds no LoRA adapter \(adapter_config.json and "
                                        r"adapter_model.safetensors, or diffusers' pytorch_lora_weights"
                                        r".safetensors\); pass the `lora/` folder"):
        load_lora(tiny_denoiser(), tmp_path / "empty")
    # the folder above lora/ (a run's version_N): the message names the adapter below it
    with pytest.raises(UserError, match=r"^.*m holds no LoRA adapter .*; adapters below it: .*m/lora; pass"):
        load_lora(tiny_denoiser(), tmp_path / "m")
    (tmp_path / "half").mkdir()  # a config without its weights: a broken adapter, to re-save
    (tmp_path / "half" / "adapter_config.json").write_bytes((tmp_path / "adapter" / "adapter_config.json").read_bytes())
    with pytest.raises(UserError, match=r"^cannot read the LoRA adapter in .*half: .*; re-save it"):
        load_lora(tiny_denoiser(), tmp_path / "half")


def test_truncated_or_foreign_weights_are_user_errors(tmp_path):
    save_model(tiny_denoiser(), tmp_path / "m")
    weights = next((tmp_path / "m/net").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_model(tmp_path / "m")
    save_model(tiny_denoiser(), tmp_path / "a")
    save_model(build_denoiser(dict(kind="unet2d", sample_size=16, channels=3, conditioning="class",
                                   num_classes=4, block_out_channels=(8, 16))), tmp_path / "b")
    (tmp_path / "a/net").rename(tmp_path / "a/net-old")
    (tmp_path / "b/net").rename(tmp_path / "a/net")
    with pytest.raises(UserError, match="from another model"):
        load_model(tmp_path / "a")
    with pytest.raises(UserError, match="not a prefdiff model folder"):
        load_model(tmp_path)


SD_UNET = dict(kind="unet2d_condition", sample_size=8, channels=4, conditioning="cross_attention",
               cross_attention_dim=16, block_out_channels=(16, 32))


def _sd_unet_with_lora(tmp_path):
    """A pipeline folder holding only a tiny SD UNet, loaded with a perturbed LoRA; the folder too."""
    torch.manual_seed(0)
    pipeline = tmp_path / "pipe"
    build_denoiser(SD_UNET).net.save_pretrained(pipeline / "unet")
    (pipeline / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    loaded = load_pipeline_unet(pipeline)
    add_lora(loaded, LoraOptions(r=4))
    with torch.no_grad():
        for p in loaded.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return loaded, pipeline


def test_stable_diffusion_lora_loads_with_diffusers(tmp_path, monkeypatch):
    import tempfile

    from diffusers import UNet2DConditionModel

    loaded, pipeline = _sd_unet_with_lora(tmp_path)
    # diffusers' writing goes to a scratch folder beside the adapter's, on its file system, never the
    # system's temporary folder: the finished file then moves over the old one whole.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-temporary-folder-here"))
    save_lora_for_pipeline(loaded, tmp_path / "exports" / "sd-lora")  # its parent made too
    monkeypatch.undo()
    x, ctx = torch.randn(1, 4, 8, 8), torch.randn(1, 3, 16)
    expected = loaded(x, T[:1], ctx)
    unet = UNet2DConditionModel.from_pretrained(pipeline / "unet")
    unet.load_lora_adapter(str(tmp_path / "exports" / "sd-lora"), prefix="unet",
                           weight_name="pytorch_lora_weights.safetensors")
    torch.testing.assert_close(unet(x, T[:1], encoder_hidden_states=ctx).sample, expected, atol=1e-5, rtol=1e-4)


def test_a_failed_export_is_one_error_and_leaves_the_adapter_written_before(tmp_path):
    import resource
    import signal

    loaded, _ = _sd_unet_with_lora(tmp_path)
    save_lora_for_pipeline(loaded, tmp_path / "sd-lora")
    exported = tmp_path / "sd-lora/pytorch_lora_weights.safetensors"
    before = exported.read_bytes()
    with torch.no_grad():
        for p in loaded.parameters():
            if p.requires_grad:
                p.add_(1.0)
    # A real write failure inside diffusers' saving: past 1000 bytes a write fails with EFBIG, as on a full disk.
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))
    try:
        with pytest.raises(UserError, match=r"^could not write .*sd-lora: File too large; the folder is as it was "
                                            r"before this write; free disk space or raise the file size limit"):
            save_lora_for_pipeline(loaded, tmp_path / "sd-lora")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert exported.read_bytes() == before


def test_preset_values_are_read_as_the_command_line_and_json_give_them():
    import numpy as np

    from prefdiff.errors import UserError
    from prefdiff.models import ModelPreset

    # Text from one field given alone on the command line, numpy integers, and JSON's 32.0 all build.
    preset = ModelPreset(conditioning="concat", cond_channels="3", block_out_channels=[np.int64(32), 64.0],
                         sample_size=32.0, attention=1)
    assert (preset.cond_channels, preset.block_out_channels, preset.sample_size, preset.attention) == (3, (32, 64), 32, True)
    assert type(preset.sample_size) is int and type(preset.block_out_channels[0]) is int
    for bad, message in ((dict(sample_size=3.5), "sample_size must be an integer, got 3.5"),
                         (dict(num_classes="four"), "num_classes must be an integer, got 'four'"),
                         (dict(attention="maybe"), "attention must be true or false"),
                         (dict(cond_channels=True), "cond_channels must be an integer, got True")):
        with pytest.raises(UserError, match=message):
            ModelPreset(**bad)
