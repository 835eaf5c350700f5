"""Prompt lists: the conditions online methods sample from and mining ranks.

A text file holds one prompt a line; blank lines and lines starting with
``#`` are skipped. A ``.jsonl`` file holds one object a line with the text
in ``prompt`` (or ``caption``, or ``text``) and any metadata beside it::

    {"prompt": "two red circles left of a blue square", "category": "position", "id": 17}

Metadata that every line has, as a string, a number or a boolean for every
line, comes with each item under ``"meta"`` (so a batch collates); other
fields are left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from prefdiff.durable import read_records
from prefdiff.errors import UserError
from prefdiff.textdata.pickapic import pickapic_captions
from prefdiff.textdata.splits import (SPLIT_NAMES, SPLITS, TEXT_KEYS, check_hashed_split, check_size,
                                      check_split, hash_split, text_field)

SUFFIXES = (".txt", ".jsonl")


def _kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return "str" if isinstance(value, str) else None


def _collatable_meta(records: list[dict[str, Any]]) -> list[str]:
    """Fields every record has with values of one kind: those collate into a batch."""
    keys = set(records[0]) if records else set()
    for record in records:
        keys &= set(record)
    return sorted(k for k in keys if _kind(records[0][k]) is not None
                  and all(_kind(r[k]) == _kind(records[0][k]) for r in records))


def read_prompt_file(path: str | Path) -> list[dict[str, Any]]:
    """Every prompt of a text or JSONL file as an item ``{"cond": prompt[, "meta": {...}]}``.

    :raises UserError: the file is missing or holds no prompts, or a JSONL line
        has no text field; the message names the file (and the line).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompt file {path} does not exist; pass a text file with one prompt a line "
                        f"or a .jsonl file with a \"prompt\" field")
    if path.suffix == ".jsonl":
        prompts, fields = [], []
        for number, record in read_records(path):
            key = text_field(record)
            if key is None or not isinstance(record[key], str) or not record[key].strip():
                raise UserError(f"{path}:{number} has no prompt; each line needs a non-empty string in "
                                f"one of the fields {', '.join(TEXT_KEYS)}")
            prompts.append(record.pop(key))
            fields.append(record)
        meta = _collatable_meta(fields)
        items = [{"cond": prompt, **({"meta": {k: f[k] for k in meta}} if meta else {})}
                 for prompt, f in zip(prompts, fields)]
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"prompt file {path} is not UTF-8 text ({exc}); save it as UTF-8") from None
        lines = (line.strip() for line in text.splitlines())
        items = [{"cond": line} for line in lines if line and not line.startswith("#")]
    if not items:
        raise UserError(f"prompt file {path} holds no prompts; write one prompt a line (blank lines and "
                        f"lines starting with # are skipped), or JSONL with a \"prompt\" field")
    return items


def _split_file(folder: Path, split: str) -> Path | None:
    return next((folder / f"{name}{suffix}" for name in SPLIT_NAMES[split] for suffix in SUFFIXES
                 if (folder / f"{name}{suffix}").is_file()), None)


class PromptList(Dataset):
    """Prompts as ``{"cond": prompt}`` items (plus ``"meta"`` from JSONL).

    :param path: a prompt file, split by a hash of each prompt (90/5/5); a
        folder holding one file per split (``train.txt``, ``val.jsonl``, ...); or
        a folder of Pick-a-Pic parquet shards, whose distinct captions are the
        prompts (``test_unique``: one prompt per held-out pair of v2's unique test split).
    :param split: ``train``, ``val`` (or ``validation``), ``test``, or for
        split files and shards also ``val_unique`` and ``test_unique``.
    :param size: keep at most this many prompts of the split (None: all).
    """

    def __init__(self, path: str | Path, split: str = "train", size: int | None = None) -> None:
        split, size, path = check_split(split), check_size(size), Path(path)
        if path.is_dir():
            found = {s: _split_file(path, s) for s in SPLIT_NAMES}
            has_shards = next(path.rglob("*.parquet"), None) is not None
            if has_shards and not any(found.values()):
                self.items = [{"cond": caption} for caption in pickapic_captions(path, split, size)]
                return
            if found[split] is None:
                names = " or ".join(f"{n}{s}" for n in SPLIT_NAMES[split] for s in SUFFIXES)
                have = ", ".join(s for s, f in found.items() if f) or "no split"
                hints = ["add one"]
                if split == "val":
                    hints.append("set --data.val_size 0")
                if split in SPLITS:
                    hints.append("pass a single prompt file to split it by a hash of each prompt")
                shards = (" (its .parquet files are not read: a folder with split files is read by them; give "
                          "the shards a folder of their own)" if has_shards else "")
                raise UserError(f"prompt folder {path} has no {names} (it has {have} files){shards}; "
                                f"{', or '.join(hints)}")
            items = read_prompt_file(found[split])
        else:
            check_hashed_split(split, f"prompt file {path}",
                               "a folder of split files ({0}.txt or {0}.jsonl) or of Pick-a-Pic shards ({0}-*.parquet)")
            items = [item for item in read_prompt_file(path) if hash_split(item["cond"]) == split]
        self.items = items[:size]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]
