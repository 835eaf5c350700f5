"""Splits and size caps shared by the text-to-image readers.

A file or folder that does not come split already is split by a hash of each
item's key (the prompt, the image's file name): the same key always lands in
the same split, on every machine and in every run, so a prompt never crosses
from training into evaluation.
"""

from __future__ import annotations

import hashlib

from prefdiff.errors import UserError

SPLITS = ("train", "val", "test")
#: Names a split goes by in file and folder names (Hugging Face calls val "validation"). Pick-a-Pic v2
#: also has ``validation_unique`` and ``test_unique``: one pair per prompt, the held-out prompt sets that
#: evaluations of Pick-a-Pic models sample. Data that is not split already is split into SPLITS only.
SPLIT_NAMES = {"train": ("train",), "val": ("val", "validation"), "test": ("test",),
               "val_unique": ("val_unique", "validation_unique"), "test_unique": ("test_unique",)}
#: Cumulative upper bounds of the hash buckets: 90 % train, 5 % val, 5 % test.
HASH_BOUNDS = (("train", 0.90), ("val", 0.95), ("test", 1.0))

#: The fields a record's text may sit in, in order of preference.
TEXT_KEYS = ("prompt", "caption", "text")


def check_split(split: str) -> str:
    """The canonical split name (``validation`` is ``val``); a clear error for any other."""
    for canonical, names in SPLIT_NAMES.items():
        if split in names:
            return canonical
    raise UserError(f"dataset split must be one of train, val (or validation), test, val_unique (or "
                    f"validation_unique), test_unique; got '{split}'")


def check_hashed_split(split: str, what: str, named: str) -> None:
    """Data that is not split already is split into train, val and test only: a clear error for the others.

    :param named: how the data would hold ``split`` instead, ``{0}`` standing for the split's file name
        (``"a {0}/ subfolder"``).
    """
    if split not in SPLITS:
        raise UserError(f"{what} is not split already, so it has only the splits train, val and test (by a hash "
                        f"of each item); split '{split}' needs {named.format(SPLIT_NAMES[split][-1])}")


def check_size(size: int | None) -> int | None:
    """``size`` caps a dataset's items; None keeps them all."""
    if size is not None and size <= 0:
        raise UserError(f"dataset size must be > 0 (or null for all items), got {size}")
    return size


def hash_split(key: str) -> str:
    """The split ``key`` belongs to: a bucket of its SHA-256, never Python's salted ``hash``."""
    bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64
    return next(split for split, bound in HASH_BOUNDS if bucket < bound)


def text_field(record: dict) -> str | None:
    """The first of :data:`TEXT_KEYS` the record has, or None."""
    return next((key for key in TEXT_KEYS if key in record), None)
