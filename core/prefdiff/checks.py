"""Checks a command runs before its expensive part, so a mismatch is one line instead of a traceback later."""

from __future__ import annotations

from typing import Any

import torch

from prefdiff.errors import UserError


@torch.no_grad()
def check_conditions_fit(denoiser, cond: Any, *, data: str, model: str, conditioner: str | None, fix: str) -> None:
    """Raise one line naming the data, the conditioner and the model when ``cond`` does not fit ``denoiser``.

    The denoiser runs once, in eval mode, on zeros with the first condition of the collated batch
    ``cond``: what the network cannot take (a robot layout given to an image model's class
    embedding, say) fails here, before sampling or training starts.

    :param data: what the conditions came from, as the user named it (``dataset 'robot_demos'``).
    :param model: the model, as the user named it (a folder, or a preset).
    :param conditioner: the conditioner's registered name, or None.
    :param fix: what to do about it, worded for the command's flags.
    """
    from prefdiff.data import select

    if isinstance(cond, (list, tuple)) and denoiser.preset.conditioning == "text":
        return  # prompts and a text encoder always fit; its forward is the costliest of all
    # Frozen weights held in half precision (--model.init_args.frozen_dtype) run under autocast, as in training.
    device = next(denoiser.parameters()).device
    half = next((p.dtype for p in denoiser.parameters() if p.dtype in (torch.bfloat16, torch.float16)), None)
    if half == torch.float16 and device.type == "cpu":
        return  # no float16 autocast here; the trainer's setup refuses float16 frozen weights on a CPU
    training = denoiser.training
    denoiser.eval()
    try:
        with torch.autocast(device.type, dtype=half or torch.bfloat16, enabled=half is not None):
            denoiser(torch.zeros(1, *denoiser.sample_shape, device=device), torch.zeros(1, dtype=torch.long,
                     device=device), select(cond, slice(0, 1)))
    except (RuntimeError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise UserError(f"the conditions of {data} do not fit the model {model} (conditioner "
                        f"{conditioner or 'none'}): {' '.join(str(exc).split())[:200]}; {fix}") from None
    finally:
        denoiser.train(training)
