"""Public pytest helpers for prefdiff and its plugin authors (like pytest's ``pytester``).

    from prefdiff.testing import registered_plugin, check_reward, tiny_denoiser

    def test_my_reward():
        with registered_plugin(my_plugin_module) as manager:
            reward = manager.reward("my_reward")
            check_reward(reward, conditions=None, samples=torch.rand(4, 3, 16, 16) * 2 - 1)
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from prefdiff.data import select
from prefdiff.markers import hookimpl
from prefdiff.models import Denoiser, ModelPreset, build_denoiser
from prefdiff.plugins import PluginManager, get_manager
from prefdiff.rewards import Reward, check_reward_output


def fresh_manager() -> PluginManager:
    """A new process-wide plugin manager, loading every installed plugin again."""
    from prefdiff.plugins import reset_manager

    reset_manager()
    return get_manager()


def plugin_info(name: str):
    """What the installed plugin ``name`` registered (and its errors), as `prefdiff plugins` shows it."""
    infos = {info.name: info for info in fresh_manager().plugins()}
    assert name in infos, f"plugin '{name}' is not installed; installed: {', '.join(sorted(infos))}"
    return infos[name]


@contextlib.contextmanager
def registered_plugin(plugin: Any, name: str = "test-plugin") -> Iterator[PluginManager]:
    """Register ``plugin`` with the process-wide manager for the block, then remove it."""
    manager = get_manager()
    manager.add(plugin, name)
    try:
        yield manager
    finally:
        manager.remove(name)


def tiny_preset(**overrides: Any) -> ModelPreset:
    """A 16x16 RGB class-conditioned UNet2D preset small enough for unit tests."""
    options = dict(kind="unet2d", sample_size=16, channels=3, conditioning="class", num_classes=4,
                   block_out_channels=(16, 32), norm_num_groups=8)
    options.update(overrides)
    return ModelPreset(**options)


def tiny_denoiser(seed: int = 0, **overrides: Any) -> Denoiser:
    """A freshly initialised tiny denoiser (see :func:`tiny_preset`)."""
    torch.manual_seed(seed)
    return build_denoiser(tiny_preset(**overrides))


def tiny_scheduler():
    """The default DDIM schedule."""
    from prefdiff.schedulers import build_scheduler

    return build_scheduler()


def tiny_samples(denoiser: Denoiser, cond: Any, *, num_steps: int = 4, seed: int = 0,
                 eta: float = 1.0) -> torch.Tensor:
    """Samples from ``denoiser`` with the core's DDIM sampler, noise fixed by ``seed``."""
    from prefdiff.data import condition_count, infer_sample_shape
    from prefdiff.sampling import sample

    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((condition_count(cond), *infer_sample_shape(denoiser)), generator=generator)
    with torch.no_grad():
        return sample(denoiser, tiny_scheduler(), noise, cond, num_steps=num_steps, eta=eta,
                      generator=generator).samples


def condition_batch(batch: int = 4, num_classes: int = 4, seed: int = 0) -> torch.Tensor:
    """Class-label conditions for :func:`tiny_denoiser`."""
    return torch.randint(num_classes, (batch,), generator=torch.Generator().manual_seed(seed))


def tiny_recipe(**overrides: Any):
    """A benchmark recipe on the built-in textures that runs in seconds (8x8 images, a few steps).

    Register it with :class:`RecipePlugin` and run it with ``prefdiff.bench.run_benchmark``.
    """
    from dataclasses import replace

    from prefdiff.bench.recipe import Recipe

    recipe = Recipe(
        domain="tiny", dataset="synthetic_textures", dataset_options={"resolution": 8},
        model={"kind": "unet2d", "sample_size": 8, "channels": 3, "conditioning": "class", "num_classes": 4,
               "block_out_channels": (8, 16)},
        conditioner="class_label", reward="jpeg_compressibility", judge="jpeg_incompressibility",
        methods={"draft": {"reward": "smoothness", "k": 2}, "ddpo": {"samples_per_condition": 2}},
        default_methods=["dpo", "ddpo", "draft"], pretrain_steps=6, pretrain_batch=8, align_steps=2,
        align_batch=4, n_eval=8, num_steps=3, mine_conditions=6, mine_per_condition=2, train_size=64)
    return replace(recipe, **overrides)


class RecipePlugin:
    """A plugin object registering one benchmark recipe under its domain name (use with
    :func:`registered_plugin`)."""

    def __init__(self, recipe) -> None:
        self.recipe = recipe

    @hookimpl
    def prefdiff_register_benchmarks(self, register) -> None:
        register(self.recipe.domain, lambda quick: self.recipe)


