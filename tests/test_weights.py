"""Pipeline folders whose weights are variants (``*.fp16.safetensors``), sharded, or missing."""

import logging

import pytest
import torch

from prefdiff.errors import UserError
from prefdiff.models import load_model
from prefdiff.models.weights import weight_files, weights_variant
from prefdiff.testing import tiny_pipeline, tiny_sd3_pipeline


def touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


def test_the_file_names_tell_plain_weights_from_variants(tmp_path):
    assert weight_files(touch(tmp_path / "a", "diffusion_pytorch_model.safetensors", "config.json")) == (True, set())
    assert weight_files(touch(tmp_path / "b", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                              "model.safetensors.index.json")) == (True, set())
    assert weight_files(touch(tmp_path / "c", "diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
                              "diffusion_pytorch_model.safetensors.index.fp16.json",
                              "diffusion_pytorch_model.non_ema.safetensors", "model.bf16.safetensors")) \
        == (False, {"fp16", "non_ema", "bf16"})
    # Stable Diffusion 1.5's unet/ as the Hub holds it: the plain weights win unless a variant is asked for.
    sd15 = touch(tmp_path / "d", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                 "diffusion_pytorch_model.non_ema.safetensors", "diffusion_pytorch_model.bin")
    assert weights_variant(sd15) is None
    assert weights_variant(sd15, "non_ema") == "non_ema"
    assert weights_variant(sd15, "ema_only") is None  # a component without it reads its plain weights
    assert weights_variant(touch(tmp_path / "e", "model.fp16.safetensors")) == "fp16"


def test_weights_that_cannot_be_chosen_or_read_are_one_clear_error(tmp_path):
    both = touch(tmp_path / "both", "model.fp16.safetensors", "model.bf16.safetensors")
    with pytest.raises(UserError, match=r"both holds the weight variants bf16, fp16 and no plain weights; choose one "
                                        r"\(--model.init_args.variant for `prefdiff fit`, --variant for"):
        weights_variant(both)
    with pytest.raises(UserError, match=r"both has no 'non_ema' weights \(it holds the variant\(s\) bf16, fp16\)"):
        weights_variant(both, "non_ema")
    pickles = touch(tmp_path / "pickles", "diffusion_pytorch_model.bin", "config.json")
    with pytest.raises(UserError, match=r"pickles holds only .bin \(pickle\) weights; prefdiff reads safetensors"):
        weights_variant(pickles)
    with pytest.raises(UserError, match=r"empty holds no weights \(no \*.safetensors\); copy the whole pipeline"):
        weights_variant(touch(tmp_path / "empty", "config.json"))


def _parameters(denoiser):
    return dict(denoiser.named_parameters())


def test_a_folder_of_fp16_weights_only_loads_them(tmp_path, caplog):
    # `huggingface-cli download ... --include "*fp16*"`: every component holds diffusion_pytorch_model.fp16.safetensors
    # (model.fp16.safetensors for the text encoder) and no plain weights.
    from diffusers import DiffusionPipeline

    plain = tiny_pipeline(tmp_path / "plain")
    pipe = DiffusionPipeline.from_pretrained(plain, local_files_only=True)
    pipe.to(torch.float16).save_pretrained(tmp_path / "fp16", variant="fp16")
    with caplog.at_level(logging.INFO, logger="prefdiff"):
        half = _parameters(load_model(tmp_path / "fp16"))
    assert "reading the fp16 weights of unet, vae, text_encoder (no plain weights there)" in caplog.text
    full = _parameters(load_model(plain))
    assert half.keys() == full.keys()
    for name, value in full.items():
        assert half[name].dtype == torch.float32
        torch.testing.assert_close(half[name], value.half().float(), rtol=0, atol=0, msg=name)


def test_a_sharded_variant_of_a_flow_pipeline_loads(tmp_path):
    from diffusers import StableDiffusion3Pipeline

    plain = tiny_sd3_pipeline(tmp_path / "plain")
    pipe = StableDiffusion3Pipeline.from_pretrained(plain, local_files_only=True)
    pipe.to(torch.bfloat16).save_pretrained(tmp_path / "bf16", variant="bf16", max_shard_size="20KB")
    assert len(list((tmp_path / "bf16" / "transformer").glob("*.bf16-*-of-*.safetensors"))) > 1
    half = _parameters(load_model(tmp_path / "bf16"))
    full = _parameters(load_model(plain))
    assert half.keys() == full.keys() and any("text_encoder" in name for name in full)
    for name, value in full.items():
        torch.testing.assert_close(half[name], value.bfloat16().float(), rtol=0, atol=0, msg=name)


def test_a_named_variant_is_read_where_a_component_has_it(tmp_path):
    # Stable Diffusion 1.5 ships unet/diffusion_pytorch_model.non_ema.safetensors beside the EMA weights.
    from diffusers import UNet2DConditionModel

    folder = tiny_pipeline(tmp_path / "pipe")
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.5)
    unet.save_pretrained(folder / "unet", variant="non_ema")
    ema, non_ema = load_model(folder), load_model(folder, variant="non_ema")
    torch.testing.assert_close(non_ema.net.conv_in.weight, ema.net.conv_in.weight + 0.5)
    torch.testing.assert_close(non_ema.codec.vae.encoder.conv_in.weight, ema.codec.vae.encoder.conv_in.weight)


def test_a_variant_where_none_can_be_read_is_an_error(tmp_path, capsys):
    from diffusers import DiffusionPipeline

    from prefdiff.cli import main
    from prefdiff.trainers import PairModule

    pipe = DiffusionPipeline.from_pretrained(tiny_pipeline(tmp_path / "plain"), local_files_only=True)
    pipe.save_pretrained(tmp_path / "fp16", variant="fp16")
    capsys.readouterr()
    code = main(["sample", "--model", str(tmp_path / "fp16"), "--variant", "bf16", "--prompt", "a red circle",
                 "--steps", "2", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("prefdiff: error: ") and "fp16/unet has no 'bf16' weights (it holds the variant(s) fp16)" \
        in err[0]
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match=r"--model.variant \('fp16'\) picks the weight files of a pipeline folder"):
        PairModule(model={"kind": "unet2d", "sample_size": 8}, variant="fp16")
    # The module reads the variant it is given (not the folder's only one), and a prefdiff model folder has none.
    with pytest.raises(UserError, match=r"fp16/unet has no 'bf16' weights"):
        PairModule(base=str(tmp_path / "fp16"), variant="bf16", lora_rank=4)
    from prefdiff.models import save_model
    from prefdiff.testing import tiny_denoiser

    save_model(tiny_denoiser(), tmp_path / "prefdiff-model")
    with pytest.raises(UserError, match=r"a weight variant \('fp16'\) is read from a diffusers pipeline folder; "
                                        r".*prefdiff-model is not one: drop the variant"):
        load_model(tmp_path / "prefdiff-model", variant="fp16")
