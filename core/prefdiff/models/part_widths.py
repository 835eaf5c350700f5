"""Do a pipeline folder's parts fit together? The widths its denoiser reads, checked from the configs.

A folder assembled from two models (an SDXL UNet copied into an SD-1.5 folder, a T5 of another
width beside an SD3 transformer) loads part by part and fails only in the first forward pass, with a
matrix-shape error that names no part. These checks read the ``config.json`` files before any weight
is loaded and name the two parts that disagree. What each denoiser reads, as diffusers' pipelines
build it:

- SD-1.x/2.x: ``cross_attention_dim`` is the CLIP's ``hidden_size``; no added embeddings.
- SDXL: ``cross_attention_dim`` is both CLIPs' widths side by side; the added ``text_time``
  embedding takes the second CLIP's ``projection_dim`` plus six time ids of
  ``addition_time_embed_dim`` each.
- SD3: ``pooled_projection_dim`` is both CLIPs' ``projection_dim``; their states, side by side,
  are zero-padded to ``joint_attention_dim``, which is T5's ``d_model``.
- FLUX: ``pooled_projection_dim`` is the CLIP's ``hidden_size`` (its pooled output);
  ``joint_attention_dim`` is T5's ``d_model``; the transformer reads 2x2 patches of the latents.
- Every layout: the denoiser's input channels are the VAE's ``latent_channels`` (times 4 for FLUX).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefdiff.errors import UserError


def check_part_widths(path: Path, layout: str) -> None:
    """One clear error naming the two parts of the folder at ``path`` whose widths disagree."""
    part = "transformer" if layout in ("StableDiffusion3Pipeline", "FluxPipeline") else "unet"
    net, vae = _config(path, part), _config(path, "vae")
    encoders = [_config(path, name) for name in ("text_encoder", "text_encoder_2", "text_encoder_3")]
    if layout == "StableDiffusionPipeline" and net.get("addition_embed_type") == "text_time":
        raise UserError(f"pipeline folder {path} is a StableDiffusionPipeline, but its unet/ is an SDXL UNet (it "
                        f"adds SDXL's text_time embedding); open it in a StableDiffusionXLPipeline folder, or "
                        f"restore the unet/ this folder was released with")
    for what, wanted, got, other in _expected(layout, net, vae, encoders):
        if None not in (wanted, got) and wanted != got:
            raise UserError(f"pipeline folder {path}: its {part}/ expects {what} {wanted}, but {other} gives "
                            f"{got}; the parts come from different models: restore the parts the pipeline "
                            f"was released with")


def _expected(layout: str, net: dict, vae: dict, encoders: list[dict]) -> list[tuple[str, Any, Any, str]]:
    """``(what the denoiser reads, its width, the width the other part gives, the other part)``."""
    clip, clip_2, t5 = encoders
    latent = vae.get("latent_channels")
    checks = [("input channels", net.get("in_channels"),
               latent * 4 if layout == "FluxPipeline" and latent else latent, "vae/ (latent_channels)")]
    if layout == "StableDiffusionPipeline":
        checks.append(("text states of width", net.get("cross_attention_dim"), clip.get("hidden_size"),
                       "text_encoder/ (hidden_size)"))
    elif layout == "StableDiffusionXLPipeline":
        both = _sum(clip.get("hidden_size"), clip_2.get("hidden_size"))
        checks.append(("text states of width", net.get("cross_attention_dim"), both,
                       "text_encoder/ and text_encoder_2/ (hidden_size, side by side)"))
        time_ids = net.get("addition_time_embed_dim")
        pooled = _sum(clip_2.get("projection_dim"), 6 * time_ids if time_ids else None)
        checks.append(("added embeddings of width", net.get("projection_class_embeddings_input_dim"), pooled,
                       "text_encoder_2/ (projection_dim, plus six time ids)"))
    elif layout == "StableDiffusion3Pipeline":
        checks.append(("pooled prompt embeddings of width", net.get("pooled_projection_dim"),
                       _sum(clip.get("projection_dim"), clip_2.get("projection_dim")),
                       "text_encoder/ and text_encoder_2/ (projection_dim, side by side)"))
        checks.append(("text states of width", net.get("joint_attention_dim"), t5.get("d_model"),
                       "text_encoder_3/ (d_model)"))
    elif layout == "FluxPipeline":
        checks.append(("pooled prompt embeddings of width", net.get("pooled_projection_dim"),
                       clip.get("hidden_size"), "text_encoder/ (hidden_size)"))
        checks.append(("text states of width", net.get("joint_attention_dim"), clip_2.get("d_model"),
                       "text_encoder_2/ (d_model)"))
    return checks


def _sum(*widths: int | None) -> int | None:
    return None if None in widths else sum(widths)


def _config(path: Path, part: str) -> dict:
    """A part's ``config.json`` as a dict; empty when the part is absent (an optional one) or unreadable
    (the loader then names the file)."""
    try:
        config = json.loads((path / part / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}