def drawn_figures(recipe, dataset_options: dict[str, Any], folder, *, split: str = "test",
                  edit: tuple[str, ...] = ("--strength", "0.5")) -> tuple[Any, Any]:
    """Run `prefdiff sample` and `prefdiff edit` on an untrained model of ``recipe``'s preset and
    conditioner over its dataset; returns the two PNGs they drew (``samples.png``, ``edit.png``).

    What a plugin's dataset ``draw`` method is tested with: the commands' exit codes are checked
    here, the pictures are the test's to check.
    """
    from pathlib import Path

    from prefdiff.cli import main
    from prefdiff.models import save_model

    folder = Path(folder)
    torch.manual_seed(0)
    conditioner = (get_manager().conditioner(recipe.conditioner, **recipe.conditioner_options)
                   if recipe.conditioner else None)
    save_model(build_denoiser(recipe.model, conditioner), folder / "model")
    common = ["--model", str(folder / "model"), "--dataset", recipe.dataset, "--split", split, "--steps", "2"]
    for key, value in dataset_options.items():
        common += ["--dataset-option", f"{key}={value}"]
    assert main(["sample", *common, "--n", "3", "--out", str(folder / "sample")]) == 0
    assert main(["edit", *common, "--index", "0", *edit, "--out", str(folder / "edit")]) == 0
    return folder / "sample" / "samples.png", folder / "edit" / "edit.png"


def sample_by_the_adapter_guide(out, method: str, *, lora: bool = True) -> torch.Tensor:
    """Run the `prefdiff sample` command that a benchmark's ``OUT/adapters/README.md`` gives for
    ``method`` (without its ``--lora``: the base) into a folder beside ``out``; returns the samples.
    A method trained without LoRA is sampled from its whole model."""
    import re
    import shlex
    from pathlib import Path

    from safetensors.torch import load_file

    from prefdiff.cli import main

    out = Path(out)
    guide = (out / "adapters" / "README.md").read_text().replace("\\\n", "")
    aligned = out.resolve() / "adapters" / method
    line = next((ln.strip() for ln in guide.splitlines() if ln.strip().startswith("prefdiff sample")
                 and (f"--lora {aligned} " in ln + " " or f"--model {aligned} " in ln + " ")), None)
    assert line is not None, f"{out / 'adapters' / 'README.md'} has no command for {method}:\n{guide}"
    args = shlex.split(line)[1:]
    if not lora and "--lora" in args:
        at = args.index("--lora")
        del args[at:at + 2]
    elif not lora:  # a whole model: the guide's base instead
        base = re.search(r"With `--model (.+?)` alone", guide)
        assert base is not None, f"{out / 'adapters' / 'README.md'} names no base:\n{guide}"
        args[args.index("--model") + 1] = shlex.split(base.group(1))[0]
    folder = out.parent / f"{out.name}-{method if lora else 'base'}-samples"
    args[args.index("--out") + 1] = str(folder)
    assert main(args) == 0, f"prefdiff {' '.join(args)} failed"
    return load_file(str(folder / "samples.safetensors"))["samples"]


# ------------------------------------------------------------ pipelines ----


def char_tokenizer(max_length: int = 32):
    """A CLIP tokenizer whose vocabulary is single characters (no merges): a real ``CLIPTokenizer``
    built with no download, for pipelines made from configs."""
    from transformers import CLIPTokenizer

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    chars = [chr(c) for c in printable] + [chr(256 + i) for i in range(len(extra))]  # GPT-2's byte alphabet
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def tiny_pipeline(directory, *, sdxl: bool = False, prediction_type: str = "epsilon", seed: int = 0,
                  image_size: int = 16, max_length: int = 32):
    """Write a tiny Stable Diffusion (or SDXL) pipeline with random weights to ``directory``, as
    ``save_pretrained`` does; returns the folder. Built from configs like diffusers' own tests.
    """
    from pathlib import Path

    from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    text = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                vocab_size=520, max_position_embeddings=max_length, bos_token_id=512, eos_token_id=513,
                pad_token_id=513, projection_dim=32)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                        norm_num_groups=8, sample_size=image_size)
    unet_options = dict(sample_size=image_size // 2, in_channels=4, out_channels=4, layers_per_block=1,
                        block_out_channels=(16, 32), norm_num_groups=8, attention_head_dim=4,
                        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)
    if sdxl:
        unet = UNet2DConditionModel(**unet_options, cross_attention_dim=64, addition_embed_type="text_time",
                                    addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32)
        pipe = StableDiffusionXLPipeline(
            unet=unet, vae=vae, scheduler=scheduler, text_encoder=CLIPTextModel(CLIPTextConfig(**text)),
            tokenizer=char_tokenizer(max_length), tokenizer_2=char_tokenizer(max_length),
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**text)))
    else:
        unet = UNet2DConditionModel(**unet_options, cross_attention_dim=32)
        pipe = StableDiffusionPipeline(unet=unet, vae=vae, scheduler=scheduler,
                                       text_encoder=CLIPTextModel(CLIPTextConfig(**text)),
                                       tokenizer=char_tokenizer(max_length), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(directory, safe_serialization=True)
    return Path(directory)


def char_t5_tokenizer(max_length: int = 32):
    """A T5 tokenizer whose Unigram vocabulary is single characters: a real ``T5TokenizerFast``
    (tokenizers-backed) built with no download, for SD3 and FLUX pipelines made from configs."""
    from transformers import T5TokenizerFast

    pieces = [chr(c) for c in range(ord("!"), ord("~") + 1)]
    # T5 keeps pad, eos and unk first; "\u2581" is SentencePiece's word boundary.
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)] + [(c, -3.0) for c in pieces]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=max_length)


