"""Model builders, the denoiser wrapper, LoRA through peft, save and load.

Every network prefdiff trains is wrapped in a :class:`Denoiser` with one call
shape, ``denoiser(x_t, t, cond) -> eps``, so samplers and objectives never ask
which library built it. The reference model of the KL and DPO objectives is
the same network with its LoRA adapter disabled (:func:`reference_mode`), never
a second copy. Everything is written as safetensors and JSON; nothing is
loaded with pickle.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from prefdiff.errors import UserError

MODEL_FILE = "prefdiff_model.json"
LORA_WEIGHTS = "adapter_model.safetensors"
LORA_CONFIG = "adapter_config.json"
CONDITIONINGS = ("none", "concat", "class", "cross_attention", "controlnet")
KINDS = ("unet2d", "unet2d_condition", "unet1d", "monai")


@dataclass
class ModelPreset:
    """What network to build; every benchmark recipe and `fit` config names one."""

    kind: str = "unet2d"
    """One of unet2d, unet2d_condition, unet1d, monai."""
    sample_size: int = 32
    """Image side (2-D) or horizon (1-D)."""
    channels: int = 3
    """Channels of the generated sample."""
    conditioning: str = "none"
    """How the condition enters: none, concat, class, cross_attention, controlnet."""
    cond_channels: int = 0
    """Channels concatenated to the input (concat) or of the ControlNet image."""
    num_classes: int = 0
    """Number of classes for class conditioning; one more index is the null class."""
    cross_attention_dim: int = 32
    """Width of the context tokens for cross_attention and controlnet."""
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    """Channels per resolution level."""
    layers_per_block: int = 1
    """Residual blocks per level."""
    attention: bool = False
    """Add self-attention at the lowest resolution (unet2d)."""
    norm_num_groups: int = 8
    """Group-norm groups; must divide every entry of block_out_channels."""

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(self.block_out_channels)
        if self.kind not in KINDS:
            raise UserError(f"--model.kind must be one of {', '.join(KINDS)}, got '{self.kind}'")
        if self.conditioning not in CONDITIONINGS:
            raise UserError(f"--model.conditioning must be one of {', '.join(CONDITIONINGS)}, "
                            f"got '{self.conditioning}'")
        if self.conditioning == "concat" and self.cond_channels <= 0:
            raise UserError("--model.cond_channels must be > 0 with conditioning 'concat'")
        if self.conditioning == "class" and self.num_classes <= 0:
            raise UserError("--model.num_classes must be > 0 with conditioning 'class'")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise UserError(f"--model.norm_num_groups={self.norm_num_groups} must divide every "
                            f"--model.block_out_channels entry {list(self.block_out_channels)}")


class Denoiser(nn.Module):
    """``denoiser(x_t, t, cond) -> eps`` over any supported network.

    :param net: the noise-prediction network (diffusers or MONAI).
    :param preset: what was built, saved beside the weights.
    :param conditioner: optional module mapping raw conditions to model input.
    :param controlnet: optional diffusers ControlNetModel (conditioning 'controlnet').
    """

    def __init__(self, net: nn.Module, preset: ModelPreset, conditioner: nn.Module | None = None,
                 controlnet: nn.Module | None = None) -> None:
        super().__init__()
        self.net = net
        self.preset = preset
        self.conditioner = conditioner
        self.controlnet = controlnet

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        mode = self.preset.conditioning
        if self.conditioner is not None and cond is not None:
            cond = self.conditioner(cond)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if self.preset.kind == "monai":
            kwargs = {"context": cond} if mode == "cross_attention" else (
                {"class_labels": cond} if mode == "class" else {})
            if mode == "concat":
                x = torch.cat([x, _broadcast_like(cond, x)], dim=1)
            return self.net(x, timesteps=t, **kwargs)
        if mode == "none":
            return self.net(x, t).sample
        if mode == "concat":
            return self.net(torch.cat([x, _broadcast_like(cond, x)], dim=1), t).sample
        if mode == "class":
            return self.net(x, t, class_labels=cond).sample
        if mode == "cross_attention":
            return self.net(x, t, encoder_hidden_states=cond).sample
        # ControlNet (Zhang et al. 2023): residuals from a trainable copy of the encoder.
        down, mid = self.controlnet(x, t, encoder_hidden_states=cond["context"],
                                    controlnet_cond=cond["image"], return_dict=False)
        return self.net(x, t, encoder_hidden_states=cond["context"],
                        down_block_additional_residuals=down, mid_block_additional_residual=mid).sample

    def null_condition(self, cond: Any) -> Any:
        """The unconditional input for classifier-free guidance (Ho & Salimans 2022)."""
        if cond is None:
            return None
        if isinstance(cond, dict):
            return {k: self.null_condition(v) for k, v in cond.items()}
        if self.preset.conditioning == "class":
            return torch.full_like(cond, self.preset.num_classes)
        return torch.zeros_like(cond)


def _broadcast_like(cond: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Expand a per-sample vector condition over the spatial or time axes of x."""
    while cond.ndim < x.ndim:
        cond = cond.unsqueeze(-1)
    return cond.expand(*cond.shape[:2], *x.shape[2:]).to(x.dtype)


