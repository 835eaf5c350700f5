"""What the GPU script measures of a trainer under a Lightning Trainer: step times, the FLOPs of a
step, a torch.profiler summary of a step, and the bf16 matrix-product peak they are set against.

:func:`trainer_steps` is :func:`prefdiff.perf.common.lightning_block` with the GPU's needs: a
clock that waits for the device, and steps set aside (not timed) for counting FLOPs and for
profiling, in the same fit.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 10) -> float:
    """Best FLOP/s of an n x n matrix product (2 n^3 FLOPs) over ``repeats`` timed runs."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


@dataclass
class Steps:
    """What :func:`trainer_steps` measured."""

    times: list[float] = field(default_factory=list)
    """Seconds of each timed step."""
    flops: int | None = None
    """FLOPs of the counted step (forward and backward matmuls and convolutions)."""
    profile: dict[str, Any] | None = None
    """:func:`profile_summary` of the profiled step."""


def trainer_steps(module, batch: Any, *, device: torch.device, warmup: int, timed: int, count_flops: bool = False,
                  profile: bool = False, precision: str = "32-true") -> Steps:
    """Fit ``module`` on ``batch`` (every step the same) for ``warmup`` + [1 counted] + ``timed`` +
    [1 profiled] steps of a quiet Lightning Trainer, as ``prefdiff fit`` trains, on ``device``.

    A step runs from one ``on_train_batch_start`` to the next (the last to its
    ``on_train_batch_end``): the training step, backward, optimizer step, hooks and the fetch
    of the next batch, with the device synchronised at both ends. The counted step runs
    under ``FlopCounterMode`` and the profiled one under ``torch.profiler``; neither is timed.
    """
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, Dataset

    from prefdiff.quiet import quiet_trainer

    counted = warmup if count_flops else None
    first_timed = warmup + int(count_flops)
    profiled = first_timed + timed if profile else None
    total = first_timed + timed + int(profile)
    result = Steps()

    class Repeat(Dataset):
        def __len__(self) -> int:
            return total

        def __getitem__(self, i: int) -> Any:
            return batch

    class Meter(pl.Callback):
        def __init__(self) -> None:
            self.start: float | None = None
            self.index = -1
            self.mode: Any = None

        def _close_timed(self) -> None:
            if self.start is not None and first_timed <= self.index < first_timed + timed:
                sync(device)
                result.times.append(time.perf_counter() - self.start)
            self.start = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
            self._close_timed()
            self.index = batch_idx
            if batch_idx == counted:
                from torch.utils.flop_counter import FlopCounterMode

                self.mode = FlopCounterMode(display=False)
                self.mode.__enter__()
            elif batch_idx == profiled:
                self.mode = StepProfiler(device)
                self.mode.__enter__()
            sync(device)
            self.start = time.perf_counter()

        def on_train_batch_end(self, *args: Any) -> None:
            if self.index == total - 1:
                self._close_timed()  # the last step has no next start
            if self.mode is None:
                return
            sync(device)
            self.mode.__exit__(None, None, None)
            if self.index == counted:
                result.flops = int(self.mode.get_total_flops())
            else:
                result.profile = self.mode.summary(typical_step_s=median(result.times))
            self.mode, self.start = None, None

    accelerator = "gpu" if device.type == "cuda" else "cpu"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no workers in the DataLoader" and the like
        trainer = quiet_trainer(total, callbacks=[Meter()], accelerator=accelerator, precision=precision)
        trainer.fit(module, train_dataloaders=DataLoader(Repeat(), batch_size=None))
    return result


def median(values: list[float]) -> float | None:
    return sorted(values)[len(values) // 2] if values else None


class StepProfiler:
    """torch.profiler over one step, summarised: how busy the device was and how many kernels ran."""

    def __init__(self, device: torch.device) -> None:
        from torch.profiler import ProfilerActivity, profile

        self.device = device
        # On a GPU the kernels alone: host-side events would slow the step and the summary (100k+ per step).
        activities = [ProfilerActivity.CUDA] if device.type == "cuda" else [ProfilerActivity.CPU]
        self.prof = profile(activities=activities)

    def __enter__(self) -> "StepProfiler":
        self.start = time.perf_counter()
        self.prof.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.prof.__exit__(*exc)
        self.wall = time.perf_counter() - self.start

    def summary(self, typical_step_s: float | None, top: int = 6) -> dict[str, Any]:
        """The profiled step: its wall time, the device's kernel time and launches, the share of an
        unprofiled step the device sat idle (profiling slows the host, so idle is estimated against
        ``typical_step_s``, the median unprofiled step), the top kernels; on the CPU, the aten operators called."""
        from torch.autograd import DeviceType

        events = self.prof.key_averages()
        kernels = sorted((e for e in events if e.device_type == DeviceType.CUDA),
                         key=lambda e: e.self_device_time_total, reverse=True)
        busy = sum(e.self_device_time_total for e in kernels) / 1e6
        out: dict[str, Any] = {
            "profiled_step_s": round(self.wall, 4),
            "aten_ops": (None if self.device.type == "cuda" else
                         sum(e.count for e in events if e.device_type == DeviceType.CPU and e.key.startswith("aten::"))),
            "kernel_launches": sum(e.count for e in kernels),
            "kernel_busy_s": round(busy, 4),
            "top_kernels": [{"name": e.key[:80], "calls": e.count, "ms": round(e.self_device_time_total / 1e3, 2)}
                            for e in kernels[:top]],
        }
        if self.device.type == "cuda":
            out["busy_share_profiled"] = round(busy / self.wall, 3)
            if typical_step_s:
                out["idle_share"] = round(max(0.0, 1 - busy / typical_step_s), 3)
        return out