def _tiny_flow_parts(image_size: int, scaling_factor: float, shift_factor: float, t5_width: int):
    """The VAE and T5 encoder that the tiny SD3 and FLUX pipelines share (random weights)."""
    from diffusers import AutoencoderKL
    from transformers import T5Config, T5EncoderModel

    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                        norm_num_groups=8, sample_size=image_size, scaling_factor=scaling_factor,
                        shift_factor=shift_factor, use_quant_conv=False, use_post_quant_conv=False)
    t5 = T5EncoderModel(T5Config(vocab_size=len(char_t5_tokenizer()), d_model=t5_width, d_ff=37, d_kv=8,
                                 num_layers=2, num_heads=4, relative_attention_num_buckets=8))
    return vae, t5


def tiny_sd3_pipeline(directory, *, seed: int = 0, image_size: int = 16, max_length: int = 32, t5: bool = True,
                      sd35: bool = False):
    """Write a tiny Stable Diffusion 3 pipeline (MMDiT, CLIP-L/G-shaped encoders, T5) with random weights
    to ``directory``; ``t5=False`` leaves text_encoder_3 out, as SD3 folders may, and ``sd35=True`` gives the
    transformer SD3.5-medium's MMDiT-X blocks (a second self-attention in the first block, RMS-normalised
    queries and keys). Returns the folder."""
    from pathlib import Path

    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    text = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                vocab_size=520, max_position_embeddings=max_length, bos_token_id=512, eos_token_id=513,
                pad_token_id=513, projection_dim=32)
    vae, encoder_3 = _tiny_flow_parts(image_size, 1.5305, 0.0609, t5_width=64)
    # joint_attention_dim is T5's width (the CLIP states are padded to it); the pooled
    # projection is both CLIPs' projections side by side.
    transformer = SD3Transformer2DModel(sample_size=image_size // 2, patch_size=2, in_channels=4, out_channels=4,
                                        num_layers=2, attention_head_dim=8, num_attention_heads=4,
                                        joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=64,
                                        **({"dual_attention_layers": (0,), "qk_norm": "rms_norm"} if sd35 else {}))
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        text_encoder=CLIPTextModelWithProjection(CLIPTextConfig(**text)), tokenizer=char_tokenizer(max_length),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**text)), tokenizer_2=char_tokenizer(max_length),
        text_encoder_3=encoder_3 if t5 else None, tokenizer_3=char_t5_tokenizer(max_length) if t5 else None)
    pipe.save_pretrained(directory, safe_serialization=True)
    return Path(directory)