# ------------------------------------------------------------ builders ----


def build_denoiser(preset: ModelPreset | dict, conditioner: nn.Module | None = None,
                   net: nn.Module | None = None) -> Denoiser:
    """Build a fresh denoiser for ``preset``; pass ``net`` to hand in a ready network (MONAI)."""
    preset = preset if isinstance(preset, ModelPreset) else ModelPreset(**preset)
    if net is not None:
        return Denoiser(net, preset, conditioner)
    builder = {"unet2d": _unet2d, "unet2d_condition": _unet2d_condition,
               "unet1d": _unet1d, "monai": _monai}[preset.kind]
    built = builder(preset)
    if isinstance(built, tuple):
        return Denoiser(built[0], preset, conditioner, controlnet=built[1])
    return Denoiser(built, preset, conditioner)


def _unet2d(p: ModelPreset) -> nn.Module:
    from diffusers import UNet2DModel

    levels = len(p.block_out_channels)
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if p.attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    extra = p.cond_channels if p.conditioning == "concat" else 0
    return UNet2DModel(
        sample_size=p.sample_size, in_channels=p.channels + extra, out_channels=p.channels,
        block_out_channels=p.block_out_channels, layers_per_block=p.layers_per_block,
        down_block_types=tuple(down), up_block_types=tuple(up), norm_num_groups=p.norm_num_groups,
        num_class_embeds=p.num_classes + 1 if p.conditioning == "class" else None)


def _unet2d_condition(p: ModelPreset):
    from diffusers import ControlNetModel, UNet2DConditionModel

    levels = len(p.block_out_channels)
    unet = UNet2DConditionModel(
        sample_size=p.sample_size, in_channels=p.channels, out_channels=p.channels,
        block_out_channels=p.block_out_channels, layers_per_block=p.layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        cross_attention_dim=p.cross_attention_dim, attention_head_dim=8,
        norm_num_groups=p.norm_num_groups)
    if p.conditioning != "controlnet":
        return unet
    controlnet = ControlNetModel.from_unet(unet, conditioning_channels=p.cond_channels,
                                           conditioning_embedding_out_channels=(16,))  # same resolution as x
    return unet, controlnet


def _unet1d(p: ModelPreset) -> nn.Module:
    # The temporal UNet of Diffuser (Janner et al. 2022), as diffusers ports it.
    from diffusers import UNet1DModel

    levels = len(p.block_out_channels)
    extra = p.cond_channels if p.conditioning == "concat" else 0
    return UNet1DModel(
        sample_size=p.sample_size, in_channels=p.channels + extra, out_channels=p.channels,
        extra_in_channels=0, block_out_channels=p.block_out_channels,
        down_block_types=("DownResnetBlock1D",) * levels,
        up_block_types=("UpResnetBlock1D",) * (levels - 1),
        mid_block_type="MidResTemporalBlock1D", out_block_type="OutConv1DBlock",
        time_embedding_type="positional", use_timestep_embedding=True, flip_sin_to_cos=False,
        freq_shift=1, act_fn="mish", norm_num_groups=p.norm_num_groups,
        layers_per_block=p.layers_per_block, downsample_each_block=False)


def _monai(p: ModelPreset) -> nn.Module:
    try:
        from monai.networks.nets import DiffusionModelUNet
    except ImportError as exc:
        raise UserError("model kind 'monai' needs MONAI: pip install monai einops") from exc
    extra = p.cond_channels if p.conditioning == "concat" else 0
    levels = len(p.block_out_channels)
    return DiffusionModelUNet(
        spatial_dims=2, in_channels=p.channels + extra, out_channels=p.channels,
        channels=p.block_out_channels, attention_levels=(False,) * (levels - 1) + (p.attention,),
        num_res_blocks=p.layers_per_block, norm_num_groups=p.norm_num_groups,
        num_head_channels=p.block_out_channels[-1],  # one head; unused without attention
        with_conditioning=p.conditioning == "cross_attention",
        cross_attention_dim=p.cross_attention_dim if p.conditioning == "cross_attention" else None,
        num_class_embeds=p.num_classes + 1 if p.conditioning == "class" else None)


