"""The shapes world on disk: an imagefolder with ``metadata.jsonl`` per split, and prompt lists.

``prefdiff t2i make-data DIR`` writes::

    DIR/world.json                what was generated (sizes, seed, the held-out combinations)
    DIR/train/metadata.jsonl      {"file_name": "00000.png", "text": "two red circles",
                                   "task": "counting", "colour": "red", "shape": "circle", "count": 2,
                                   "objects": [{"colour": "red", "shape": "circle", "x": 9.1, "y": 20.4, "size": 8.3}, ...]}
    DIR/train/00000.png ...       RGB images (the Hugging Face ``imagefolder`` convention)
    DIR/val/..., DIR/test/...
    DIR/prompts/train.txt         one caption per line
    DIR/prompts/train.jsonl       {"prompt": "two red circles", "task": "counting", ...} (GenEval-style metadata)

:class:`ShapesCaptions` (dataset ``t2i_shapes``) reads a split back as items
``{"x0": [3, H, W] in [-1, 1], "cond": caption}``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from prefdiff.api import UserError

from prefdiff_t2i import world

SPLITS = ("train", "val", "test")
ATTRIBUTE_KEYS = ("task", "colour", "shape", "count", "relation", "colour2", "shape2")


@dataclass
class ShapesData:
    """What :func:`make_dataset` writes."""

    train: int = 6000
    """Training images (captions of training prompts only)."""
    val: int = 256
    """Validation images (held-out validation combinations)."""
    test: int = 512
    """Test images (held-out test combinations): the real-data reference and the drift's real set."""
    resolution: int = 32
    """Image side in pixels."""
    seed: int = 0
    """Seeds every scene."""

    def __post_init__(self) -> None:
        for split in SPLITS:
            if getattr(self, split) < 1:
                raise UserError(f"--{split} must be >= 1, got {getattr(self, split)}")
        if not 16 <= self.resolution <= 256:
            raise UserError(f"--resolution must be in [16, 256], got {self.resolution}")

    def tag(self) -> str:
        """A short string naming these settings (cache folders)."""
        return f"n{self.train}-{self.val}-{self.test}-r{self.resolution}-seed{self.seed}"


def split_prompts(split: str, n: int, rng: random.Random) -> list[dict]:
    """``n`` prompts of a split, counting and position alternating. Training draws at random;
    validation and test cycle through their prompts in a seeded order, so every held-out
    combination is evaluated about equally often."""
    prompts = world.prompts_of(split)
    by_task = {t: [p for p in prompts if p["task"] == t] for t in ("counting", "position")}
    if split == "train":
        return [rng.choice(by_task["counting" if i % 2 == 0 else "position"]) for i in range(n)]
    for group in by_task.values():
        rng.shuffle(group)
    order = []
    for i in range(n):
        group = by_task["counting" if i % 2 == 0 else "position"]
        order.append(group[(i // 2) % len(group)])
    return order


def make_dataset(directory: str | Path, spec: ShapesData | None = None) -> Path:
    """Write the world's splits and prompt lists into ``directory`` (written aside, then renamed)."""
    from PIL import Image

    spec = spec or ShapesData()
    directory = Path(directory)
    if (directory / "world.json").exists():
        raise UserError(f"{directory / 'world.json'} already exists; pick an empty folder or delete it")
    blocked = next((p for p in (directory, *directory.parents) if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise UserError(f"cannot write {directory}: {blocked} is a file, not a folder; pick a new folder")
    if directory.exists() and any(directory.iterdir()):
        raise UserError(f"{directory} is not empty; pick an empty folder")
    tmp = directory.parent / f".{directory.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "prompts").mkdir(parents=True)
    for s, split in enumerate(SPLITS):
        rng = random.Random(spec.seed * 1_000_003 + s)
        folder = tmp / split
        folder.mkdir()
        lines = []
        for i, prompt in enumerate(split_prompts(split, getattr(spec, split), rng)):
            objects = world.scene_for(prompt, rng, spec.resolution)
            name = f"{i:05d}.png"
            Image.fromarray(world.draw(objects, spec.resolution)).save(folder / name)
            lines.append(json.dumps({"file_name": name, "text": world.caption(prompt), **prompt, "objects": objects}))
        (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
        unique = [p for p in world.prompts_of(split)]
        (tmp / "prompts" / f"{split}.txt").write_text("\n".join(world.caption(p) for p in unique) + "\n")
        (tmp / "prompts" / f"{split}.jsonl").write_text(
            "\n".join(json.dumps({"prompt": world.caption(p), **p}) for p in unique) + "\n")
    info = {"format": 1, **asdict(spec), "colours": world.COLOURS, "shapes": world.SHAPES,
            "held_out": {split: [world.caption(p) for p in world.prompts_of(split)] for split in ("val", "test")}}
    (tmp / "world.json").write_text(json.dumps(info, indent=2))
    directory.parent.mkdir(parents=True, exist_ok=True)
    if directory.exists():
        directory.rmdir()
    os.replace(tmp, directory)
    return directory


def read_metadata(folder: Path) -> list[dict[str, Any]]:
    """The records of one imagefolder split; one clear error for a missing or malformed file."""
    path = folder / "metadata.jsonl"
    if not path.is_file():
        raise UserError(f"{path} does not exist; write the data with `prefdiff t2i make-data DIR` and pass "
                        f"root=DIR (the folder holding train/, val/ and test/)")
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            record["file_name"], record["text"]  # noqa: B018 (both are required)
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path} line {n} is not a record with 'file_name' and 'text' "
                            f"({type(exc).__name__}: {exc}); re-write the data with make-data") from None
        records.append(record)
    return records


class ShapesCaptions(Dataset):
    """One split of a make-data folder: ``{"x0": image [3, H, W] in [-1, 1], "cond": caption}``.

    :param root: the folder make-data wrote.
    :param split: ``train``, ``val`` or ``test``.
    :param size: keep the first ``size`` items (all when None).

    The images are read once, on construction (a few MB).
    """

    def __init__(self, root: str | Path, split: str = "train", size: int | None = None) -> None:
        import numpy as np
        from PIL import Image

        if split not in SPLITS:
            raise UserError(f"dataset split must be one of {', '.join(SPLITS)}, got '{split}'")
        if size is not None and size <= 0:
            raise UserError(f"dataset size must be > 0, got {size}")
        folder = Path(root) / split
        self.records = read_metadata(folder)[:size]
        images = []
        for record in self.records:
            path = folder / record["file_name"]
            try:
                with Image.open(path) as image:
                    images.append(np.asarray(image.convert("RGB")))
            except OSError as exc:
                raise UserError(f"cannot read {path} named in {folder / 'metadata.jsonl'} ({exc}); "
                                f"re-write the data with make-data") from None
        self.images = torch.from_numpy(np.stack(images)) if images else torch.zeros(0, 1, 1, 3, dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        x0 = self.images[index].permute(2, 0, 1).float() / 127.5 - 1.0
        return {"x0": x0, "cond": self.records[index]["text"]}

    def attributes(self, index: int) -> dict[str, Any]:
        """The prompt attributes recorded for an item."""
        return {k: self.records[index][k] for k in ATTRIBUTE_KEYS if k in self.records[index]}

    def draw(self, rows: dict[str, torch.Tensor], cond: list[str], png_path: str | Path) -> None:
        """`prefdiff sample` and `prefdiff edit`'s figure: the prompts above each labelled row of samples."""
        from prefdiff_t2i.figures import render

        render(rows, cond, Path(png_path), title="prompts (top) and their samples")
