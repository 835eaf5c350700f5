"""A user's local diffusers pipeline folder, loaded through the same seam as the fields' models.

``load_pipeline(DIR)`` opens a Stable Diffusion 1.x/2.x or SDXL folder (the
layout ``save_pretrained`` writes and the Hub's snapshots have) with
``from_pretrained`` and safetensors, never downloading anything, and returns a
:class:`~prefdiff.models.Denoiser` whose condition encoder is the frozen
:class:`~prefdiff.models.text.PromptEncoder`, whose codec is the frozen VAE
and whose prediction type is the scheduler's (epsilon or v-prediction).
The layout checks here cover SD3 and FLUX folders too, which
:mod:`prefdiff.models.flow_pipelines` opens (``load_model`` and ``load_scheduler``
pick the module by the folder's pipeline class).
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Iterator

import torch

from prefdiff.errors import UserError
from prefdiff.models.codec import VaeCodec
from prefdiff.models.denoiser import Denoiser
from prefdiff.models.part_widths import check_part_widths
from prefdiff.models.presets import ModelPreset
from prefdiff.models.weights import weights_variant

log = logging.getLogger("prefdiff.models")
INDEX = "model_index.json"

#: pipeline class -> the components prefdiff needs from its folder.
LAYOUTS = {
    "StableDiffusionPipeline": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    "StableDiffusionXLPipeline": ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
                                  "scheduler"),
    "StableDiffusion3Pipeline": ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
                                 "scheduler"),
    "FluxPipeline": ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
}
#: components a layout may leave out (``null`` in model_index.json): SD3 without T5.
OPTIONAL = {"StableDiffusion3Pipeline": ("text_encoder_3", "tokenizer_3")}
#: pipeline class -> the class of its denoising network.
NETWORKS = {"StableDiffusionPipeline": "UNet2DConditionModel", "StableDiffusionXLPipeline": "UNet2DConditionModel",
            "StableDiffusion3Pipeline": "SD3Transformer2DModel", "FluxPipeline": "FluxTransformer2DModel"}
#: the layouts that sample by flow matching (a FlowMatch* scheduler); the others by DDIM.
FLOW_LAYOUTS = ("StableDiffusion3Pipeline", "FluxPipeline")


@contextlib.contextmanager
def quiet_hub() -> Iterator[None]:
    """No progress bars or info lines from transformers and diffusers while loading or saving."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = transformers_logging.get_verbosity(), diffusers_logging.get_verbosity()
    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    diffusers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(levels[0])
        diffusers_logging.set_verbosity(levels[1])
        if bars:
            transformers_logging.enable_progress_bar()


def is_pipeline_folder(path: str | Path) -> bool:
    """Whether ``path`` holds a diffusers pipeline (a ``model_index.json``)."""
    return (Path(path) / INDEX).is_file()


