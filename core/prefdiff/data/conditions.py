"""Batches of conditions: a tensor, a dict of tensors, or a list of prompts, handled alike."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data._utils.collate import default_collate


def infer_sample_shape(denoiser) -> tuple[int, ...]:
    """The shape of one sample in the model's space (:attr:`prefdiff.models.Denoiser.sample_shape`)."""
    return denoiser.sample_shape


# A collated condition is a tensor, a dict of them, or a list of prompts (text-to-image).


def condition_count(cond: Any) -> int:
    """Batch size of a collated condition."""
    while isinstance(cond, dict):
        cond = next(iter(cond.values()))
    return len(cond) if isinstance(cond, (list, tuple)) else int(cond.shape[0])


def select(cond: Any, index: Any) -> Any:
    """Index or slice a collated condition along the batch (dicts recurse; None stays None)."""
    if cond is None:
        return None
    if isinstance(cond, dict):
        return {k: select(v, index) for k, v in cond.items()}
    if isinstance(cond, (list, tuple)):
        if isinstance(index, slice):
            return list(cond[index])
        if isinstance(index, int):
            return cond[index]
        return [cond[int(i)] for i in torch.as_tensor(index).reshape(-1).tolist()]
    if isinstance(index, torch.Tensor):
        index = index.to(cond.device)
    return cond[index]


def concat(a: Any, b: Any) -> Any:
    """Concatenate two collated conditions along the batch."""
    if isinstance(a, dict):
        return {k: concat(a[k], b[k]) for k in a}
    if isinstance(a, (list, tuple)):
        return [*a, *b]
    return torch.cat([a, b])


def repeat_condition(cond: Any, times: int) -> Any:
    """Repeat each condition ``times`` times along the batch (consecutive copies)."""
    if times == 1:
        return cond
    if isinstance(cond, dict):
        return {k: repeat_condition(v, times) for k, v in cond.items()}
    if isinstance(cond, (list, tuple)):
        return [c for c in cond for _ in range(times)]
    return cond.repeat_interleave(times, dim=0)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of items (dicts of tensors, nested dicts allowed)."""
    return default_collate(items)