def diffusers_lora(pipeline_dir, directory, *, alpha: float = 4, seed: int = 0):
    """Write a rank-4 LoRA of the pipeline at ``pipeline_dir`` to ``directory`` the way diffusers' LoRA
    training scripts do (the Diffusion-DPO example among them): ``add_adapter`` on its UNet or transformer
    with a gaussian start, B drawn at random in place of training, saved by the pipeline class's
    ``save_lora_weights`` (``pytorch_lora_weights.safetensors`` alone). Returns the folder."""
    import json
    from pathlib import Path

    import diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from prefdiff.models.pipelines import network_part

    name = json.loads((Path(pipeline_dir) / "model_index.json").read_text())["_class_name"]
    part = network_part(name)
    network = getattr(diffusers, json.loads((Path(pipeline_dir) / part / "config.json").read_text())["_class_name"])
    net = network.from_pretrained(pipeline_dir, subfolder=part)
    net.add_adapter(LoraConfig(r=4, lora_alpha=alpha, init_lora_weights="gaussian",
                               target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter_name, parameter in net.named_parameters():
            if "lora_B" in parameter_name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    getattr(diffusers, name).save_lora_weights(save_directory=directory, safe_serialization=True,
                                               **{f"{part}_lora_layers": get_peft_model_state_dict(net)})
    return Path(directory)


def tiny_flux_pipeline(directory, *, seed: int = 0, image_size: int = 16, max_length: int = 32,
                       guidance_embeds: bool = True):
    """Write a tiny FLUX pipeline (double- and single-stream blocks, CLIP pooled, T5) with random weights to
    ``directory``; ``guidance_embeds`` makes it guidance-distilled like FLUX.1-dev. Returns the folder.

    The VAE's ``sample_size`` is the image side prefdiff samples at (1024 in the released folders).
    """
    from pathlib import Path

    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    text = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                vocab_size=520, max_position_embeddings=max_length, bos_token_id=512, eos_token_id=513,
                pad_token_id=513)
    vae, encoder_2 = _tiny_flow_parts(image_size, 0.3611, 0.1159, t5_width=32)
    # 2x2 patches of the 4-channel latent: 16 input channels; the rotary axes add up to the head width.
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, guidance_embeds=guidance_embeds,
                                         axes_dims_rope=(4, 4, 8))
    # FLUX.1's schedule: the shift grows with the image's token count.
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(transformer=transformer, vae=vae, scheduler=scheduler,
                        text_encoder=CLIPTextModel(CLIPTextConfig(**text)), tokenizer=char_tokenizer(max_length),
                        text_encoder_2=encoder_2, tokenizer_2=char_t5_tokenizer(max_length))
    pipe.save_pretrained(directory, safe_serialization=True)
    return Path(directory)


def check_reward(reward: Reward | Any, conditions: Any, samples: torch.Tensor, *,
                 differentiable: bool | None = None, atol: float = 1e-5) -> torch.Tensor:
    """Assert the reward contract on ``samples``; returns the scores.

    One float score per sample, finite; the same for the same input; a batch
    scores as its items one by one; device and dtype follow the input; a reward
    declared differentiable passes gradients to the samples.
    """
    fn = reward.fn if isinstance(reward, Reward) else reward
    who = reward.describe() if isinstance(reward, Reward) else "reward"
    if differentiable is None:
        differentiable = bool(getattr(reward, "differentiable", False))
    b = samples.shape[0]
    scores, _ = check_reward_output(fn(samples, conditions), b, who)
    again, _ = check_reward_output(fn(samples.clone(), conditions), b, who)
    assert torch.allclose(scores, again, atol=atol), f"{who} is not deterministic: {scores} vs {again}"
    one_by_one = torch.cat([check_reward_output(fn(samples[i:i + 1], select(conditions, slice(i, i + 1))), 1, who)[0]
                            for i in range(b)])
    assert torch.allclose(scores, one_by_one, atol=atol), (
        f"{who} scores a batch differently from its items one by one: {scores} vs {one_by_one}")
    assert scores.device == samples.device, f"{who} returned scores on {scores.device}, input on {samples.device}"
    if samples.is_floating_point():
        assert scores.dtype == samples.dtype, f"{who} returned {scores.dtype} scores for {samples.dtype} input"
    if differentiable:
        x = samples.detach().clone().requires_grad_(True)
        out, _ = check_reward_output(fn(x, conditions), b, who)
        assert out.requires_grad, f"{who} is declared differentiable but its scores carry no gradient"
        out.sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0, f"{who} is declared differentiable but passes no gradient"
    return scores


# ------------------------------------------------------------ fixtures ----
# This module is a pytest plugin: ``pytest_plugins = ["prefdiff.testing"]`` in a
# top-level conftest.py gives every test a fresh plugin manager, a private
# benchmark cache and one torch thread, as prefdiff's own tests have.

import pytest  # noqa: E402  (only test code imports this module)


@pytest.fixture(autouse=True)
def isolated_prefdiff(monkeypatch, tmp_path_factory):
    """A fresh plugin manager and a private PREFDIFF_CACHE for each test."""
    from prefdiff.plugins import reset_manager

    monkeypatch.delenv("PREFDIFF_PLUGINS", raising=False)
    monkeypatch.setenv("PREFDIFF_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    reset_manager()
    yield
    reset_manager()


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One intra-op thread: tiny models run fast and repeatably on shared cores."""
    torch.set_num_threads(1)
