"""LoRA adapters through peft: inject, disable for the reference, save and load (peft and diffusers layouts)."""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from prefdiff.errors import UserError
from prefdiff.models.denoiser import Denoiser

log = logging.getLogger("prefdiff.models")

LORA_WEIGHTS = "adapter_model.safetensors"
LORA_CONFIG = "adapter_config.json"
DIFFUSERS_LORA = "pytorch_lora_weights.safetensors"
"""The file ``pipeline.save_lora_weights`` writes: diffusers' training scripts' adapters, and prefdiff's export."""



@dataclass
class LoraOptions:
    """A LoRA adapter (Hu et al. 2021) over the denoiser's blocks."""

    r: int = 8
    """Rank of the update."""
    alpha: float = 8.0
    """Scale numerator; the update is scaled by alpha / r."""
    dropout: float = 0.0
    """Dropout on the adapter input."""
    target_modules: list[str] = field(default_factory=list)
    """Module names to adapt; empty means every Linear/Conv inside the blocks."""
    init: str | None = None
    """How A starts (B always starts at zero, so a fresh adapter changes nothing): ``gaussian``, normal
    with std 1/r; ``kaiming``, peft's default Kaiming-uniform; None, the model's default
    (:func:`default_lora_init`)."""

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise UserError(f"--lora.r must be > 0, got {self.r}")
        self.init = check_lora_init(self.init)


LORA_INITS = ("gaussian", "kaiming")
"""The LoRA initialisations :class:`LoraOptions` takes (peft's ``init_lora_weights`` "gaussian" and True)."""


def check_lora_init(init: str | None) -> str | None:
    """``--model.lora_init`` checked: one of :data:`LORA_INITS` or None. ``default``, its name for
    peft's Kaiming start until the text-to-image default became gaussian, reads as ``kaiming``
    with a warning (it no longer names the default)."""
    if init == "default":
        log.warning("--model.lora_init default is now called kaiming (peft's Kaiming-uniform start); "
                    "leave the option out for the model's default (gaussian on text-to-image pipelines)")
        return "kaiming"
    if init is not None and init not in LORA_INITS:
        raise UserError(f"--model.lora_init must be one of {', '.join(LORA_INITS)}, got '{init}'")
    return init


def default_lora_init(denoiser: Denoiser) -> str:
    """The LoRA start a model gets unless ``--model.lora_init`` says otherwise.

    Text-to-image pipelines (SD, SDXL, SD3, FLUX) start A gaussian with std 1/r, as the community's
    trainers of these models do: diffusers' LoRA training scripts and its Diffusion-DPO example, TRL's
    ``DDPOTrainer`` and ``AlignPropTrainer``, and Flow-GRPO (``scripts/train_sd3.py``). Their learning
    rates assume that start. With Adam, B moves about lr a step whatever the start, so the weights move
    about ``|A|`` times that: peft's Kaiming-uniform A has std ``1/sqrt(3 fan_in)``, 0.016-0.032 on
    SD-1.5's attention layers (fan-in 320-1280) against the gaussian 1/r = 0.125 at rank 8, so a recipe
    taken from those scripts would train 4-8 times slower on the Kaiming start. The fields' small
    UNets keep peft's start, on which their recipes were tuned.
    """
    return "gaussian" if denoiser.preset.conditioning == "text" else "kaiming"


ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
"""The attention layers the diffusers Diffusion-DPO example adapts; measured 25% faster per step
than adapters on every layer of an SD-1.5-shaped UNet on an H100 (benchmarks/results/gpu). The
``add_*`` / ``to_add_out`` projections are the text stream's in the joint attention of the SD3 and
FLUX transformers (all eight are the targets of Flow-GRPO's SD3 LoRA and of diffusers' SD3 DreamBooth
LoRA script)."""


