"""The recognisers behind the training reward and the held-out judge: small detectors of the world.

A recogniser reads an image ``[B, 3, H, W]`` in [-1, 1] and says, for every
object kind of :data:`~prefdiff_t2i.world.KINDS`, how many there are (logits
over 0 .. MAX_COUNT) and where their centre is (x, y in [0, 1]):
``(count_logits [B, K, MAX_COUNT + 1], centres [B, K, 2])``. Two architectures:

- ``conv`` (the training reward's): a VGG-style trunk; counts from a dense head,
  centres from a spatial soft-argmax over one heat map per kind;
- ``coord`` (the held-out judge's): CoordConv input channels (Liu et al. 2018),
  strided convolutions with GroupNorm, and centres regressed directly.

Both train on scenes drawn from the world's ground truth (every prompt, held-out
combinations included, plus random scenes of 0-4 objects), with noise and blur
augmentation so decoded samples are in their range. They are different networks
with different seeds on different images; the judge is never queried in training.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from prefdiff_t2i import world

log = logging.getLogger("prefdiff.t2i")

ARCHS = ("conv", "coord")
K = len(world.KINDS)
C = world.MAX_COUNT + 1


class ConvRecogniser(nn.Module):
    """VGG-style trunk; dense count head; per-kind heat maps and a soft-argmax for the centres."""

    def __init__(self, resolution: int = 32, width: int = 24) -> None:
        super().__init__()
        w = width
        def conv(i: int, o: int) -> list[nn.Module]:
            return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]

        self.trunk = nn.Sequential(*conv(3, w), *conv(w, w), nn.MaxPool2d(2), *conv(w, 2 * w), *conv(2 * w, 2 * w),
                                   nn.MaxPool2d(2), *conv(2 * w, 64))
        side = resolution // 4
        self.counts = nn.Sequential(nn.Flatten(), nn.Linear(64 * side * side, 256), nn.ReLU(), nn.Linear(256, K * C))
        self.heat = nn.Conv2d(64, K, 1)
        grid = (torch.arange(side, dtype=torch.float32) + 0.5) / side
        self.register_buffer("grid", grid, persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        logits = self.counts(h).view(-1, K, C)
        weights = self.heat(h).flatten(2).softmax(-1).view(*h.shape[:1], K, *h.shape[2:])
        cx = (weights.sum(2) * self.grid).sum(-1)
        cy = (weights.sum(3) * self.grid).sum(-1)
        return logits, torch.stack([cx, cy], -1)


class CoordRecogniser(nn.Module):
    """CoordConv input, a 5x5 stem, SiLU, and an MLP that regresses counts and centres directly."""

    def __init__(self, resolution: int = 32, width: int = 20) -> None:
        super().__init__()
        w = width

        def block(i: int, o: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(i, o, 3, stride=stride, padding=1), nn.BatchNorm2d(o), nn.SiLU()]

        self.trunk = nn.Sequential(nn.Conv2d(5, w, 5, padding=2), nn.BatchNorm2d(w), nn.SiLU(), nn.MaxPool2d(2),
                                   *block(w, 2 * w, 1), *block(2 * w, 2 * w, 1), nn.MaxPool2d(2),
                                   *block(2 * w, 3 * w, 1))
        side = resolution // 4
        features = 3 * w * side * side
        self.counts = nn.Sequential(nn.Flatten(), nn.Linear(features, 256), nn.SiLU(), nn.Linear(256, K * C))
        self.centres = nn.Sequential(nn.Flatten(), nn.Linear(features, 128), nn.SiLU(), nn.Linear(128, K * 2))
        ramp = torch.linspace(-1, 1, resolution)
        self.register_buffer("coords", torch.stack(torch.meshgrid(ramp, ramp, indexing="xy")), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([x, self.coords.expand(x.shape[0], -1, -1, -1).to(x)], 1)
        h = self.trunk(x)
        return self.counts(h).view(-1, K, C), self.centres(h).view(-1, K, 2).sigmoid()


def build(arch: str, resolution: int = 32) -> nn.Module:
    """A fresh recogniser of ``arch`` (``conv`` or ``coord``)."""
    if arch not in ARCHS:
        raise ValueError(f"recogniser arch must be one of {ARCHS}, got {arch!r}")
    return ConvRecogniser(resolution) if arch == "conv" else CoordRecogniser(resolution)


# ------------------------------------------------------------- targets ----


def targets(objects: list[dict], resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground truth of one scene: counts ``[K]`` (capped at MAX_COUNT) and mean centres ``[K, 2]`` in [0, 1]."""
    counts = torch.zeros(K, dtype=torch.long)
    centres = torch.zeros(K, 2)
    for o in objects:
        k = world.kind_index(o["colour"], o["shape"])
        counts[k] += 1
        centres[k] += torch.tensor([o["x"], o["y"]]) / resolution
    present = counts > 0
    centres[present] /= counts[present].unsqueeze(-1).float()
    return counts.clamp(max=world.MAX_COUNT), centres


