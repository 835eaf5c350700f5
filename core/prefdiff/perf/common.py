"""What every figure of the performance suite shares: interleaved timing, the
Lightning step clock, fixed batches, the figure record and the environment.

Every figure is a ratio of two things measured side by side in one process.
The arms are run in rounds, A, B, A, B, ..., and each arm's figure is the
median of its step times over every round, first step of each block dropped
(warm-up), so slow phases of a shared, noisy machine fall on both arms alike.

Times are the CPU time of the process (:data:`CLOCK`): every measurement runs
on one thread, so on an idle machine it equals the wall time, and on a shared
one it leaves out the time other jobs hold the core, which wall-clock medians
of seconds-long steps could not cancel (measured: quartiles of paired
wall-clock ratios 0.82 to 1.35 under a load of 8 on 2 cores). DDP, which
waits on another process, is timed by the wall clock.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

#: The clock of every timed figure but DDP: CPU seconds of this process.
CLOCK = time.process_time

#: arm name -> callable that runs one block and returns that block's step times (s).
Arms = dict[str, Callable[[], list[float]]]


def interleaved(arms: Arms, rounds: int) -> dict[str, list[float]]:
    """Run every arm once per round, in turn, and pool each arm's step times."""
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(rounds):
        for name, block in arms.items():
            times[name].extend(block())
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def timed_block(step: Callable[[int], Any], steps: int, warmup: int = 1) -> list[float]:
    """Run ``step(i)`` ``warmup + steps`` times; the times of the last ``steps``."""
    out = []
    for i in range(warmup + steps):
        start = CLOCK()
        step(i)
        if i >= warmup:
            out.append(CLOCK() - start)
    return out


# ---------------------------------------------------------- Lightning ----


def lightning_block(module, batch: Any, steps: int, warmup: int = 1,
                    between: Callable[[int], Any] | None = None, clock: Callable[[], float] | None = None,
                    **trainer_options: Any):
    """Step times of ``module`` under a Lightning Trainer fed ``batch`` every step.

    A step is the time from one ``on_train_batch_start`` to the next: the
    training step, backward, optimizer step, every hook and log call and the
    fetch of the next batch (the last step ends at its ``on_train_batch_end``).
    The Trainer is configured as ``prefdiff bench`` configures it (no logger,
    checkpoints or progress bar).

    With ``between``, ``between(i)`` runs and is timed before every Lightning
    step, outside the Lightning step's time: the two arms alternate step by
    step (A, B, A, B, ...), the finest interleaving there is, and the function
    returns ``(lightning_times, between_times)``. ``clock`` defaults to :data:`CLOCK`.
    """
    clock = clock or CLOCK
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, Dataset

    from prefdiff.quiet import quiet_trainer

    class Repeat(Dataset):
        def __len__(self) -> int:
            return warmup + steps

        def __getitem__(self, i: int) -> Any:
            return batch

    class Clock(pl.Callback):
        def __init__(self) -> None:
            self.own: list[float] = []
            self.other: list[float] = []
            self.start: float | None = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
            now = clock()
            if self.start is not None:
                self.own.append(now - self.start)
            if between is not None:
                between(batch_idx)
                self.other.append(clock() - now)
            self.start = clock()

        def on_train_batch_end(self, *args: Any) -> None:
            self.end = clock()

    timer = Clock()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no workers in the DataLoader" and the like
        trainer = quiet_trainer(warmup + steps, callbacks=[timer], **trainer_options)
        trainer.fit(module, train_dataloaders=DataLoader(Repeat(), batch_size=None))
    own = (timer.own + [timer.end - timer.start])[warmup:]
    if between is None:
        return own
    return own, timer.other[warmup:]


# ------------------------------------------------------------- models ----


def unet_preset(quick: bool, **overrides: Any) -> dict:
    """The 1.1M-parameter 32x32 class-conditioned UNet of docs/facts.md (quick: 16x16, 0.3M)."""
    preset = dict(kind="unet2d", sample_size=16 if quick else 32, channels=3, conditioning="class",
                  num_classes=4, block_out_channels=(16, 32) if quick else (32, 64, 64), layers_per_block=1)
    preset.update(overrides)
    return preset


def class_conditions(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(4, (n,), generator=torch.Generator().manual_seed(seed))


def images(n: int, size: int, seed: int = 0, channels: int = 3) -> torch.Tensor:
    return torch.rand((n, channels, size, size), generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ------------------------------------------------------------ records ----


@dataclass
class Figure:
    """One entry of perf.json."""

    id: int
    name: str
    value: float | None
    target: str
    """The target as written, e.g. ``<= 1.05``."""
    met: bool
    unit: str = "ratio"
    source: str = "issue"
    """``issue`` for the issue's targets; ``prefdiff`` for the ones this suite sets itself."""
    details: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def check(value: float | None, target: str) -> bool:
    """Whether ``value`` meets a target written ``<= x`` or ``>= x``."""
    if value is None:
        return False
    op, bound = target.split()
    return value <= float(bound) if op == "<=" else value >= float(bound)


def environment() -> dict[str, Any]:
    """Machine, versions and the commit measured (and whether the tree was clean), as the page names them."""
    import diffusers

    from prefdiff.bench.runner import source_commit
    import peft
    import pytorch_lightning

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "machine": platform.machine(), "python": platform.python_version(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "peft": peft.__version__,
            "pytorch_lightning": pytorch_lightning.__version__, **source_commit()}