# ---------------------------------------------------------------- LoRA ----


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

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise UserError(f"--lora.r must be > 0, got {self.r}")


def default_lora_targets(module: nn.Module) -> list[str]:
    """Every Linear/Conv layer inside the UNet blocks (not the stem, head or time MLP)."""
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
    targets = options.target_modules or default_lora_targets(denoiser.net)
    config = LoraConfig(r=options.r, lora_alpha=options.alpha, lora_dropout=options.dropout,
                        target_modules=targets)
    inject_adapter_in_model(config, denoiser.net)
    denoiser.lora_config = config
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


# ---------------------------------------------------------- save / load ----


def save_model(denoiser: Denoiser, directory: str | Path) -> Path:
    """Write a full model: ``prefdiff_model.json``, ``net/`` via save_pretrained, extras as safetensors.

    A LoRA adapter, when present, is written beside it in peft's layout.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"preset": asdict(denoiser.preset), "format": 1}
    (directory / MODEL_FILE).write_text(json.dumps(meta, indent=2))
    lora = has_lora(denoiser)
    if lora:
        save_lora(denoiser, directory / "lora")
    net_state = {k: v for k, v in denoiser.net.state_dict().items() if "lora_" not in k}
    net_state = {k.replace(".base_layer.", "."): v.contiguous() for k, v in net_state.items()}
    if denoiser.preset.kind == "monai":
        save_file(net_state, str(directory / "net.safetensors"))
    elif not lora:
        denoiser.net.save_pretrained(directory / "net", safe_serialization=True)
    else:
        # The same layout save_pretrained writes, with the adapter stripped for a clean base.
        denoiser.net.save_config(directory / "net")
        save_file(net_state, str(directory / "net" / "diffusion_pytorch_model.safetensors"))
    for part in ("conditioner", "controlnet"):
        module = getattr(denoiser, part)
        if module is not None:
            save_file({k: v.contiguous() for k, v in module.state_dict().items()},
                      str(directory / f"{part}.safetensors"))
    return directory


def save_lora(denoiser: Denoiser, directory: str | Path) -> Path:
    """Write the adapter as peft does: adapter_model.safetensors + adapter_config.json."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(lora_state_dict(denoiser), str(directory / LORA_WEIGHTS))
    config = denoiser.lora_config.to_dict()
    config["target_modules"] = sorted(config["target_modules"])
    (directory / LORA_CONFIG).write_text(json.dumps(config, indent=2, default=str))
    return directory


def load_model(directory: str | Path, conditioner: nn.Module | None = None) -> Denoiser:
    """Load what :func:`save_model` wrote; a clear error for a missing or foreign folder."""
    from safetensors.torch import load_file

    directory = Path(directory)
    meta_path = directory / MODEL_FILE
    if not meta_path.is_file():
        raise UserError(f"{directory} is not a prefdiff model folder (no {MODEL_FILE}); "
                        f"pass a folder written by `prefdiff fit` or `prefdiff bench`")
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


def load_lora(denoiser: Denoiser, directory: str | Path) -> Denoiser:
    """Inject and load an adapter written by :func:`save_lora` (or by peft itself)."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
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
    result = set_peft_model_state_dict(denoiser.net, state)
    if getattr(result, "unexpected_keys", None):
        raise UserError(f"the LoRA adapter in {directory} is for another model "
                        f"(unexpected '{result.unexpected_keys[0]}')")
    return denoiser


def save_lora_for_pipeline(denoiser: Denoiser, directory: str | Path) -> Path:
    """Write the UNet adapter the way diffusers' ``pipeline.load_lora_weights`` reads it."""
    from diffusers import StableDiffusionPipeline
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(denoiser.net)
    # The adapter's config travels as metadata so the loader uses the same alpha / r scale.
    metadata = denoiser.lora_config.to_dict()
    metadata["target_modules"] = sorted(metadata["target_modules"])
    StableDiffusionPipeline.save_lora_weights(save_directory=str(directory), unet_lora_layers=state,
                                              safe_serialization=True, unet_lora_adapter_metadata=metadata)
    return Path(directory)


def load_pipeline_unet(pipeline_dir: str | Path, conditioning: str = "cross_attention") -> Denoiser:
    """The UNet of a local Stable Diffusion pipeline folder, via ``from_pretrained``."""
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


def count_parameters(module: nn.Module, trainable: bool = False) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)
