"""Image-caption folders in Hugging Face's ``imagefolder`` layout, for SFT.

A folder of images with a ``metadata.jsonl`` beside them, one line an image::

    {"file_name": "0001.png", "text": "a red circle left of a blue square"}

(the caption may be under ``caption`` or ``prompt`` instead of ``text``;
``file_name`` is relative to the metadata file's folder). A root holding
``train/``, ``val/`` (or ``validation/``) and ``test/`` subfolders, each with
its own ``metadata.jsonl``, is split by them; any other folder is split by a
hash of each file name (90/5/5).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from prefdiff.durable import read_records
from prefdiff.errors import UserError
from prefdiff.textdata.images import check_resolution, geometry, read_image
from prefdiff.textdata.splits import (SPLIT_NAMES, TEXT_KEYS, check_hashed_split, check_size, check_split,
                                      hash_split, text_field)

METADATA = "metadata.jsonl"


@dataclass(frozen=True)
class Entry:
    """One image of the folder, and where its metadata line is."""

    image: Path
    caption: str
    file_name: str
    line: str  # "FOLDER/metadata.jsonl:N"


def read_metadata(folder: Path) -> list[Entry]:
    """The entries of ``folder/metadata.jsonl``; a clear error names a bad line or a missing image."""
    path = folder / METADATA
    if not path.is_file():
        raise UserError(f"{folder} has no {METADATA}; write one line an image, e.g. "
                        f'{{"file_name": "0001.png", "text": "a caption"}} (Hugging Face imagefolder layout)')
    entries = []
    for number, record in read_records(path):
        key, name = text_field(record), record.get("file_name")
        if not isinstance(name, str) or key is None or not isinstance(record[key], str):
            raise UserError(f"{path}:{number} needs a string file_name and a string caption in one of the "
                            f"fields {', '.join(TEXT_KEYS)}")
        if not (folder / name).is_file():
            raise UserError(f"{path}:{number} names {name}, which is not in {folder}; add the image or "
                            f"delete that line")
        entries.append(Entry(folder / name, record[key], name, f"{path}:{number}"))
    if not entries:
        raise UserError(f"{path} lists no images; write one line an image")
    return entries


class ImageCaptions(Dataset):
    """Images with their captions as ``{"x0": [3, H, W] in [-1, 1], "cond": caption}`` items, with each image's
    ``original_size`` and ``crop_top_left`` (SDXL's size and crop conditioning).

    :param root: the folder (see the module's docstring for its layout).
    :param split: ``train``, ``val`` (or ``validation``) or ``test``.
    :param size: keep at most this many images of the split (None: all).
    :param resolution: images are resized (shorter side) and centre-cropped to this square.
    """

    def __init__(self, root: str | Path, split: str = "train", size: int | None = None,
                 resolution: int = 512) -> None:
        root, split = Path(root), check_split(split)
        self.resolution = check_resolution(resolution)
        if not root.is_dir():
            raise UserError(f"image-caption folder {root} does not exist")
        folders = {s: next((root / n for n in names if (root / n).is_dir()), None)
                   for s, names in SPLIT_NAMES.items()}
        if any(folders.values()):
            if folders[split] is None:
                have = ", ".join(f"{f.name}/" for f in folders.values() if f)
                raise UserError(f"{root} has {have} but no {' or '.join(SPLIT_NAMES[split])}/ folder; add it "
                                f"(or, for val, set --data.val_size 0)")
            entries = read_metadata(folders[split])
        else:
            check_hashed_split(split, f"image-caption folder {root}", "a {0}/ subfolder")
            entries = [e for e in read_metadata(root) if hash_split(e.file_name) == split]
        self.entries = entries[:check_size(size)]

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.entries[index]
        picture = read_image(entry.image, self.resolution, f"{entry.image} (named on {entry.line})")
        return {"x0": picture.pixels, "cond": entry.caption, **geometry(picture)}
