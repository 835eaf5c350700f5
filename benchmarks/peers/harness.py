"""What every side of the peer comparison shares: the settings, the rewards, the clock and the snapshots.

This module runs in both virtualenvs (prefdiff's and benchmarks/peers/.venv), so it imports
nothing but torch, numpy and PIL: neither prefdiff nor TRL nor diffusers.
"""

from __future__ import annotations

import io
import json
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

ATTENTION_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
"""The LoRA targets of TRL's DDPO/AlignProp pipeline and of diffusers' Diffusion-DPO example; prefdiff's
default for text-to-image UNets (the attention projections) selects the same layers."""


@dataclass
class Settings:
    """One comparison: the work every side does, written once to ``settings.json`` and read by each side."""

    base: str
    """The pipeline folder every side loads (``StableDiffusionPipeline.save_pretrained`` layout)."""
    prompts: str
    """Folder with train.txt and val.txt (the held-out prompts), one prompt a line."""
    pairs: str
    """Folder of Pick-a-Pic-layout parquet shards (train-*.parquet, validation-*.parquet)."""
    image_size: int = 64
    num_steps: int = 10
    lora_rank: int = 4
    prefdiff_lora_init: str | None = None
    """prefdiff's ``--model.lora_init``; the peers always start A gaussian (std 1/rank). None keeps
    prefdiff's default, gaussian on pipelines since 51f0b96 (``results.json`` runs on it); ``kaiming``
    gives it peft's Kaiming-uniform start, its default before, on which ``base-v1/`` and ``base-v2/``
    ran (they record it as ``"default"``; ``base-v2/results-gaussian.json`` is the exception)."""
    prefdiff_truncation: str | None = None
    """prefdiff's AlignProp ``--model.truncation``: None keeps its own (the paper's contiguous last K,
    K uniform in 1..k); ``per_step`` detaches each step's UNet output on its own draw, as TRL's
    ``AlignPropTrainer`` does with ``truncated_rand_backprop_minmax`` (0, num_steps - 1)."""
    seed: int = 0
    eta: float = 1.0
    guidance_scale: float = 5.0
    """Classifier-free guidance, in sampling and in training, on every side: TRL's default (the DDPO
    paper's). TRL's pipeline cannot run without it: at 1 it still stacks the negative prompt's embeddings
    onto the prompts' and the UNet fails on the batch mismatch."""
    ddpo: dict[str, Any] = field(default_factory=lambda: dict(
        prompts_per_batch=2, samples_per_prompt=4, lr=1e-3, clip_range=1e-4, adv_clip_max=5.0, epochs=20,
        snapshot_every=2))
    alignprop: dict[str, Any] = field(default_factory=lambda: dict(batch=2, lr=1e-3, epochs=30, snapshot_every=3))
    dpo: dict[str, Any] = field(default_factory=lambda: dict(batch=4, lr=1e-4, beta=2500, steps=100,
                                                             snapshot_every=10))
    """beta in the Diffusion-DPO authors' convention (prefdiff's ``--model.beta``): the loss is
    ``-logsigmoid(-0.5 * beta * (model_diff - ref_diff))``; dpo_side.py passes the diffusers example beta / 2."""
    threads: int = 1
    """torch threads in each training process (the sides run side by side, one core each)."""

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> Settings:
        return cls(**json.loads(Path(path).read_text()))


def torchvision_without_ops() -> None:
    """Let ``import torchvision`` succeed in the peers' venv, where PyPI's torchvision wheel is a CUDA
    build whose compiled ops (nms, roi_align, ...) cannot load beside the CPU torch. Its two modules that
    register those ops are replaced by empty ones before it is imported; transforms (all the Diffusion-DPO
    example uses) are pure Python and run unchanged. transformers imports torchvision whenever it is
    installed, so TRL's side needs this too."""
    import sys
    import types

    for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
        sys.modules.setdefault(name, types.ModuleType(name))


# ------------------------------------------------------------ rewards ----
# The formulas of prefdiff's built-in rewards (prefdiff/builtin/example.py), written out again
# so the peers' reward functions compute the same numbers without importing prefdiff; run.py
# checks they agree with prefdiff's own on the same images before anything is timed.


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images [B, C, H, W] -> uint8 [B, H, W, C], as prefdiff.viz.to_uint8."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