def scenes(n: int, seed: int, resolution: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` recogniser training scenes: prompts of every split (a third counting, a third
    position) and a third random scenes; returns images, counts and centres."""
    rng = random.Random(seed)
    prompts = world.all_prompts()
    counting = [p for p in prompts if p["task"] == "counting"]
    position = [p for p in prompts if p["task"] == "position"]
    images, counts, centres = [], [], []
    for i in range(n):
        if i % 3 == 2:
            objects = world.random_scene(rng, resolution)
        else:
            objects = world.scene_for(rng.choice(counting if i % 3 == 0 else position), rng, resolution)
        images.append(world.to_tensor(world.draw(objects, resolution)))
        c, xy = targets(objects, resolution)
        counts.append(c)
        centres.append(xy)
    return torch.stack(images), torch.stack(counts), torch.stack(centres)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Blur and noise of random strength: decoded samples are softer and noisier than drawings."""
    b = x.shape[0]
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    mix = torch.rand(b, 1, 1, 1, generator=g) * 0.8
    x = (1 - mix) * x + mix * blur
    x = x + torch.randn(x.shape, generator=g) * torch.rand(b, 1, 1, 1, generator=g) * 0.15
    return x.clamp(-1.2, 1.2)


def loss_fn(logits: torch.Tensor, centres: torch.Tensor, counts: torch.Tensor,
            true_centres: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on every kind's count, plus squared error of the centres of present kinds."""
    ce = F.cross_entropy(logits.reshape(-1, C), counts.reshape(-1))
    present = (counts > 0).float().unsqueeze(-1)
    mse = ((centres - true_centres) ** 2 * present).sum() / present.sum().clamp(min=1)
    return ce + 20.0 * mse


def train(arch: str, out: Path, *, steps: int, seed: int, scenes_n: int = 6000, batch: int = 64,
          lr: float = 2e-3, resolution: int = 32) -> dict[str, float]:
    """Train a recogniser on fresh scenes of ``seed`` and write it to ``out`` (.safetensors).

    Returns its count accuracy and centre error on 512 held-back scenes of another seed.
    """
    from safetensors.torch import save_file

    start = time.perf_counter()
    torch.manual_seed(seed)
    net = build(arch, resolution)
    images, counts, centres = scenes(scenes_n, seed, resolution)
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.15)
    net.train()
    for _ in range(steps):
        idx = torch.randint(len(images), (batch,), generator=g)
        logits, xy = net(augment(images[idx], g))
        loss = loss_fn(logits, xy, counts[idx], centres[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    net.eval()
    stats = evaluate(net, *scenes(512, seed + 1_000_003, resolution))
    stats["wall_s"] = round(time.perf_counter() - start, 1)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp),
              metadata={"arch": arch, "resolution": str(resolution), "stats": json.dumps(stats)})
    tmp.replace(out)
    log.info(f"recogniser {arch} (seed {seed}): {steps} steps in {stats['wall_s']:.0f} s, "
             f"count accuracy {stats['count_accuracy']:.3f}, centre error {stats['centre_error']:.3f}")
    return stats


@torch.no_grad()
def evaluate(net: nn.Module, images: torch.Tensor, counts: torch.Tensor, centres: torch.Tensor) -> dict[str, float]:
    """Count accuracy over every kind of every scene, whole-scene accuracy and mean centre error."""
    logits, xy = net(images)
    right = logits.argmax(-1) == counts
    present = counts > 0
    error = (xy - centres).norm(dim=-1)[present].mean()
    return {"count_accuracy": float(right.float().mean()), "scene_accuracy": float(right.all(1).float().mean()),
            "centre_error": float(error)}


_LOADED: dict[tuple[str, float], nn.Module] = {}


def load(path: str | Path) -> nn.Module:
    """A trained recogniser (frozen, eval mode), loaded once per process."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from prefdiff.api import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"recogniser checkpoint {path} does not exist; run `prefdiff bench t2i` (its prepare "
                        f"step trains the recognisers) or pass the checkpoint it wrote")
    key = (str(path.resolve()), path.stat().st_mtime)
    if key not in _LOADED:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        net = build(meta.get("arch", "conv"), int(meta.get("resolution", 32)))
        net.load_state_dict(load_file(str(path)))
        _LOADED[key] = net.eval().requires_grad_(False)
    return _LOADED[key]


def architecture(path: str | Path) -> str:
    """The architecture a checkpoint holds."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return (f.metadata() or {}).get("arch", "conv")
