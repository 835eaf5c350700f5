"""2-D slices with their label masks from a Medical Segmentation Decathlon task folder.

A task folder holds ``dataset.json`` and the NIfTI volumes it lists under
``training`` (``imagesTr/*.nii.gz`` with ``labelsTr/*.nii.gz``). Each volume is
read with MONAI dictionary transforms (LoadImaged, EnsureChannelFirstd,
Orientationd to RAS, percentile intensity scaling to [-1, 1], in-plane resize)
and cut into axial slices. Volumes, never slices, are split into train,
validation and held-out test, so no patient is seen on both sides.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from prefdiff.api import UserError

SPLITS = ("train", "val", "test")
MAKE_DATA = "prefdiff medical make-data DIR"


# ------------------------------------------------------------ task folder ----


def read_task(root: str | Path) -> dict[str, Any]:
    """Parse and check ``root/dataset.json``; returns it with absolute file paths.

    Adds ``"classes"`` (the declared label values, sorted) and ``"root"``.
    """
    root = Path(root)
    meta_path = root / "dataset.json"
    if not root.is_dir():
        raise UserError(f"task folder {root} does not exist; pass the folder that holds dataset.json "
                        f"or write a synthetic one with `{MAKE_DATA}`")
    if not meta_path.is_file():
        raise UserError(f"{meta_path} is missing; a Decathlon task folder needs it "
                        f"(write a synthetic task with `{MAKE_DATA}`)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{meta_path} does not parse as JSON ({exc}); fix the file or re-download the task") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("training"), list):
        raise UserError(f"{meta_path} has no 'training' list of {{image, label}} records; "
                        f"fix the file or re-download the task")
    labels = meta.get("labels")
    try:
        classes = sorted(int(k) for k in labels)
    except (TypeError, ValueError):
        raise UserError(f"{meta_path} 'labels' must map label values to names, like "
                        f'{{"0": "background", "1": "tumour"}}; got {labels!r}') from None
    if not classes or classes[0] != 0 or classes != list(range(len(classes))):
        raise UserError(f"{meta_path} 'labels' must declare 0 (background) and consecutive classes "
                        f"1..K; got {classes}")
    images_dir = root / "imagesTr"
    if not images_dir.is_dir() or not any(images_dir.iterdir()):
        state = "is missing" if not images_dir.is_dir() else "is empty"
        raise UserError(f"{images_dir} {state}; copy the task's training images there "
                        f"or write a synthetic task with `{MAKE_DATA}`")
    records = []
    for number, rec in enumerate(meta["training"]):
        if not isinstance(rec, dict) or "image" not in rec or "label" not in rec:
            raise UserError(f"{meta_path} training[{number}] is not an {{image, label}} record; fix the file")
        paths = {k: (root / rec[k]).resolve() for k in ("image", "label")}
        for key, path in paths.items():
            if not path.is_file():
                raise UserError(f"{path} ({key} of training[{number}] in {meta_path}) does not exist; "
                                f"restore the file or remove the record from dataset.json")
        records.append({k: str(v) for k, v in paths.items()})
    if len(records) < 3:
        raise UserError(f"{meta_path} lists {len(records)} training volume(s); train, validation and "
                        f"test need at least 3")
    return {**meta, "training": records, "classes": classes, "root": str(root)}


def split_volumes(records: list[dict[str, str]], split: str, val_fraction: float = 0.15,
                  test_fraction: float = 0.15, seed: int = 0) -> list[dict[str, str]]:
    """The volumes of one split: a seeded shuffle of the sorted records, cut by volume."""
    if split not in SPLITS:
        raise UserError(f"dataset split must be one of {', '.join(SPLITS)}, got '{split}'")
    ordered = sorted(records, key=lambda r: r["image"])
    order = torch.randperm(len(ordered), generator=torch.Generator().manual_seed(seed)).tolist()
    n = len(ordered)
    n_test = max(1, round(n * test_fraction))
    n_val = max(1, round(n * val_fraction))
    if n_test + n_val >= n:
        raise UserError(f"{n} volumes leave none for training with val_fraction={val_fraction} and "
                        f"test_fraction={test_fraction}; add volumes or lower the fractions")
    picks = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    return [ordered[i] for i in sorted(picks[split])]


# ---------------------------------------------------------------- volumes ----


def _transforms(resolution: int, percentiles: tuple[float, float]):
    from monai.transforms import (EnsureChannelFirstd, LoadImaged, Orientationd, Resized,
                                  ScaleIntensityRangePercentilesd)

    # One LoadImaged per key so a failure names the file that caused it.
    load = [LoadImaged(keys="image", image_only=True, reader="NibabelReader"),
            LoadImaged(keys="label", image_only=True, reader="NibabelReader")]
    rest = [EnsureChannelFirstd(keys=("image", "label")),
            Orientationd(keys=("image", "label"), axcodes="RAS",
                        labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            ScaleIntensityRangePercentilesd(keys="image", lower=percentiles[0], upper=percentiles[1],
                                            b_min=-1.0, b_max=1.0, clip=True),
            Resized(keys="image", spatial_size=(resolution, resolution, -1), mode="area"),
            Resized(keys="label", spatial_size=(resolution, resolution, -1), mode="nearest")]
    return load, rest


@lru_cache(maxsize=256)
def _load_volume(image: str, label: str, stamp: tuple, resolution: int, modality: int,
                 classes: tuple[int, ...], percentiles: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image [H, W, D] float in [-1, 1], label [H, W, D] float class index)`` of one volume."""
    load, rest = _transforms(resolution, percentiles)
    data: dict[str, Any] = {"image": image, "label": label}
    for transform, key in zip(load, ("image", "label")):
        try:
            data = transform(data)
        except Exception as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{data[key]} cannot be read as NIfTI ({reason[:120]}); the file is corrupt "
                            f"or truncated: re-download or re-create it") from None
    img, lab = data["image"], data["label"]
    if img.ndim not in (3, 4) or lab.ndim != 3:
        raise UserError(f"{image} has shape {tuple(img.shape)} and {label} {tuple(lab.shape)}; expected a 3-D "
                        f"volume (or 4-D with modalities last) and a 3-D label; re-export them")
    if tuple(img.shape[:3]) != tuple(lab.shape):
        raise UserError(f"{image} has shape {tuple(img.shape[:3])} but its label {label} has shape "
                        f"{tuple(lab.shape)}; pair each image with the label of the same volume")
    values = torch.unique(_plain(lab))
    undeclared = sorted({float(v) for v in values} - {float(c) for c in classes})
    if undeclared:
        shown = ", ".join(f"{v:g}" for v in undeclared[:5])
        raise UserError(f"{label} holds label value(s) {shown} that dataset.json does not declare "
                        f"(declared: {', '.join(map(str, classes))}); add them to 'labels' or fix the label")
    data = rest[0](data)
    if data["image"].shape[0] > 1:  # multi-modal task: keep one modality
        if modality >= data["image"].shape[0]:
            raise UserError(f"{image} has {data['image'].shape[0]} modalities; dataset option modality={modality} "
                            f"is out of range")
        data["image"] = data["image"][modality:modality + 1]
    bad = int((~torch.isfinite(_plain(data["image"]))).sum())
    if bad:  # one NaN makes the percentiles, hence the whole volume, NaN: a model trained on it is NaN
        raise UserError(f"{image} holds {bad} NaN or infinite voxel(s); fill them (e.g. with the background "
                        f"value) or leave the volume out of dataset.json")
    for transform in rest[1:]:
        data = transform(data)
    return _plain(data["image"])[0].float(), _plain(data["label"])[0].round().float()


