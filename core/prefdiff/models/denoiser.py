"""The denoiser: one call shape over every network, ``denoiser(x_t, t, cond) -> prediction``.

It also carries the rest of the model seam (see :mod:`prefdiff.models`): the
condition encoder, the codec and the prediction type.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from prefdiff.errors import UserError
from prefdiff.models.codec import IdentityCodec

if TYPE_CHECKING:
    from prefdiff.models.presets import ModelPreset

PREDICTION_TYPES = ("epsilon", "v_prediction", "flow")


class Denoiser(nn.Module):
    """``denoiser(x_t, t, cond) -> prediction`` over any supported network.

    :param net: the network (diffusers or MONAI).
    :param preset: what was built (for a pipeline: its UNet's shape), saved beside the weights.
    :param conditioner: optional module mapping raw conditions to model input; for
        conditioning ``text`` a :class:`~prefdiff.models.text.PromptEncoder`.
    :param controlnet: optional diffusers ControlNetModel (conditioning 'controlnet').
    :param codec: samples <-> the model's space (default: the identity).
    :param prediction_type: what the network predicts: ``epsilon``, ``v_prediction`` or ``flow``.
    :param net_call: for a pipeline whose network is not called like a UNet (the SD3 and FLUX
        transformers): ``net_call(net, x_t, t, kwargs) -> prediction``, with ``kwargs`` the
        prompt encoder's output (:mod:`prefdiff.models.flow_pipelines`).
    """

    def __init__(self, net: nn.Module, preset: ModelPreset, conditioner: nn.Module | None = None,
                 controlnet: nn.Module | None = None, *, codec: nn.Module | None = None,
                 prediction_type: str = "epsilon", net_call: Callable[..., torch.Tensor] | None = None) -> None:
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        self.net = net
        self.preset = preset
        self.conditioner = conditioner
        self.controlnet = controlnet
        self.codec = codec if codec is not None else IdentityCodec()
        self.prediction_type = prediction_type
        self.net_call = net_call

    # -- the seam -------------------------------------------------------------

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample in the model's space: ``(C, H, W)``, ``(C, T)``, or a latent's."""
        p = self.preset
        return (p.channels, p.sample_size) if p.kind == "unet1d" else (p.channels, p.sample_size, p.sample_size)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Samples (images, trajectories) -> the model's space; the identity in pixel space."""
        return self.codec.encode(x)

    def decode(self, z: torch.Tensor, *, checkpoint: bool = False) -> torch.Tensor:
        """The model's space -> samples for the rewards; differentiable, optionally checkpointed."""
        return self.codec.decode(z, checkpoint=checkpoint)

    def pinned(self, cond: Any) -> dict[str, torch.Tensor]:
        """The sampler options that keep what the conditioner pins for ``cond``: ``{"known": values,
        "keep_mask": mask}`` in the model's space, or ``{}`` when nothing is pinned.

        A conditioner pins by defining ``pinned(cond) -> (values, mask) | None`` (a planner's
        start and goal: ``layout_timeline`` with ``pin_endpoints``). Every sampler call that
        stands for the model (training, evaluation, mining, ``prefdiff sample``) passes these
        on, so the model is trained and scored as it is used.
        """
        pin = getattr(self.conditioner, "pinned", None)
        found = None if pin is None or cond is None else pin(cond)
        if found is None:
            return {}
        values, mask = found
        return {"known": values, "keep_mask": mask}

    def frozen_parts(self) -> list[str]:
        """Sub-modules that never train and are loaded from the model folder, not checkpoints:
        the VAE and a text-to-image pipeline's text encoders."""
        parts = ["codec"] if getattr(self.codec, "latent", False) else []
        return parts + (["conditioner"] if self.preset.conditioning == "text" else [])

    # -- the call -------------------------------------------------------------

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        mode = self.preset.conditioning
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if mode == "text":
            kwargs = self.conditioner(cond, device=x.device, dtype=x.dtype)
            if self.net_call is not None:
                return self.net_call(self.net, x, t, kwargs)
            return self.net(x, t, **kwargs).sample
        if self.conditioner is not None and cond is not None:
            cond = self.conditioner(cond)
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
        if self.preset.conditioning == "text":
            return self.conditioner.null_condition(cond)
        if isinstance(cond, dict):
            return {k: self.null_condition(v) for k, v in cond.items()}
        if self.preset.conditioning == "class":
            return torch.full_like(cond, self.preset.num_classes)
        return torch.zeros_like(cond)

    def set_negative_prompt(self, text: str) -> None:
        """The unconditional prompt of classifier-free guidance ("" by default, as diffusers' pipelines);
        only a text-to-image model has one."""
        text = text or ""
        if self.preset.conditioning == "text":
            self.conditioner.negative_prompt = text
        elif text:
            raise UserError(f"a negative prompt needs a text-to-image pipeline; this model is conditioned on "
                            f"'{self.preset.conditioning}' conditions, whose guidance uses the null condition")


    def set_distilled_guidance(self, value: float | None, *, flag: str = "distilled_guidance") -> None:
        """The guidance value a guidance-distilled transformer (FLUX.1-dev, ``guidance_embeds``) embeds:
        what FluxPipeline's ``guidance_scale`` sets (3.5 by default, as there). None keeps the current one.

        It is not classifier-free guidance (``guidance_scale`` of the samplers, FluxPipeline's
        ``true_cfg_scale``): the model takes it as an input, in one forward pass. ``flag`` is the
        option's name in the errors.
        """
        if value is None:
            return
        if getattr(self.net_call, "guidance", None) is None:
            model = getattr(self, "pipeline_class", None) or f"{self.preset.kind} model"
            raise UserError(f"{flag} needs a guidance-distilled FLUX transformer (guidance_embeds in its "
                            f"config), and this {model} has none; for classifier-free guidance give the "
                            f"guidance scale (--guidance-scale, or --model.init_args.guidance_scale in fit)")
        if not value > 0:
            raise UserError(f"{flag} must be > 0, got {value}")
        self.net_call.guidance = float(value)


def _broadcast_like(cond: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Expand a per-sample vector condition over the spatial or time axes of x."""
    while cond.ndim < x.ndim:
        cond = cond.unsqueeze(-1)
    return cond.expand(*cond.shape[:2], *x.shape[2:]).to(x.dtype)

