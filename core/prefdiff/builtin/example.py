"""The built-in example field: class-conditioned synthetic textures and the DDPO
image rewards, so the whole pipeline runs with no field plugin installed.

Every hook has a working implementation here for plugin authors to copy.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from prefdiff.api import UserError, hookimpl

PATTERNS = ("horizontal", "vertical", "diagonal", "checker")
#: The example's pretrained base, shipped with prefdiff (configs/example_*.yaml start from it).
SHIPPED = Path(__file__).parent / "bases"
SPLIT_OFFSET = {"train": 0, "val": 1_000_000, "test": 2_000_000}


class SyntheticTextures(Dataset):
    """Striped RGB textures: the class picks the pattern, amplitude and frequency vary.

    Item ``i`` of a split is drawn from a generator seeded by (split, i), so every
    run sees the same data with no files. Images are in [-1, 1].
    """

    def __init__(self, split: str = "train", size: int = 2048, resolution: int = 16, seed: int = 0) -> None:
        if split not in SPLIT_OFFSET:
            raise UserError(f"dataset split must be one of {', '.join(SPLIT_OFFSET)}, got '{split}'")
        if size <= 0:
            raise UserError(f"dataset size must be > 0, got {size}")
        self.split, self.size, self.resolution, self.seed = split, size, resolution, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(self.seed * 7_777_777 + SPLIT_OFFSET[self.split] + index)
        label = int(torch.randint(len(PATTERNS), (1,), generator=g))
        r = self.resolution
        yy, xx = torch.meshgrid(torch.linspace(0, 1, r), torch.linspace(0, 1, r), indexing="ij")
        freq = 1.0 + 3.0 * torch.rand((), generator=g)
        phase = 2 * math.pi * torch.rand((), generator=g)
        coord = {"horizontal": yy, "vertical": xx, "diagonal": (xx + yy) / 2}.get(PATTERNS[label])
        if coord is None:
            wave = torch.sin(2 * math.pi * freq * xx + phase) * torch.sin(2 * math.pi * freq * yy)
        else:
            wave = torch.sin(2 * math.pi * freq * coord + phase)
        amplitude = 0.15 + 0.6 * torch.rand((), generator=g)
        base, accent = torch.rand(3, generator=g) * 1.2 - 0.6, torch.rand(3, generator=g) * 2 - 1
        image = base.view(3, 1, 1) + amplitude * wave * accent.view(3, 1, 1)
        return {"x0": image.clamp(-1, 1), "cond": torch.tensor(label)}


def _jpeg_sizes(images: torch.Tensor, quality: int = 95) -> torch.Tensor:
    """Size in kB of each image saved as JPEG (ddpo-pytorch's measure)."""
    from PIL import Image

    from prefdiff.api import to_uint8

    sizes = []
    for pixels in to_uint8(images).cpu().numpy():
        buffer = io.BytesIO()
        Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).save(
            buffer, format="JPEG", quality=quality)
        sizes.append(buffer.tell() / 1000.0)
    return torch.tensor(sizes, dtype=torch.float32, device=images.device)


def jpeg_compressibility(quality: int = 95):
    """DDPO's compressibility reward (Black et al. 2023): minus the JPEG size in kB."""

    def reward(samples: torch.Tensor, conditions: Any = None):
        size = _jpeg_sizes(samples, quality)
        return -size.to(samples.dtype if samples.is_floating_point() else torch.float32), {"jpeg_kb": size.mean().item()}

    return reward


def jpeg_incompressibility(quality: int = 95):
    """DDPO's incompressibility reward (Black et al. 2023): the JPEG size in kB."""

    def reward(samples: torch.Tensor, conditions: Any = None):
        size = _jpeg_sizes(samples, quality)
        return size.to(samples.dtype if samples.is_floating_point() else torch.float32), {"jpeg_kb": size.mean().item()}

    return reward


def smoothness():
    """Minus the mean absolute difference between neighbouring pixels: a
    differentiable stand-in for compressibility, for reward backpropagation."""

    def reward(samples: torch.Tensor, conditions: Any = None):
        dx = (samples[..., :, 1:] - samples[..., :, :-1]).abs().flatten(1).mean(1)
        dy = (samples[..., 1:, :] - samples[..., :-1, :]).abs().flatten(1).mean(1)
        return -(dx + dy), {}

    return reward


