"""A host-memory memo of tensors that stops growing at a budget.

The frozen parts of a pipeline compute the same thing again and again: the VAE
latent of a training image, the text encoders' states of a prompt. Keeping them
saves that work, but on real data the sum is large: Pick-a-Pic v2's 1.7 million
images are 110 GB of SD-1.5 latents, and its 59 thousand prompts 320 GB of SD3
states (333 tokens of width 4096 each). So a memo keeps what it is given until
its budget is spent and then keeps nothing more: the first keys stay (with
shuffled epochs any choice of keys hits equally often), the rest are recomputed.
"""

from __future__ import annotations

import logging
from typing import Hashable

import torch

log = logging.getLogger("prefdiff.models")

BUDGET_MB = 8192
"""The default budget of each memo, per process."""


def _nbytes(value: torch.Tensor | tuple) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    return sum(_nbytes(part) for part in value if part is not None)


def _to_host(value: torch.Tensor | tuple):
    """A host copy (not a view of a batch, which would keep the whole batch alive)."""
    if isinstance(value, torch.Tensor):
        return value.to("cpu", copy=True)
    return tuple(None if part is None else _to_host(part) for part in value)


class BoundedMemo:
    """``key -> tensor (or tuple of tensors)`` in host memory, up to ``budget_mb``.

    :param budget_mb: the most the memo holds (0: nothing).
    :param what: what it holds and which option sets its budget, for the one log line it writes when full.
    """

    def __init__(self, budget_mb: float = BUDGET_MB, what: str = "cache") -> None:
        self.budget_mb, self.what = budget_mb, what
        self._items: dict[Hashable, torch.Tensor | tuple] = {}
        self.nbytes, self._told_full = 0, False

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __getitem__(self, key: Hashable):
        return self._items[key]

    def keep(self, key: Hashable, value):
        """Keep a host copy of ``value`` under ``key`` if the budget allows; returns what the memo holds for
        ``key`` (its copy, or ``value`` itself once the budget is spent)."""
        if key in self._items:
            return self._items[key]
        size = _nbytes(value)
        if self.nbytes + size <= self.budget_mb * 2 ** 20:
            self._items[key] = _to_host(value)
            self.nbytes += size
            return self._items[key]
        if self._items and not self._told_full:
            self._told_full = True
            log.info("the %s is full (%d items, %.0f MB); later ones are computed each time they are needed",
                     self.what, len(self._items), self.nbytes / 2 ** 20)
        return value

    def clear(self) -> None:
        """Forget every item (the budget stays)."""
        self._items.clear()
        self.nbytes, self._told_full = 0, False