def default_lora_targets(module: nn.Module, attention_only: bool = False) -> list[str]:
    """Every Linear/Conv layer inside the UNet blocks (not the stem, head or time MLP), or with
    ``attention_only`` the attention projections (the default for text-to-image UNets)."""
    if attention_only:
        return [name for name, m in module.named_modules()
                if isinstance(m, nn.Linear) and name.endswith(ATTENTION_PROJECTIONS)]
    layers = (nn.Linear, nn.Conv1d, nn.Conv2d)
    blocks = ("down_blocks", "mid_block", "up_blocks", "controlnet_")
    return [name for name, m in module.named_modules()
            if isinstance(m, layers) and any(b in name for b in blocks)]


def add_lora(denoiser: Denoiser, options: LoraOptions | None = None) -> Denoiser:
    """Freeze the denoiser and inject a fresh LoRA adapter; returns it for chaining.

    peft initialises B to zero, so a fresh adapter leaves the output unchanged
    and the policy starts exactly at the reference.
    """
    from peft import LoraConfig, inject_adapter_in_model

    options = options or LoraOptions()
    denoiser.requires_grad_(False)
    targets = options.target_modules or default_lora_targets(
        denoiser.net, attention_only=denoiser.preset.conditioning == "text")
    init = options.init or default_lora_init(denoiser)
    config = LoraConfig(r=options.r, lora_alpha=options.alpha, lora_dropout=options.dropout,
                        target_modules=targets, init_lora_weights=True if init == "kaiming" else init)
    inject_adapter_in_model(config, denoiser.net)
    denoiser.lora_config = config
    return denoiser


FROZEN_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
"""The dtypes the weights that do not train may be held in (``--model.init_args.frozen_dtype``)."""


def hold_frozen_in(denoiser: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Hold the weights that do not train in ``dtype`` and the ones that do in float32.

    What diffusers' LoRA training scripts do with ``--mixed_precision bf16`` (their ``weight_dtype``, then
    ``cast_training_params``): the frozen base network, VAE and text encoders take half the memory, the
    adapter's weights and its optimizer state keep float32 updates, and autocast
    (``--trainer.precision bf16-mixed``) runs each layer in half precision.
    """
    for parameter in denoiser.parameters():
        parameter.data = parameter.data.to(torch.float32 if parameter.requires_grad else dtype)
    return denoiser


def has_lora(denoiser: nn.Module) -> bool:
    """Whether a LoRA adapter is injected."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in denoiser.modules())


@contextlib.contextmanager
def reference_mode(denoiser: nn.Module) -> Iterator[None]:
    """Run the frozen reference: the same network with its LoRA adapter disabled."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in denoiser.modules() if isinstance(m, BaseTunerLayer)]
    if not layers:
        raise RuntimeError("reference_mode needs a LoRA adapter; call add_lora first")
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def lora_state_dict(denoiser: Denoiser) -> dict[str, torch.Tensor]:
    """The adapter weights with peft's key layout (``base_model.model.<module>.lora_A.weight``)."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(denoiser.net)
    return {f"base_model.model.{k}": v.detach().contiguous() for k, v in state.items()}


def save_lora(denoiser: Denoiser, directory: str | Path) -> Path:
    """Write the adapter as peft does: adapter_model.safetensors + adapter_config.json.

    The folder is replaced whole (:func:`prefdiff.durable.replacing_folder`): a crash or a full
    disk leaves the old adapter or the new one, never weights of one with the config of another.
    """
    from prefdiff.durable import replacing_folder

    directory = Path(directory)
    with replacing_folder(directory, markers=LORA_FILES) as tmp:
        write_lora_files(denoiser, tmp)
    return directory


LORA_FILES = (LORA_WEIGHTS, LORA_CONFIG, "pytorch_lora_weights.safetensors")
"""Files that mark a folder as an adapter's (peft's layout, or diffusers' beside it)."""


def write_lora_files(denoiser: Denoiser, folder: Path) -> None:
    """The adapter's two files in ``folder`` (inside a :func:`~prefdiff.durable.replacing_folder` block)."""
    from safetensors.torch import save

    from prefdiff.durable import write_new_file

    write_new_file(folder / LORA_WEIGHTS, save(lora_state_dict(denoiser)))
    config = denoiser.lora_config.to_dict()
    config["target_modules"] = sorted(config["target_modules"])
    write_new_file(folder / LORA_CONFIG, json.dumps(config, indent=2, default=str).encode())