def draw_pattern(cond: torch.Tensor):
    """The labeling page's drawing of a condition: the class's stripe pattern and its name."""
    from PIL import Image, ImageDraw

    label = int(cond)
    r = torch.linspace(0, 1, 64)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    coord = {"horizontal": yy, "vertical": xx, "diagonal": (xx + yy) / 2}.get(PATTERNS[label])
    wave = (torch.sin(2 * math.pi * 3 * xx) * torch.sin(2 * math.pi * 3 * yy) if coord is None
            else torch.sin(2 * math.pi * 3 * coord))
    pixels = ((wave + 1) * 127.5).round().to(torch.uint8).numpy()
    image = Image.new("L", (160, 96), 255)
    image.paste(Image.fromarray(pixels), (0, 0))
    ImageDraw.Draw(image).text((70, 40), PATTERNS[label], fill=0)
    return image


class ClassLabel(torch.nn.Module):
    """The identity on integer class labels (conditioning 'class' embeds them)."""

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return cond.long()


@hookimpl
def prefdiff_register_datasets(register):
    register("synthetic_textures", SyntheticTextures, draw_condition=draw_pattern)


@hookimpl
def prefdiff_register_conditioners(register):
    register("class_label", ClassLabel)


@hookimpl
def prefdiff_register_rewards(register):
    register("jpeg_compressibility", jpeg_compressibility)
    register("jpeg_incompressibility", jpeg_incompressibility)
    register("smoothness", smoothness, differentiable=True)


@hookimpl
def prefdiff_register_benchmarks(register):
    register("example", example_recipe)


def example_recipe(quick: bool = False):
    """The built-in benchmark: textures aligned for JPEG compressibility.

    Budgets were set by measurement on 2 CPU cores (docs/benchmarks.md): DDPO needs
    about 128 samples per update (8 conditions x 16) before its signal beats the
    random walk that small batches add to the policy; Diffusion-DPO helps for about
    30 steps and then drifts (60 steps at the same beta measured worse).
    """
    from prefdiff.api import Recipe

    grad_steps = {"lr": 1e-3, "steps": 30}
    return Recipe(
        domain="example", dataset="synthetic_textures",
        dataset_options={"resolution": 16},
        model={"kind": "unet2d", "sample_size": 16, "channels": 3, "conditioning": "class",
               "num_classes": len(PATTERNS), "block_out_channels": (32, 64), "layers_per_block": 1},
        conditioner="class_label", reward="jpeg_compressibility", judge="jpeg_compressibility",
        judge_note="the training reward, on held-out conditions and noise seeds",
        methods={"dpo": {"beta": 2000.0, **grad_steps}, "kto": {"beta": 2000.0, **grad_steps},
                 "rwr": {"temperature": 0.05, **grad_steps},
                 "d3po": {"lr": 1e-3, "timestep_fraction": 0.5, "steps": 20},
                 "ddpo": {"lr": 1e-3, "samples_per_condition": 16, "timestep_fraction": 0.5,
                          "steps": 15 if quick else 40},
                 "grpo": {"lr": 1e-3, "samples_per_condition": 16, "timestep_fraction": 0.5, "steps": 40},
                 "dpok": {"lr": 1e-3, "samples_per_condition": 16, "timestep_fraction": 0.5,
                          "kl_coef": 1.0, "steps": 40},
                 "draft": {"reward": "smoothness", "k": 2, "drift_coef": 1.0, "lr": 3e-4, "steps": 30}},
        default_methods=["dpo", "ddpo"] if quick else ["rwr", "dpo", "kto", "d3po", "ddpo", "grpo", "dpok",
                                                       "draft"],
        # The same base for --quick and the full run: both align the shipped one.
        pretrain_steps=1000, pretrain_batch=32, align_batch=8, shipped_bases=str(SHIPPED),
        n_eval=64 if quick else 256, num_steps=8, mine_conditions=128 if quick else 256,
        mine_per_condition=4, train_size=4096)
