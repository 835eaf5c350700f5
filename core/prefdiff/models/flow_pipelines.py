"""Stable Diffusion 3 and FLUX pipeline folders: flow-matching transformers through the model seam.

``load_model(DIR)`` and ``load_scheduler(DIR)`` open these folders here (the
layout checks are :func:`~prefdiff.models.pipelines.pipeline_layout`'s). The
:class:`~prefdiff.models.Denoiser` predicts the velocity (``prediction_type``
``flow``); its condition encoder is :class:`~prefdiff.models.text.SD3PromptEncoder`
or :class:`~prefdiff.models.text.FluxPromptEncoder`, its codec the VAE with
the config's scaling and shift factors, and its ``net_call`` calls the
transformer as the diffusers pipeline does:

- SD3 (Esser et al. 2024): ``timestep`` is the model timestep ``t = 1000 s``;
- FLUX: ``timestep`` is ``s = t / 1000``; latents go in as 2x2 patches with
  their positions (``img_ids``, and zeros as ``txt_ids``), and a
  guidance-distilled model (``guidance_embeds``) gets its guidance value.

The samplers see ``[B, C, H, W]`` latents only (``sample_shape``); packing
stays inside the call. The scheduler is diffusers' ``FlowMatchEulerDiscreteScheduler``,
set up by :func:`load_flow_scheduler` so that ``set_timesteps(n)`` gives the
pipeline's own schedule at the folder's resolution.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prefdiff.errors import UserError
from prefdiff.models.codec import VaeCodec
from prefdiff.models.denoiser import Denoiser
from prefdiff.models.pipelines import (FLOW_LAYOUTS, INDEX, has_part, loading, pipeline_layout, quiet_hub,
                                      read_options)
from prefdiff.models.presets import ModelPreset

log = logging.getLogger("prefdiff.models")

SD3, FLUX = "StableDiffusion3Pipeline", "FluxPipeline"
#: T5 tokens per prompt: the ``max_sequence_length`` default of each pipeline's ``__call__``.
MAX_SEQUENCE_LENGTH = {SD3: 256, FLUX: 512}
FLUX_GUIDANCE = 3.5
"""FluxPipeline's default ``guidance_scale``: the value a guidance-distilled FLUX (FLUX.1-dev) embeds."""


def load_flow_pipeline(path: str | Path, *, negative_prompt: str = "", dtype: torch.dtype | None = None,
                       variant: str | None = None) -> Denoiser:
    """The SD3 or FLUX folder at ``path`` as a :class:`Denoiser` (its transformer trains; VAE and text encoders
    are frozen).

    :param negative_prompt: the unconditional prompt of classifier-free guidance.
    :param dtype: load the weights in this dtype (default float32).
    :param variant: read this weight variant where a component has it (as
        :func:`~prefdiff.models.pipelines.load_pipeline`).
    """
    from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    from prefdiff.models.text import FluxPromptEncoder, SD3PromptEncoder

    path = Path(path)
    layout = flow_layout(path)
    options = read_options(path, layout, dtype, variant)
    sd3 = layout == SD3
    clip = CLIPTextModelWithProjection if sd3 else CLIPTextModel  # SD3 pools both CLIPs' projections
    t5 = "3" if sd3 else "2"
    with loading(path):
        net = (SD3Transformer2DModel if sd3 else FluxTransformer2DModel).from_pretrained(path, **options("transformer"))
        vae = AutoencoderKL.from_pretrained(path, **options("vae"))
        tokenizers = [CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True)]
        encoders = [clip.from_pretrained(path, **options("text_encoder"))]
        if sd3:
            tokenizers.append(CLIPTokenizer.from_pretrained(path, subfolder="tokenizer_2", local_files_only=True))
            encoders.append(clip.from_pretrained(path, **options("text_encoder_2")))
        if sd3 and not has_part(path, "text_encoder_3"):
            log.info("%s: text_encoder_3 is null in its %s: prompts are encoded by the two CLIP encoders "
                     "alone, T5's part of the embedding zeros (as diffusers' StableDiffusion3Pipeline does)",
                     path, INDEX)
        else:
            tokenizers.append(T5TokenizerFast.from_pretrained(path, subfolder=f"tokenizer_{t5}", local_files_only=True))
            encoders.append(T5EncoderModel.from_pretrained(path, **options(f"text_encoder_{t5}")))
    length = MAX_SEQUENCE_LENGTH[layout]
    if sd3:
        conditioner = SD3PromptEncoder(tokenizers, encoders, joint_attention_dim=net.config.joint_attention_dim,
                                       max_sequence_length=length, negative_prompt=negative_prompt)
        call = sd3_call
    else:
        conditioner = FluxPromptEncoder(tokenizers, encoders, max_sequence_length=length,
                                        negative_prompt=negative_prompt)
        call = FluxCall(FLUX_GUIDANCE if net.config.guidance_embeds else None)
    side, _ = latent_grid(path, layout)
    channels = net.config.in_channels if sd3 else net.config.in_channels // 4
    # For a pipeline only the latent shape and the conditioning are read (save_model writes the folder back).
    preset = ModelPreset(kind="transformer", sample_size=side, channels=channels, conditioning="text",
                         prediction_type="flow")
    denoiser = Denoiser(net, preset, conditioner, codec=VaeCodec(vae), prediction_type="flow", net_call=call)
    denoiser.pipeline_class = layout
    return denoiser