def load_lora(denoiser: Denoiser, directory: str | Path) -> Denoiser:
    """Inject and load an adapter written by :func:`save_lora` (or by peft itself), or, for a pipeline, one
    in diffusers' layout alone (:func:`load_diffusers_lora`)."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    if not directory.is_dir():
        what = "is a file, not a folder" if directory.exists() else "does not exist"
        raise UserError(f"the LoRA adapter folder {directory} {what}; pass the `lora/` folder `prefdiff fit` "
                        f"printed at the end of its run (LoRA adapter: ...)")
    if not (directory / LORA_CONFIG).is_file() and (directory / DIFFUSERS_LORA).is_file():
        return load_diffusers_lora(denoiser, directory)
    if not (directory / LORA_CONFIG).is_file() and not (directory / LORA_WEIGHTS).is_file():
        # The usual slip: the run's folder, or its version_N, one or more levels above lora/.
        # a run's lora/ is at most three levels down (lightning_logs/version_N/lora): no walk of a whole tree
        found = sorted(str(p.parent) for depth in (1, 2, 3) for p in directory.glob("*/" * depth + LORA_CONFIG))[:3]
        where = f"; adapters below it: {', '.join(found)}" if found else ""
        raise UserError(f"{directory} holds no LoRA adapter ({LORA_CONFIG} and {LORA_WEIGHTS}, or diffusers' "
                        f"{DIFFUSERS_LORA}){where}; pass the `lora/` folder `prefdiff fit` printed at the end of "
                        f"its run (LoRA adapter: ...)")
    try:
        config = LoraConfig(**{k: v for k, v in json.loads((directory / LORA_CONFIG).read_text()).items()
                               if k in LoraConfig.__dataclass_fields__})
        state = load_file(str(directory / LORA_WEIGHTS))
    except (OSError, ValueError, TypeError, SafetensorError) as exc:
        raise UserError(f"cannot read the LoRA adapter in {directory}: {exc}; re-save it") from exc
    if not has_lora(denoiser):
        denoiser.requires_grad_(False)
        inject_adapter_in_model(config, denoiser.net)
        denoiser.lora_config = config
    state = {k.removeprefix("base_model.model."): v for k, v in state.items()}
    try:
        result = set_peft_model_state_dict(denoiser.net, state)
    except RuntimeError as exc:  # torch's load_state_dict: the adapter's tensors have other shapes
        if "size mismatch" not in str(exc):
            raise
        first = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), str(exc))
        raise UserError(f"the LoRA adapter in {directory} is for another model ({first[:200]}); pass the "
                        f"adapter trained on this model") from None
    if getattr(result, "unexpected_keys", None):
        raise UserError(f"the LoRA adapter in {directory} is for another model "
                        f"(unexpected '{result.unexpected_keys[0]}')")
    return denoiser


def load_diffusers_lora(denoiser: Denoiser, directory: Path) -> Denoiser:
    """Load the adapter in ``directory/pytorch_lora_weights.safetensors`` into a pipeline's network as
    ``pipeline.load_lora_weights`` does (one written by diffusers' LoRA training scripts, among them the
    Diffusion-DPO example, or by any tool in that layout; older layouts are converted by the pipeline class's
    ``lora_state_dict``). The adapter becomes prefdiff's own, as one made by :func:`add_lora`: only its weights
    train, and the reference is the network with it disabled."""
    import diffusers

    name = getattr(denoiser, "pipeline_class", None)
    if name is None:
        raise UserError(f"{directory} holds a LoRA in diffusers' layout ({DIFFUSERS_LORA}), which is for a "
                        f"diffusers pipeline; this model is a prefdiff model: pass the lora/ folder `prefdiff fit` "
                        f"wrote for it")
    if has_lora(denoiser):
        raise UserError(f"this model already carries a LoRA adapter; load {directory} into the model without one")
    pipeline = getattr(diffusers, name)
    prefix = "transformer" if denoiser.preset.kind == "transformer" else "unet"  # the pipeline's network part
    options = {"return_lora_metadata": True, **({"return_alphas": True} if name == "FluxPipeline" else {})}
    try:
        read = pipeline.lora_state_dict(str(directory), **options)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"cannot read the LoRA in {directory / DIFFUSERS_LORA}: {' '.join(str(exc).split())[:200]}"
                        ) from None
    state, metadata = read[0], read[-1]
    alphas = read[1] if len(read) == 3 else None
    others = sorted({key.split(".")[0] for key in state if not key.startswith(f"{prefix}.")})
    if others:
        raise UserError(f"the LoRA in {directory} adapts {', '.join(others)} too; prefdiff trains and loads "
                        f"adapters of the {prefix} only (its text encoders stay frozen)")
    denoiser.requires_grad_(False)
    try:
        denoiser.net.load_lora_adapter(state, prefix=prefix, network_alphas=alphas, metadata=metadata,
                                       adapter_name="default")
    except (ValueError, RuntimeError) as exc:  # peft: no such module; torch: a tensor of another shape
        first = " ".join(str(exc).split())[:200]
        raise UserError(f"the LoRA in {directory} does not fit this {name}'s {prefix} ({first}); pass the "
                        f"adapter trained on this model") from None
    config = denoiser.lora_config = denoiser.net.peft_config["default"]
    # Alphas read from a file (FLUX's ``.alpha`` keys) arrive as tensors; the config is saved as JSON.
    config.lora_alpha = float(config.lora_alpha)
    config.alpha_pattern = {k: float(v) for k, v in (config.alpha_pattern or {}).items()}
    for module_name, parameter in denoiser.net.named_parameters():
        parameter.requires_grad_(".lora_" in module_name)
    return denoiser


def save_lora_for_pipeline(denoiser: Denoiser, directory: str | Path) -> Path:
    """Write the UNet's (SD, SDXL) or transformer's (SD3, FLUX) adapter the way diffusers'
    ``pipeline.load_lora_weights`` reads it, with the saving method of the denoiser's pipeline class."""
    import tempfile

    import diffusers
    from peft import get_peft_model_state_dict

    from prefdiff.durable import atomic_write_bytes, write_error

    state = get_peft_model_state_dict(denoiser.net)
    # The adapter's config travels as metadata so the loader uses the same alpha / r scale.
    metadata = denoiser.lora_config.to_dict()
    metadata["target_modules"] = sorted(metadata["target_modules"])
    name = getattr(denoiser, "pipeline_class", "StableDiffusionPipeline")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # diffusers writes in place; it writes into a scratch folder, and the file moves over whole.
    with tempfile.TemporaryDirectory(dir=directory.parent, prefix=f".{directory.name}.") as scratch:
        try:
            if name in ("StableDiffusion3Pipeline", "FluxPipeline"):
                getattr(diffusers, name).save_lora_weights(save_directory=scratch, transformer_lora_layers=state,
                                                           safe_serialization=True,
                                                           transformer_lora_adapter_metadata=metadata)
            else:  # SDXL's loader reads the same unet layout
                diffusers.StableDiffusionPipeline.save_lora_weights(save_directory=scratch, unet_lora_layers=state,
                                                                    safe_serialization=True,
                                                                    unet_lora_adapter_metadata=metadata)
        except Exception as exc:
            error = write_error(directory, exc, "folder")
            if error is None:
                raise
            raise error from None
        for written in sorted(Path(scratch).iterdir()):
            atomic_write_bytes(directory / written.name, written.read_bytes())
    return directory


def export_lora(denoiser: Denoiser, directory: str | Path) -> Path:
    """The adapter as `prefdiff fit` and `prefdiff bench` leave it: prefdiff's files (:func:`save_lora`,
    which `prefdiff sample --lora` reads) and, for a text-conditioned pipeline, diffusers' beside them
    (:func:`save_lora_for_pipeline`, which ``pipeline.load_lora_weights`` reads)."""
    save_lora(denoiser, directory)
    if denoiser.preset.conditioning == "text":
        save_lora_for_pipeline(denoiser, directory)
    return Path(directory)
