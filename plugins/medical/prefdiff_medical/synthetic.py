"""A synthetic Medical Segmentation Decathlon task written in the real layout.

``prefdiff medical make-data DIR`` writes ``DIR/dataset.json``,
``DIR/imagesTr/*.nii.gz`` and ``DIR/labelsTr/*.nii.gz`` from MONAI's
``create_test_image_3d`` volumes (spheres of several label classes on a noisy
background), so tests and the demo read data through the same path as a
user's real Decathlon task.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from prefdiff.api import UserError


@dataclass
class SyntheticTask:
    """What :func:`make_task` generates."""

    volumes: int = 12
    """Number of training volumes (image + label pairs)."""
    size: int = 32
    """Side of each axial slice in voxels."""
    depth: int = 24
    """Number of axial slices per volume."""
    num_classes: int = 2
    """Foreground label classes (1..num_classes); 0 is background."""
    objects: int = 6
    """Spheres per volume."""
    noise: float = 0.4
    """Maximum amplitude of the uniform noise added to each image."""
    seed: int = 0
    """Seeds every volume."""
    name: str = "Task90_SyntheticSpheres"
    """Task name written to dataset.json."""

    def __post_init__(self) -> None:
        if self.volumes < 3:
            raise UserError(f"--volumes must be >= 3 (train, validation and test need one each), got {self.volumes}")
        if self.size < 8 or self.depth < 8:
            raise UserError(f"--size and --depth must be >= 8, got {self.size} and {self.depth}")
        if self.num_classes < 1:
            raise UserError(f"--classes must be >= 1, got {self.num_classes}")
        if self.noise < 0:
            raise UserError(f"--noise must be >= 0, got {self.noise}")

    def tag(self) -> str:
        """A short string naming these settings (cache keys)."""
        return (f"v{self.volumes}-s{self.size}-d{self.depth}-k{self.num_classes}-o{self.objects}"
                f"-n{self.noise:g}-seed{self.seed}")


CLASS_NAMES = ("lesion", "organ", "vessel", "cyst", "tumour", "edema", "necrosis", "calcification")


def make_task(directory: str | Path, task: SyntheticTask | None = None) -> Path:
    """Write a synthetic Decathlon task into ``directory`` and return it.

    The folder is written under a temporary name and renamed at the end, so an
    interrupted run never leaves a half-written task that looks complete.
    """
    import nibabel as nib
    import numpy as np
    from monai.data import create_test_image_3d

    task = task or SyntheticTask()
    directory = Path(directory)
    if (directory / "dataset.json").exists():
        raise UserError(f"{directory / 'dataset.json'} already exists; pick an empty folder or delete it")
    blocked = next((p for p in (directory, *directory.parents) if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise UserError(f"cannot write {directory}: {blocked} is a file, not a folder; pick a new folder")
    tmp = directory.parent / f".{directory.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "imagesTr").mkdir(parents=True)
    (tmp / "labelsTr").mkdir()
    rng = np.random.RandomState(task.seed)
    # 1 mm in-plane, 2 mm slices; the affine is a plain RAS scaling.
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    training = []
    prefix = task.name.split("_", 1)[-1].lower()
    # MONAI needs every side larger than a sphere's diameter.
    rad_max = max(3, min(task.size // 4, (min(task.size, task.depth) - 1) // 2))
    for i in range(task.volumes):
        image, label = create_test_image_3d(
            task.size, task.size, task.depth, num_objs=task.objects,
            rad_max=rad_max, rad_min=min(rad_max - 1, max(2, task.size // 10)), noise_max=task.noise,
            num_seg_classes=task.num_classes, random_state=rng)
        name = f"{prefix}_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), str(tmp / "imagesTr" / name))
        nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), str(tmp / "labelsTr" / name))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    labels = {"0": "background", **{str(k): CLASS_NAMES[(k - 1) % len(CLASS_NAMES)]
                                    for k in range(1, task.num_classes + 1)}}
    meta = {
        "name": task.name,
        "description": "Synthetic spheres from MONAI create_test_image_3d (prefdiff medical make-data)",
        "reference": "prefdiff-medical", "licence": "CC0", "release": "1.0",
        "tensorImageSize": "3D", "modality": {"0": "MRI"}, "labels": labels,
        "numTraining": len(training), "numTest": 0, "training": training, "test": [],
        "prefdiff_synthetic": asdict(task),
    }
    (tmp / "dataset.json").write_text(json.dumps(meta, indent=2))
    directory.parent.mkdir(parents=True, exist_ok=True)
    if directory.exists():
        if any(directory.iterdir()):
            shutil.rmtree(tmp, ignore_errors=True)
            raise UserError(f"{directory} exists and is not empty; pick an empty folder")
        directory.rmdir()
    os.replace(tmp, directory)
    return directory
