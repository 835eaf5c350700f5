"""The training shuffle: fixed by (seed, epoch), sharded by rank, resumable."""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch.utils.data import Sampler

from prefdiff.errors import UserError


class EpochSampler(Sampler[int]):
    """A shuffle fixed by (seed, epoch) and sharded by rank: resumable and DDP-safe.

    Lightning calls ``set_epoch`` on it, so a run resumed from a checkpoint at
    an epoch boundary sees exactly the batches an uninterrupted run sees. With
    ``batch_size`` (per process), each global batch of the shuffle is split
    across the ranks, rank r taking its r-th slice, so ``world_size`` processes
    see the batches one process with a ``world_size`` times larger batch sees.

    ``batches_done``, asked when an epoch's iteration starts, says how many of its batches
    were already trained (a run resumed from a checkpoint inside the epoch: Lightning's own
    count); the shuffle then continues after them instead of starting the epoch again.
    ``current_epoch``, asked then too, replaces the epoch ``set_epoch`` gave: a loader with
    worker processes draws its indices when Lightning creates its iterator, which on a resume
    comes before ``set_epoch``.
    """

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 batch_size: int | None = None, batches_done: Callable[[], int] | None = None,
                 current_epoch: Callable[[], int] | None = None) -> None:
        if size == 0:
            raise UserError("the dataset is empty; check its root folder and split")
        self.size, self.seed, self.rank, self.world = size, seed, rank, world_size
        self.batch = batch_size or max(1, size // world_size)
        self.epoch = 0
        self.batches_done = batches_done
        self.current_epoch = current_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        epoch = self.current_epoch() if self.current_epoch is not None else self.epoch
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.size, generator=g).tolist()
        step = self.batch * self.world
        mine = [i for start in range(0, len(order) - step + 1, step)
                for i in order[start + self.rank * self.batch:start + (self.rank + 1) * self.batch]]
        done = self.batches_done() if self.batches_done is not None else 0
        return iter(mine[done * self.batch:])

    def __len__(self) -> int:
        return (self.size // (self.batch * self.world)) * self.batch