def pipeline_layout(path: str | Path) -> str:
    """The pipeline class of a folder, checked against what prefdiff needs; one clear error otherwise."""
    path = Path(path)
    if not is_pipeline_folder(path):
        raise UserError(f"{path} is not a diffusers pipeline folder (no {INDEX}); pass the folder that "
                        f"`save_pretrained` wrote, the one holding {INDEX}")
    try:
        index = json.loads((path / INDEX).read_text())
        name = index["_class_name"]
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path / INDEX} is malformed ({type(exc).__name__}: {exc}); re-save the pipeline") from None
    if name not in LAYOUTS:
        raise UserError(f"{path} holds a {name}; prefdiff loads {', '.join(LAYOUTS)} folders")
    for part in LAYOUTS[name]:
        if index.get(part) in (None, [None, None]) or not (path / part).is_dir():
            raise UserError(f"pipeline folder {path} has no {part}/ ({name} needs "
                            f"{', '.join(LAYOUTS[name])}); copy the whole pipeline, not only some of its parts")
    for part in OPTIONAL.get(name, ()):
        if index.get(part) not in (None, [None, None]) and not (path / part).is_dir():
            raise UserError(f"pipeline folder {path} has no {part}/ but its {INDEX} lists one; copy the whole "
                            f"pipeline, or set \"{part}\": [null, null] in {INDEX} to load it without")
    optional = OPTIONAL.get(name, ())
    present = [part for part in optional if index.get(part) not in (None, [None, None])]
    if present and len(present) < len(optional):  # an encoder without its tokenizer, or the reverse
        absent = [part for part in optional if part not in present]
        raise UserError(f"pipeline folder {path}: its {INDEX} lists {', '.join(present)} but not "
                        f"{', '.join(absent)}; they go together: list both (copy the whole pipeline), or set "
                        f"both to [null, null] to load it without them")
    for part in (*LAYOUTS[name], *OPTIONAL.get(name, ())):
        if part.startswith("tokenizer") and has_part(path, part) and not has_tokenizer_files(path / part):
            raise UserError(f"pipeline folder {path}: its {part}/ holds no tokenizer files ({TOKENIZER_FILES}); "
                            f"copy them too (hf download ... --include \"*/*.json\" \"*/*.txt\" \"*/*.model\")")
    _check_family(path, name)
    check_part_widths(path, name)
    return name


#: what a saved tokenizer folder holds: a fast tokenizer's file, CLIP's BPE files or T5's SentencePiece model.
TOKENIZER_FILES = "tokenizer.json, vocab.json with merges.txt, or spiece.model"


def has_tokenizer_files(folder: Path) -> bool:
    """Whether ``folder`` holds a tokenizer (:data:`TOKENIZER_FILES`): transformers 5 makes an empty one of a
    folder without, and a BPE vocabulary without its merges fails with a message that names neither."""
    return ((folder / "tokenizer.json").is_file() or (folder / "spiece.model").is_file()
            or ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()))


def _unet_layout(path: str | Path) -> str:
    """:func:`pipeline_layout` for this module's UNet loaders; an SD3 or FLUX folder is pointed elsewhere."""
    layout = pipeline_layout(path)
    if layout in FLOW_LAYOUTS:
        raise UserError(f"{path} holds a {layout} (a flow-matching transformer); open it with "
                        f"prefdiff.models.load_model and prefdiff.schedulers.load_scheduler")
    return layout


def has_part(path: str | Path, part: str) -> bool:
    """Whether the pipeline folder at ``path`` holds the (optional) component ``part``."""
    index = json.loads((Path(path) / INDEX).read_text())
    return index.get(part) not in (None, [None, None]) and (Path(path) / part).is_dir()


def network_part(layout: str) -> str:
    """The folder (and LoRA key prefix) of a layout's denoising network: ``unet`` or ``transformer``."""
    return "unet" if "unet" in LAYOUTS[layout] else "transformer"


def _check_family(path: Path, layout: str) -> None:
    """The network must be the layout's and the scheduler of its family (flow matching or DDIM)."""
    part = network_part(layout)
    network = _class_name(path / part / "config.json")
    scheduler = _class_name(path / "scheduler" / "scheduler_config.json")
    if network is not None and network != NETWORKS[layout]:
        raise UserError(f"pipeline folder {path} is a {layout} but its {part}/ holds a {network} (a {layout} has a "
                        f"{NETWORKS[layout]}); re-save the pipeline from the class its {part} belongs to")
    if scheduler is None:
        return
    if scheduler.startswith("FlowMatch") != (layout in FLOW_LAYOUTS):
        needs = ("a flow-matching scheduler (FlowMatchEulerDiscreteScheduler)" if layout in FLOW_LAYOUTS
                 else "a noise-prediction scheduler (DDIM, PNDM, Euler, ...)")
        raise UserError(f"pipeline folder {path} pairs a {network or NETWORKS[layout]} ({part}/) with a {scheduler} "
                        f"(scheduler/); a {layout} samples with {needs}; restore the scheduler/ the pipeline "
                        f"was released with")