def flow_layout(path: str | Path) -> str:
    """:func:`~prefdiff.models.pipelines.pipeline_layout` for this module: SD3 or FLUX, else one clear error."""
    layout = pipeline_layout(path)
    if layout not in FLOW_LAYOUTS:
        raise UserError(f"{path} holds a {layout}, not a flow-matching transformer; open it with "
                        f"prefdiff.models.load_model and prefdiff.schedulers.load_scheduler")
    return layout


def latent_grid(path: Path, layout: str) -> tuple[int, int]:
    """``(latent side, image tokens)`` at the pipeline's resolution, read from the component configs.

    SD3: the transformer's ``sample_size`` (StableDiffusion3Pipeline's default), in ``patch_size`` patches.
    FLUX: the VAE's ``sample_size`` in pixels (1024 in FLUX.1's folders, FluxPipeline's default), whose
    latent goes in 2x2 patches.
    """
    vae = json.loads((path / "vae" / "config.json").read_text())
    transformer = json.loads((path / "transformer" / "config.json").read_text())
    if layout == SD3:
        side = transformer["sample_size"]
        return side, (side // transformer["patch_size"]) ** 2
    scale = 2 ** (len(vae["block_out_channels"]) - 1)
    size = vae["sample_size"][0] if isinstance(vae["sample_size"], (list, tuple)) else vae["sample_size"]
    side = 2 * (size // (scale * 2))  # FluxPipeline rounds the latent down to whole patches
    return side, (side // 2) ** 2


# ------------------------------------------------------------ network calls


def sd3_call(net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """SD3's transformer on ``(x_t, t)``: the timestep goes in as ``t = 1000 s``, as StableDiffusion3Pipeline
    passes it."""
    return net(hidden_states=x, timestep=t, return_dict=False, **kwargs)[0]


class FluxCall:
    """FLUX's transformer on ``(x_t, t)``: ``[B, C, H, W]`` latents in 2x2 patches, ``timestep = t / 1000``.

    :param guidance: the value a guidance-distilled transformer embeds (None when its config has
        no ``guidance_embeds``); set ``denoiser.net_call.guidance`` to sample with another.
    """

    def __init__(self, guidance: float | None) -> None:
        self.guidance = guidance

    def __call__(self, net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor,
                 kwargs: dict[str, Any]) -> torch.Tensor:
        b, _, h, w = x.shape
        guidance = None if self.guidance is None else torch.full((b,), self.guidance, device=x.device)
        tokens = kwargs["encoder_hidden_states"].shape[1]
        out = net(hidden_states=pack(x), timestep=t.to(x.dtype) / 1000, guidance=guidance,
                  img_ids=patch_positions(h // 2, w // 2, x), txt_ids=x.new_zeros(tokens, 3), return_dict=False,
                  **kwargs)[0]
        return unpack(out, h, w)


def pack(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, H/2 * W/2, 4C]``: FLUX's tokens are 2x2 latent patches, row by row."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of :func:`pack`: ``[B, H/2 * W/2, 4C]`` -> ``[B, C, H, W]``."""
    b, _, d = tokens.shape
    return tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h, w)


def patch_positions(rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
    """``img_ids [rows * cols, 3]``: each patch's (0, row, column), the positions of FLUX's rotary embedding."""
    ids = torch.zeros(rows, cols, 3, device=like.device, dtype=like.dtype)
    ids[..., 1] = torch.arange(rows, device=like.device)[:, None]
    ids[..., 2] = torch.arange(cols, device=like.device)[None, :]
    return ids.reshape(rows * cols, 3)


# ------------------------------------------------------------ schedule


def load_flow_scheduler(path: str | Path):
    """The folder's ``FlowMatchEulerDiscreteScheduler``; ``set_timesteps(n)`` gives the pipeline's schedule.

    StableDiffusion3Pipeline takes diffusers' default steps, FluxPipeline its own grid ``linspace(1, 1/n, n)``;
    with ``use_dynamic_shifting`` (FLUX.1) both shift them by ``mu``, which grows with the image's token count
    (the resolution-dependent shift of Esser et al. 2024, sec. 5.3.2). prefdiff's samplers call
    ``set_timesteps(n)`` alone, so those arguments are bound to this scheduler (:class:`PipelineTimesteps`);
    a plain SD3 scheduler needs none.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    path = Path(path)
    layout = flow_layout(path)
    with loading(path):
        config = FlowMatchEulerDiscreteScheduler.load_config(path, subfolder="scheduler", local_files_only=True)
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
    if layout == FLUX or scheduler.config.use_dynamic_shifting:
        scheduler.set_timesteps = PipelineTimesteps(scheduler, flux=layout == FLUX,
                                                    image_tokens=latent_grid(path, layout)[1])
    return scheduler


class PipelineTimesteps:
    """``scheduler.set_timesteps`` with the arguments the pipeline passes at one resolution.

    :param scheduler: the ``FlowMatchEulerDiscreteScheduler`` it is bound to.
    :param flux: start from FluxPipeline's sigma grid ``linspace(1, 1/n, n)``.
    :param image_tokens: the transformer's image tokens, for the resolution-dependent shift ``mu``.
    """

    def __init__(self, scheduler, *, flux: bool, image_tokens: int) -> None:
        self.scheduler, self.flux, self.image_tokens = scheduler, flux, image_tokens

    def __call__(self, num_inference_steps: int | None = None, device=None, sigmas=None, mu: float | None = None,
                 timesteps=None) -> None:
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        config, n = self.scheduler.config, num_inference_steps
        if self.flux and sigmas is None and timesteps is None and not config.get("use_flow_sigmas", False):
            sigmas = np.linspace(1.0, 1 / n, n)
        if mu is None and config.use_dynamic_shifting:
            mu = calculate_shift(self.image_tokens, config.base_image_seq_len, config.max_image_seq_len,
                                 config.base_shift, config.max_shift)
        type(self.scheduler).set_timesteps(self.scheduler, n, device, sigmas=sigmas, mu=mu, timesteps=timesteps)


# ------------------------------------------------------------ saving


def save_flow_pipeline(denoiser: Denoiser, scheduler, directory: str | Path) -> Path:
    """Write an SD3 or FLUX :class:`Denoiser` (without LoRA) as its diffusers pipeline folder."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    encoder = denoiser.conditioner
    tokenizers, encoders = encoder.tokenizers, list(encoder.text_encoders)
    parts = {"transformer": denoiser.net, "vae": denoiser.codec.vae, "scheduler": scheduler,
             "text_encoder": encoders[0], "tokenizer": tokenizers[0],
             "text_encoder_2": encoders[1], "tokenizer_2": tokenizers[1]}
    if denoiser.pipeline_class == SD3:
        t5 = len(encoders) == 3
        pipe = StableDiffusion3Pipeline(**parts, text_encoder_3=encoders[2] if t5 else None,
                                        tokenizer_3=tokenizers[2] if t5 else None)
    else:
        pipe = FluxPipeline(**parts)
    with quiet_hub():
        pipe.save_pretrained(directory, safe_serialization=True)
    return Path(directory)
