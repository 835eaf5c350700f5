"""The pipelines the GPU script trains on: Stable Diffusion 1.5, SDXL and SD3-medium shapes.

Each is written as a diffusers pipeline folder (``save_pretrained``) from its
public configs with random weights (throughput does not depend on the
weights), so prefdiff opens it exactly as a user's folder:
``AlignmentModule(base=FOLDER)``. The widths and depths below are those of
the released ``model_index.json`` components:

- SD-1.5 (runwayml/stable-diffusion-v1-5): the 860M UNet, the KL VAE (f=8),
  CLIP ViT-L/14's text encoder; 512x512 images, 64x64x4 latents, 77 tokens.
- SDXL base 1.0: the 2.6B UNet (transformer depths 1, 2, 10), the VAE at
  1024, CLIP ViT-L and OpenCLIP ViT-bigG (with projection); 128x128x4 latents.
- SD3-medium: the 2B MMDiT (24 joint blocks, 1536 wide, 2x2 patches), the
  16-channel VAE, CLIP-L and CLIP-G with projections. T5-XXL (4.7B) is left
  out, as SD3 folders may leave it out: the prompt encoder then gives zeros in
  its 256 token slots, so the transformer still sees 77 + 256 text tokens.

The tokenizers are :func:`prefdiff.testing.char_tokenizer` (one id per
character, padded to 77 as CLIP's): no download, the same sequence lengths.
With ``tiny`` the folders are :mod:`prefdiff.testing`'s tiny pipelines (the CPU smoke run).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

CLIP_TOKENS = 77
#: The char tokenizer's ids of <|startoftext|> and <|endoftext|> (CLIP pads with the end token).
_BOS, _EOS = 512, 513
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
              max_position_embeddings=CLIP_TOKENS, vocab_size=49408, hidden_act="quick_gelu", projection_dim=768,
              bos_token_id=_BOS, eos_token_id=_EOS, pad_token_id=_EOS)
CLIP_G = dict(CLIP_L, hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
              hidden_act="gelu", projection_dim=1280)
VAE_SD = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
              latent_channels=4, norm_num_groups=32, sample_size=512, scaling_factor=0.18215)
VAE_SDXL = dict(VAE_SD, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
VAE_SD3 = dict(VAE_SD, latent_channels=16, sample_size=1024, scaling_factor=1.5305, shift_factor=0.0609,
               use_quant_conv=False, use_post_quant_conv=False)
UNET_SD15 = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280),
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                 cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
UNET_SDXL = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
                 use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816, norm_num_groups=32)
TRANSFORMER_SD3 = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                       attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                       caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=192)


@dataclass(frozen=True)
class Shape:
    """A pipeline shape and the workload the GPU script gives it."""

    name: str
    title: str
    network: dict[str, Any]
    """The denoising network's config (the UNet's or the transformer's)."""
    image_size: int
    dpo_pairs: int
    """Preference pairs per Diffusion-DPO step."""
    prompts: int
    """Prompts per policy-gradient step."""
    samples_per_prompt: int
    """Trajectories per prompt (the GRPO group)."""
    num_steps: int
    """Sampling steps of a policy-gradient step."""
    logprob_batch: int
    """Steps per batched log-prob forward when that lever is on."""


SHAPES = {
    "sd15": Shape("sd15", "SD-1.5", UNET_SD15, 512, dpo_pairs=8, prompts=2, samples_per_prompt=4, num_steps=10,
                  logprob_batch=2),
    "sdxl": Shape("sdxl", "SDXL", UNET_SDXL, 1024, dpo_pairs=2, prompts=2, samples_per_prompt=2, num_steps=6,
                  logprob_batch=2),
    "sd3": Shape("sd3", "SD3-medium (no T5)", TRANSFORMER_SD3, 1024, dpo_pairs=2, prompts=2, samples_per_prompt=2,
                 num_steps=6, logprob_batch=2),
}
TINY_SHAPES = {name: Shape(name, f"{s.title}, tiny", {}, 16, dpo_pairs=2, prompts=2, samples_per_prompt=2,
                           num_steps=3, logprob_batch=2) for name, s in SHAPES.items()}


def write_pipeline(shape: Shape, folder: Path, *, tiny: bool, device: torch.device, dtype: torch.dtype) -> Path:
    """Write ``shape``'s pipeline folder with random weights; returns it. The weights are drawn on
    ``device`` (fast for billions of them) and saved in ``dtype``."""
    from prefdiff.models.pipelines import quiet_hub

    if tiny:
        from prefdiff.testing import tiny_pipeline, tiny_sd3_pipeline

        with quiet_hub():
            if shape.name == "sd3":
                return tiny_sd3_pipeline(folder, t5=False)
            return tiny_pipeline(folder, sdxl=shape.name == "sdxl")
    torch.manual_seed(0)
    with torch.device(device), quiet_hub():
        pipe = _pipeline(shape.name)
        pipe.to(dtype)
        pipe.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def _pipeline(name: str):
    from diffusers import (AutoencoderKL, DDIMScheduler, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from prefdiff.testing import char_tokenizer

    def tokenizer():
        return char_tokenizer(CLIP_TOKENS)

    # The released SD 1.x/SDXL schedule (scaled linear betas), sampled by DDIM.
    ddim = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)
    if name == "sd15":
        return StableDiffusionPipeline(unet=UNet2DConditionModel(**UNET_SD15), vae=AutoencoderKL(**VAE_SD),
                                       scheduler=ddim, text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L)),
                                       tokenizer=tokenizer(), safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    if name == "sdxl":
        return StableDiffusionXLPipeline(
            unet=UNet2DConditionModel(**UNET_SDXL), vae=AutoencoderKL(**VAE_SDXL), scheduler=ddim,
            text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L)), tokenizer=tokenizer(),
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G)), tokenizer_2=tokenizer())
    if name == "sd3":
        return StableDiffusion3Pipeline(
            transformer=SD3Transformer2DModel(**TRANSFORMER_SD3), vae=AutoencoderKL(**VAE_SD3),
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            text_encoder=CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_L)), tokenizer=tokenizer(),
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G)), tokenizer_2=tokenizer(),
            text_encoder_3=None, tokenizer_3=None)
    raise ValueError(f"unknown shape {name!r}; one of {', '.join(SHAPES)}")


def describe(shape: Shape, folder: Path) -> dict[str, Any]:
    """What the JSON records of a written folder: its network's class, config and size, and the
    sample, latent and text shapes a step sees."""
    import json

    index = json.loads((folder / "model_index.json").read_text())
    part = "unet" if "unet" in index else "transformer"
    config = json.loads((folder / part / "config.json").read_text())
    weights = sum(f.stat().st_size for f in (folder / part).glob("*.safetensors"))
    return {"title": shape.title, "pipeline": index["_class_name"], "network": config["_class_name"],
            "network_config": {k: v for k, v in config.items() if not k.startswith("_")},
            "network_file_mb": round(weights / 2**20, 1), "image_size": shape.image_size,
            "dpo_pairs": shape.dpo_pairs, "prompts": shape.prompts, "samples_per_prompt": shape.samples_per_prompt,
            "num_steps": shape.num_steps}
