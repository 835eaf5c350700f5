"""`prefdiff medical make-data` and `prefdiff medical train-segmenter` (the commands hook).

Each function's signature is its command line: ``prefdiff medical make-data DIR --volumes 24``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefdiff.api import UserError
from prefdiff_medical.synthetic import SyntheticTask


def make_data(directory: Path, volumes: int = SyntheticTask.volumes, size: int = SyntheticTask.size,
              depth: int = SyntheticTask.depth, classes: int = SyntheticTask.num_classes,
              objects: int = SyntheticTask.objects, noise: float = SyntheticTask.noise,
              seed: int = SyntheticTask.seed) -> None:
    """Write a synthetic Decathlon task (dataset.json, imagesTr/, labelsTr/) in the real NIfTI layout.

    :param directory: the task folder to create (must not exist or be empty).
    :param volumes: training volumes.
    :param size: in-plane side in voxels.
    :param depth: slices per volume.
    :param classes: foreground label classes.
    :param objects: spheres per volume.
    :param noise: maximum noise amplitude.
    :param seed: seeds every volume.
    """
    from prefdiff_medical.synthetic import make_task

    task = SyntheticTask(volumes=volumes, size=size, depth=depth, num_classes=classes, objects=objects,
                         noise=noise, seed=seed)
    out = make_task(Path(directory), task)
    print(f"wrote {task.volumes} volumes to {out} (dataset.json, imagesTr/, labelsTr/)")


def train_segmenter(task: Path, out: Path, arch: Literal["unet", "basicunet"] = "unet", steps: int = 800,
                    batch_size: int = 16, lr: float = 3e-3, seed: int = 1, resolution: int = 32,
                    percentiles: tuple[float, float] = (0.5, 99.5)) -> None:
    """Train a segmenter for the rewards on a task's training split.

    :param task: a Decathlon task folder.
    :param out: the checkpoint to write (.safetensors).
    :param arch: unet (the training reward's) or basicunet (the held-out judge's).
    :param steps: optimizer steps.
    :param batch_size: slices per step.
    :param lr: Adam learning rate.
    :param seed: seeds the weights and the batches.
    :param resolution: in-plane side the slices are resized to.
    :param percentiles: intensity percentiles mapped to [-1, 1], e.g. [0.5, 99.5]; [0, 100] is min-max.
    """
    from prefdiff_medical.segmenters import train_segmenter as train

    out = Path(out)
    if out.is_dir():
        raise UserError(f"{out} is a folder; pass the checkpoint file to write, e.g. {out / 'segmenter.safetensors'}")
    blocked = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise UserError(f"cannot write {out}: {blocked} is a file, not a folder")
    train(task, out, arch=arch, steps=steps, batch_size=batch_size, lr=lr, seed=seed, resolution=resolution,
          percentiles=tuple(percentiles))
    print(f"wrote {out}")