def _plain(t: Any) -> torch.Tensor:
    # A MetaTensor carries its affine along; the slices need only the values.
    return t.as_tensor() if hasattr(t, "as_tensor") else torch.as_tensor(t)


def load_volume(record: dict[str, str], resolution: int, classes: list[int], modality: int = 0,
                percentiles: tuple[float, float] = (0.5, 99.5)):
    """Read one ``{image, label}`` record through the MONAI transforms (memoised per file version)."""
    stamp = tuple((Path(p).stat().st_mtime_ns, Path(p).stat().st_size) for p in (record["image"], record["label"]))
    return _load_volume(record["image"], record["label"], stamp, resolution, modality, tuple(classes),
                        tuple(float(p) for p in percentiles))


# ---------------------------------------------------------------- dataset ----


class DecathlonSlices(Dataset):
    """Axial 2-D slices of a Decathlon task with their label masks.

    Items are ``{"x0": [1, R, R] in [-1, 1], "cond": [1, R, R] float class indices}``.

    :param root: the task folder (holds dataset.json).
    :param split: train, val or test; volumes are split, never slices.
    :param size: serve at most this many slices (the first of the split).
    :param resolution: in-plane side R after resizing.
    :param modality: which channel of a multi-modal image to keep.
    :param percentiles: intensity percentiles mapped to -1 and 1 per volume (clipped
        outside); (0.5, 99.5) suits MR and CT, (0, 100) is plain min-max scaling.
    :param min_foreground: keep slices with at least this many labelled pixels
        (after resizing); 0 keeps every slice.
    :param val_fraction: fraction of volumes for validation (at least one).
    :param test_fraction: fraction of volumes held out for testing (at least one).
    :param seed: seeds the volume split.
    """

    def __init__(self, root: str | Path | None = None, split: str = "train", size: int | None = None,
                 resolution: int = 32, modality: int = 0, percentiles: tuple[float, float] = (0.5, 99.5),
                 min_foreground: int = 1,
                 val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0) -> None:
        if root is None:
            raise UserError(f"dataset 'decathlon' needs the dataset option root (a Decathlon task folder); "
                            f"write a synthetic one with `{MAKE_DATA}`")
        if resolution < 8:
            raise UserError(f"dataset option resolution must be >= 8, got {resolution}")
        if len(percentiles) != 2 or not 0 <= percentiles[0] < percentiles[1] <= 100:
            raise UserError(f"dataset option percentiles must be two numbers 0 <= low < high <= 100, got {percentiles}")
        if size is not None and size <= 0:
            raise UserError(f"dataset option size must be > 0, got {size}")
        task = read_task(root)
        self.root, self.split, self.resolution = Path(root), split, resolution
        self.classes = task["classes"]
        self.num_classes = len(self.classes) - 1
        self.records = split_volumes(task["training"], split, val_fraction, test_fraction, seed)
        self.volumes = [Path(r["image"]).name for r in self.records]
        self.images, self.labels, self.index = [], [], []
        for v, record in enumerate(self.records):
            image, label = load_volume(record, resolution, self.classes, modality, percentiles)
            self.images.append(image)
            self.labels.append(label)
            counts = (label > 0).flatten(0, 1).sum(0)
            self.index.extend((v, k) for k in range(label.shape[-1]) if counts[k] >= min_foreground)
        if size is not None:
            self.index = self.index[:size]
        if not self.index:
            raise UserError(f"split '{split}' of {root} has no slice with >= {min_foreground} labelled pixels; "
                            f"lower the dataset option min_foreground or check the labels")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        v, k = self.index[i]
        return {"x0": self.images[v][..., k].unsqueeze(0).clone(), "cond": self.labels[v][..., k].unsqueeze(0).clone()}

    def volume_of(self, i: int) -> str:
        """File name of the volume item ``i`` was cut from."""
        return self.volumes[self.index[i][0]]

    def draw(self, rows: dict[str, torch.Tensor], cond: torch.Tensor, png_path: str | Path,
             input_cond: torch.Tensor | None = None) -> None:
        """`prefdiff sample` and `prefdiff edit`'s figure: the conditioning masks above each labelled row;
        an edit towards another item's mask (``input_cond`` the input's own) shows both, as the benchmark's."""
        from prefdiff_medical.figures import render

        render(rows, cond if input_cond is None else {"mask": input_cond, "edited mask": cond}, Path(png_path),
               every=True)