def _class_name(config: Path) -> str | None:
    """The ``_class_name`` of a component's config file, None when the file is absent."""
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text())["_class_name"]
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{config} is malformed ({type(exc).__name__}: {exc}); re-save the pipeline") from None


@contextlib.contextmanager
def loading(path: Path) -> Iterator[None]:
    """Read a pipeline's components quietly; an unreadable one is one clear error naming the folder."""
    try:
        with quiet_hub():
            yield
    except (OSError, ValueError) as exc:
        first = " ".join(str(exc).split())[:300]
        raise UserError(f"cannot load the pipeline in {path}: {first}; the folder must hold safetensors "
                        f"weights and configs as `save_pretrained` writes them") from None


def read_options(path: Path, layout: str, dtype: torch.dtype | None, variant: str | None):
    """``part -> from_pretrained`` keyword arguments: local safetensors only, in ``dtype`` (default float32:
    transformers 5 would otherwise keep each text encoder in the dtype it was saved in), and the weight
    variant :func:`~prefdiff.models.weights.weights_variant` picks for that component. Every component's
    files are checked before any is read, and a variant read for want of plain weights is logged once."""
    parts = [part for part in (*LAYOUTS[layout], *OPTIONAL.get(layout, ()))
             if not part.startswith(("tokenizer", "scheduler")) and has_part(path, part)]
    variants = {part: weights_variant(path / part, variant) for part in parts}
    chosen = sorted({v for v in variants.values() if v is not None})
    if chosen and variant is None:
        log.info("%s: reading the %s weights of %s (no plain weights there)", path, " and ".join(chosen),
                 ", ".join(part for part, v in variants.items() if v is not None))

    def options(part: str) -> dict:
        return {"subfolder": part, "use_safetensors": True, "local_files_only": True,
                "torch_dtype": dtype or torch.float32, "variant": variants[part]}
    return options


