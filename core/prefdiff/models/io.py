"""prefdiff model folders: ``prefdiff_model.json``, the network via save_pretrained, extras as safetensors."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from prefdiff.errors import UserError
from prefdiff.models.denoiser import Denoiser
from prefdiff.models.lora import LORA_WEIGHTS, has_lora, load_lora
from prefdiff.models.presets import ModelPreset, build_denoiser

MODEL_FILE = "prefdiff_model.json"



def is_model_folder(directory: str | Path) -> bool:
    """Whether ``directory`` holds a model :func:`load_model` opens (prefdiff's or a diffusers pipeline)."""
    from prefdiff.models.pipelines import is_pipeline_folder

    return (Path(directory) / MODEL_FILE).is_file() or is_pipeline_folder(directory)


def save_model(denoiser: Denoiser, directory: str | Path, scheduler=None) -> Path:
    """Write a full model: ``prefdiff_model.json``, ``net/`` as save_pretrained lays it out, extras as
    safetensors, and ``scheduler/`` when ``scheduler`` is given.

    A LoRA adapter, when present, is written beside it in peft's layout. A text-to-image
    model is written as a diffusers pipeline folder instead, with ``scheduler``.

    The folder is written whole into a temporary folder beside ``directory`` and swapped into
    place (:func:`prefdiff.durable.replacing_folder`): a crash or a full disk leaves the old model
    or the new one, never a mix; a folder holding other files is refused, not replaced.
    """
    from prefdiff.durable import replacing_folder

    if denoiser.preset.conditioning == "text" and scheduler is None:
        raise ValueError("saving a pipeline needs its scheduler")
    directory = Path(directory)
    with replacing_folder(directory, markers=(MODEL_FILE, "model_index.json")) as tmp:
        _write_model(denoiser, tmp, scheduler)
    return directory


def _write_model(denoiser: Denoiser, directory: Path, scheduler) -> None:
    """The files of :func:`save_model`, into the (temporary) folder ``directory``."""
    from safetensors.torch import save

    from prefdiff.durable import write_new_file
    from prefdiff.models.lora import write_lora_files

    if denoiser.preset.conditioning == "text":
        from prefdiff.models.flow_pipelines import save_flow_pipeline
        from prefdiff.models.pipelines import FLOW_LAYOUTS, save_pipeline

        if getattr(denoiser, "pipeline_class", None) in FLOW_LAYOUTS:
            save_flow_pipeline(denoiser, scheduler, directory)
        else:
            save_pipeline(denoiser, scheduler, directory)
        return
    meta = {"preset": asdict(denoiser.preset), "format": 1}
    spec = getattr(denoiser.conditioner, "prefdiff_spec", None)
    if spec is not None:  # what `prefdiff sample` rebuilds when no --conditioner is given
        meta["conditioner"] = spec
    write_new_file(directory / MODEL_FILE, json.dumps(meta, indent=2).encode())
    if has_lora(denoiser):
        write_lora_files(denoiser, directory / "lora")
    # With any adapter stripped, for a clean base.
    net_state = {k: v for k, v in denoiser.net.state_dict().items() if "lora_" not in k}
    net_state = {k.replace(".base_layer.", "."): v.contiguous() for k, v in net_state.items()}
    if denoiser.preset.kind == "monai":
        write_new_file(directory / "net.safetensors", save(net_state))
    else:  # the layout save_pretrained writes
        denoiser.net.save_config(directory / "net")
        write_new_file(directory / "net" / "diffusion_pytorch_model.safetensors",
                       save(net_state, metadata={"format": "pt"}))
    for part in ("conditioner", "controlnet"):
        module = getattr(denoiser, part)
        if module is not None:
            write_new_file(directory / f"{part}.safetensors",
                           save({k: v.contiguous() for k, v in module.state_dict().items()}))
    if scheduler is not None:
        scheduler.save_pretrained(directory / "scheduler")


def saved_conditioner(directory: str | Path) -> tuple[str, dict] | None:
    """The registered conditioner (name, options) a prefdiff model folder was saved with; None where it
    records none (a pipeline folder, an unconditional model, a folder saved before it was recorded)."""
    try:
        spec = json.loads((Path(directory) / MODEL_FILE).read_text()).get("conditioner")
    except (OSError, ValueError, AttributeError):  # no such folder or file, or malformed: load_model says so
        return None
    if (not isinstance(spec, dict) or not isinstance(spec.get("name"), str)
            or not isinstance(spec.get("options") or {}, dict)):
        return None
    return spec["name"], dict(spec.get("options") or {})


def load_model(directory: str | Path, conditioner: nn.Module | None = None,
               dtype: torch.dtype | None = None, variant: str | None = None) -> Denoiser:
    """Load what :func:`save_model` wrote, or a local diffusers pipeline folder; a clear error for a
    missing or foreign folder. ``dtype``: a pipeline's weights are read in it (``torch_dtype``: a large
    transformer never sits in memory in float32); a prefdiff model folder loads in float32. ``variant``:
    a pipeline's weight variant (``fp16``, ``non_ema``, ...; see :mod:`prefdiff.models.weights`)."""
    from safetensors.torch import load_file

    from prefdiff.models.flow_pipelines import load_flow_pipeline
    from prefdiff.models.pipelines import FLOW_LAYOUTS, is_pipeline_folder, load_pipeline, pipeline_layout

    directory = Path(directory)
    if not directory.is_dir():
        what = "is a file, not a folder" if directory.exists() else "does not exist"
        raise UserError(f"model folder {directory} {what}; pass a folder written by `prefdiff fit` or "
                        f"`prefdiff bench`, or a local diffusers pipeline folder (single-file checkpoints are "
                        f"not read: save the pipeline with `save_pretrained` first)")
    if is_pipeline_folder(directory):
        if conditioner is not None:
            raise UserError(f"{directory} is a text-to-image pipeline with its own text encoder; drop the "
                            f"conditioner (--conditioner / --model.conditioner)")
        load = load_flow_pipeline if pipeline_layout(directory) in FLOW_LAYOUTS else load_pipeline
        return load(directory, dtype=dtype, variant=variant)
    if variant is not None:
        raise UserError(f"a weight variant ('{variant}') is read from a diffusers pipeline folder; {directory} "
                        f"is not one: drop the variant")
    meta_path = directory / MODEL_FILE
    if not meta_path.is_file():
        raise UserError(f"{directory} is not a prefdiff model folder (no {MODEL_FILE}) nor a diffusers "
                        f"pipeline folder; pass a folder written by `prefdiff fit` or `prefdiff bench`, or a "
                        f"local Stable Diffusion pipeline")
    try:
        preset = ModelPreset(**json.loads(meta_path.read_text())["preset"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{meta_path} is malformed ({exc}); re-save the model") from exc
    denoiser = build_denoiser(preset, conditioner)
    try:
        if preset.kind == "monai":
            _load_strict(denoiser.net, load_file(str(directory / "net.safetensors")), directory)
        else:
            _load_strict(denoiser.net, _read_pretrained_state(directory / "net"), directory)
        for part in ("conditioner", "controlnet"):
            module = getattr(denoiser, part)
            path = directory / f"{part}.safetensors"
            if module is not None and path.is_file():
                _load_strict(module, load_file(str(path)), directory)
    except UserError:
        raise
    except Exception as exc:  # safetensors raises its own SafetensorError for a bad header
        raise UserError(f"cannot read the weights in {directory}: {exc}; the files are truncated "
                        f"or corrupt, re-create them") from exc
    if (directory / "lora" / LORA_WEIGHTS).is_file():
        load_lora(denoiser, directory / "lora")
    return denoiser


def _read_pretrained_state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserError(f"{folder} holds no .safetensors weights; re-save the model")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    own = module.state_dict()
    own = {k.replace(".base_layer.", "."): v for k, v in own.items() if "lora_" not in k}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        first = (missing or unexpected or wrong)[0]
        raise UserError(f"the weights in {where} are from another model ({len(missing)} missing, "
                        f"{len(unexpected)} unexpected, {len(wrong)} mis-shaped tensors, e.g. "
                        f"'{first}'); pass the checkpoint made for this model preset")
    module.load_state_dict(state, strict=True)


def count_parameters(module: nn.Module, trainable: bool = False) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)

