"""Model presets of the fields: what network to build, and the builders (diffusers and MONAI UNets)."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields
from typing import Any

from torch import nn

from prefdiff.errors import UserError
from prefdiff.models.denoiser import Denoiser

CONDITIONINGS = ("none", "concat", "class", "cross_attention", "controlnet", "text")
"""How the condition enters; ``text`` is a pipeline's prompt encoder (set by the pipeline loader)."""
KINDS = ("unet2d", "unet2d_condition", "unet1d", "monai", "transformer")
"""``transformer``: an SD3 or FLUX transformer, only ever loaded from its pipeline folder."""


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
    prediction_type: str = "epsilon"
    """What the network predicts: ``epsilon`` (a DDIM model) or ``flow``, the velocity of a
    flow-matching model (Lipman et al. 2023), sampled by the Euler ODE or Flow-GRPO's SDE."""

    def __post_init__(self) -> None:
        self._read_values()
        self.block_out_channels = tuple(self.block_out_channels)
        if self.prediction_type not in ("epsilon", "v_prediction", "flow"):
            raise UserError(f"--model.prediction_type must be epsilon, v_prediction or flow, "
                            f"got '{self.prediction_type}'")
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



    def _read_values(self) -> None:
        """Values that came as text (one field overridden on the command line: ``--model.init_args.model.cond_channels
        3``) read as YAML, as the rest of the options are; a value of the wrong type is one line naming it."""
        import yaml

        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, str) and f.type != "str":
                try:
                    value = yaml.safe_load(value)
                except yaml.YAMLError:
                    pass
                setattr(self, f.name, value)
            if f.type.startswith("tuple"):
                whole = [_whole(v) for v in value] if isinstance(value, (list, tuple)) else [None]
                ok, kind = None not in whole, "a list of integers"
                if ok:
                    setattr(self, f.name, tuple(whole))
            elif f.type == "int":
                ok, kind = _whole(value) is not None, "an integer"
                if ok:
                    setattr(self, f.name, _whole(value))
            elif f.type == "bool":
                ok, kind = isinstance(value, bool) or _whole(value) in (0, 1), "true or false"
                if ok:
                    setattr(self, f.name, bool(value))
            elif f.type == "str":
                ok, kind = isinstance(value, str), "text"
            else:
                continue
            if not ok:
                raise UserError(f"model option {f.name} must be {kind}, got {value!r} ({type(value).__name__})")


def _whole(value: Any) -> int | None:
    """``value`` as an int when it is a whole number (an int, a numpy integer, 32.0), else None; never a bool."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and float(value).is_integer():
        return int(value)
    return None


def build_denoiser(preset: ModelPreset | dict, conditioner: nn.Module | None = None,
                   net: nn.Module | None = None) -> Denoiser:
    """Build a fresh denoiser for ``preset``; pass ``net`` to hand in a ready network (MONAI)."""
    preset = preset if isinstance(preset, ModelPreset) else ModelPreset(**preset)
    kind = preset.prediction_type
    if preset.kind == "transformer" and net is None:
        raise UserError("a transformer is loaded from its pipeline folder (--model.base DIR), not built from a preset")
    if net is not None:
        return Denoiser(net, preset, conditioner, prediction_type=kind)
    builder = {"unet2d": _unet2d, "unet2d_condition": _unet2d_condition,
               "unet1d": _unet1d, "monai": _monai}[preset.kind]
    built = builder(preset)
    if isinstance(built, tuple):
        return Denoiser(built[0], preset, conditioner, controlnet=built[1], prediction_type=kind)
    return Denoiser(built, preset, conditioner, prediction_type=kind)


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