def load_pipeline(path: str | Path, *, negative_prompt: str = "", dtype: torch.dtype | None = None,
                  variant: str | None = None) -> Denoiser:
    """The pipeline at ``path`` as a :class:`Denoiser` (its UNet trains; VAE and text encoders are frozen).

    :param negative_prompt: the unconditional prompt of classifier-free guidance.
    :param dtype: load the weights in this dtype (default float32).
    :param variant: read this weight variant (``fp16``, ``non_ema``, ...) where a component has it; None: the
        plain weights, or a component's only variant.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from prefdiff.models.text import PromptEncoder

    path = Path(path)
    layout = _unet_layout(path)
    sdxl = layout == "StableDiffusionXLPipeline"
    options = read_options(path, layout, dtype, variant)
    with loading(path):
        unet = UNet2DConditionModel.from_pretrained(path, **options("unet"))
        vae = AutoencoderKL.from_pretrained(path, **options("vae"))
        tokenizers = [CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True)]
        encoders = [CLIPTextModel.from_pretrained(path, **options("text_encoder"))]
        if sdxl:
            tokenizers.append(CLIPTokenizer.from_pretrained(path, subfolder="tokenizer_2", local_files_only=True))
            encoders.append(CLIPTextModelWithProjection.from_pretrained(path, **options("text_encoder_2")))
    vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
    image_size = unet.config.sample_size * vae_scale
    # SDXL folders say whether the empty negative prompt is zeros (true but in the refiner's and some fine-tunes')
    zeros = json.loads((path / INDEX).read_text()).get("force_zeros_for_empty_prompt", True)
    conditioner = PromptEncoder(tokenizers, encoders, image_size=image_size, negative_prompt=negative_prompt,
                                zeros_for_empty_prompt=zeros)
    cfg = unet.config
    preset = ModelPreset(kind="unet2d_condition", sample_size=cfg.sample_size, channels=cfg.in_channels,
                         conditioning="text", cross_attention_dim=cfg.cross_attention_dim,
                         block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
                         norm_num_groups=cfg.norm_num_groups)
    scheduler = load_pipeline_scheduler(path)
    denoiser = Denoiser(unet, preset, conditioner, codec=VaeCodec(vae),
                        prediction_type=scheduler.config.prediction_type)
    denoiser.pipeline_class = layout
    return denoiser


def load_pipeline_scheduler(path: str | Path):
    """The pipeline's noise schedule as a ``DDIMScheduler`` (whatever noise-prediction scheduler class it was
    saved with)."""
    from diffusers import DDIMScheduler

    _unet_layout(path)
    config = DDIMScheduler.load_config(Path(path), subfolder="scheduler", local_files_only=True)
    scheduler = DDIMScheduler.from_config(config)
    if scheduler.config.prediction_type not in ("epsilon", "v_prediction"):
        raise UserError(f"the scheduler of {path} predicts '{scheduler.config.prediction_type}'; "
                        f"Stable Diffusion pipelines predict epsilon or v_prediction")
    if scheduler.config.rescale_betas_zero_snr and scheduler.config.prediction_type == "epsilon":
        # Lin et al. 2024, sec. 3.2: at zero terminal SNR x_T is pure noise, so predicting the noise
        # there says nothing of x_0; such models are trained with v-prediction.
        raise UserError(f"the scheduler of {path} has rescale_betas_zero_snr but predicts epsilon, which cannot "
                        f"recover x_0 where the SNR is zero; set prediction_type to v_prediction (as zero-SNR "
                        f"models are trained) or rescale_betas_zero_snr to false in {path}/scheduler/scheduler_config.json")
    return scheduler


def save_pipeline(denoiser: Denoiser, scheduler, directory: str | Path) -> Path:
    """Write a text-to-image :class:`Denoiser` as a diffusers pipeline folder (its base, without LoRA)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from prefdiff.models.lora import has_lora

    if has_lora(denoiser):
        raise ValueError("save the base pipeline before adding LoRA; write the adapter with save_lora_for_pipeline")
    if getattr(denoiser, "pipeline_class", None) in FLOW_LAYOUTS:
        raise ValueError(f"a {denoiser.pipeline_class} is written by flow_pipelines.save_flow_pipeline (or save_model)")
    encoder = denoiser.conditioner
    parts = {"unet": denoiser.net, "vae": denoiser.codec.vae, "scheduler": scheduler,
             "text_encoder": encoder.text_encoders[0], "tokenizer": encoder.tokenizers[0]}
    if getattr(denoiser, "pipeline_class", "StableDiffusionPipeline") == "StableDiffusionXLPipeline":
        pipe = StableDiffusionXLPipeline(**parts, text_encoder_2=encoder.text_encoders[1],
                                         tokenizer_2=encoder.tokenizers[1],
                                         force_zeros_for_empty_prompt=encoder.zeros_for_empty_prompt)
    else:
        pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    with quiet_hub():
        pipe.save_pretrained(directory, safe_serialization=True)
    return Path(directory)


def load_pipeline_unet(pipeline_dir: str | Path, conditioning: str = "cross_attention") -> Denoiser:
    """Only the UNet of a local Stable Diffusion pipeline folder, conditioned on ready embeddings."""
    from diffusers import UNet2DConditionModel

    path = Path(pipeline_dir)
    if not (path / "unet").is_dir():
        raise UserError(f"{path} is not a Stable Diffusion pipeline folder (no unet/); "
                        f"pass the folder that holds model_index.json")
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", use_safetensors=True)
    cfg = unet.config
    preset = ModelPreset(kind="unet2d_condition", sample_size=cfg.sample_size,
                         channels=cfg.in_channels, conditioning=conditioning,
                         cross_attention_dim=cfg.cross_attention_dim,
                         block_out_channels=tuple(cfg.block_out_channels),
                         layers_per_block=cfg.layers_per_block, norm_num_groups=cfg.norm_num_groups)
    return Denoiser(unet, preset)