def jpeg_compressibility(images: torch.Tensor, quality: int = 95) -> torch.Tensor:
    """DDPO's compressibility reward (Black et al. 2023): minus the JPEG size in kB of each image in [-1, 1]."""
    from PIL import Image

    sizes = []
    for pixels in to_uint8(images).cpu().numpy():
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
        sizes.append(buffer.tell() / 1000.0)
    return -torch.tensor(sizes, dtype=torch.float32)


def smoothness(images: torch.Tensor) -> torch.Tensor:
    """Minus the mean absolute difference of neighbouring pixels of images in [-1, 1] (differentiable)."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().flatten(1).mean(1)
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().flatten(1).mean(1)
    return -(dx + dy)


# -------------------------------------------------------------- clock ----


class Clock:
    """Per-epoch process CPU time and wall time of a training loop, minus the harness's own work.

    ``tick()`` marks an epoch boundary; the work between ``pause()`` and ``resume()`` (taking a
    LoRA snapshot) is not counted. CPU time is the process's (every thread), which a busy
    shared machine inflates far less than wall time.
    """

    def __init__(self) -> None:
        self.cpu: list[float] = []
        self.wall: list[float] = []
        self._excluded_cpu = self._excluded_wall = 0.0
        self._mark = None
        self._paused = None

    def start(self) -> None:
        self._mark = (time.process_time(), time.perf_counter())
        self._excluded_cpu = self._excluded_wall = 0.0

    def tick(self) -> None:
        cpu, wall = time.process_time(), time.perf_counter()
        self.cpu.append(cpu - self._mark[0] - self._excluded_cpu)
        self.wall.append(wall - self._mark[1] - self._excluded_wall)
        self._mark = (cpu, wall)
        self._excluded_cpu = self._excluded_wall = 0.0

    def pause(self) -> None:
        self._paused = (time.process_time(), time.perf_counter())

    def resume(self) -> None:
        self._excluded_cpu += time.process_time() - self._paused[0]
        self._excluded_wall += time.perf_counter() - self._paused[1]


def lora_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA tensors of a peft-adapted UNet, keyed without the adapter name (both sides name them alike)."""
    return {name.replace(".default", ""): p.detach().to("cpu", copy=True)
            for name, p in module.named_parameters() if "lora_" in name}


def peak_rss_mb() -> float:
    """This process's peak resident memory since its exec, in MB: VmHWM of /proc/self/status.

    Not ``ru_maxrss``: Linux carries the pre-exec peak of the forked parent into it, so a side started
    from run.py (which holds the evaluator) would report at least run.py's own footprint."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Recorder:
    """Collects a side's per-epoch times and LoRA snapshots and writes them to ``out/record.pt``."""

    def __init__(self, out: str | Path, side: str, method: str, snapshot_every: int) -> None:
        self.out, self.side, self.method = Path(out), side, method
        self.snapshot_every = snapshot_every
        self.clock = Clock()
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}
        self.metrics: list[dict[str, float]] = []

    def start(self, module: torch.nn.Module) -> None:
        self.snapshots[0] = lora_state(module)
        self.clock.start()

    def epoch_done(self, module: torch.nn.Module, metrics: dict[str, float] | None = None) -> None:
        self.clock.tick()
        self.clock.pause()
        epoch = len(self.clock.cpu)
        if epoch % self.snapshot_every == 0:
            self.snapshots[epoch] = lora_state(module)
        if metrics:
            self.metrics.append({"epoch": epoch, **{k: float(v) for k, v in metrics.items()}})
        self.clock.resume()

    def finish(self, module: torch.nn.Module, **extra: Any) -> None:
        epochs = len(self.clock.cpu)
        self.snapshots.setdefault(epochs, lora_state(module))
        self.out.mkdir(parents=True, exist_ok=True)
        torch.save({"side": self.side, "method": self.method, "cpu": self.clock.cpu, "wall": self.clock.wall,
                    "snapshots": self.snapshots, "metrics": self.metrics,
                    "peak_rss_mb": peak_rss_mb(),
                    "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                    "torch_threads": torch.get_num_threads(), **extra}, self.out / "record.pt")
