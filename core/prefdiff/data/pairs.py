"""The JSONL pair format: human labels (`prefdiff label`) and AI labels (mining) share it.

A pair file holds one JSON object per line::

    {"id": "c00012-0-3", "condition": "conds/c00012.safetensors",
     "a": "samples/c00012_0.safetensors", "b": "samples/c00012_3.safetensors",
     "winner": "a", "labeler": "reward:jpeg_compressibility", "time": 1764145000.0}

Paths are relative to the file's folder; each .safetensors file holds the
tensors of one condition (its keys) or one sample (key ``"sample"``). A
text-to-image pair has ``"prompt": "..."`` instead of ``"condition"``.
``winner`` is ``"a"``, ``"b"`` or ``"tie"``. Human labels (``prefdiff label``)
and AI labels (mining, below) share the format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from prefdiff.durable import append_record, atomic_write_bytes, read_records
from prefdiff.errors import UserError

WINNERS = ("a", "b", "tie")


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write a dict of tensors as one safetensors file (CPU, contiguous), creating its folder.

    The file is replaced whole (:func:`prefdiff.durable.atomic_write_bytes`): a crash or a full
    disk leaves the old file or the new one, never a torn one that a pair line could name.
    """
    from safetensors.torch import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))


def condition_tensors(cond: Any) -> dict[str, torch.Tensor]:
    """A condition as a flat dict of tensors, for a safetensors file."""
    if isinstance(cond, dict):
        return {k: torch.as_tensor(v) for k, v in cond.items()}
    return {"cond": torch.as_tensor(cond)}


def tensors_condition(tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`condition_tensors`."""
    return tensors["cond"] if set(tensors) == {"cond"} else dict(tensors)


def append_pair(pair_file: Path, record: dict[str, Any]) -> None:
    """Append one record as a whole line, durable before returning (:func:`prefdiff.durable.append_record`:
    a torn last line left by a crash is moved aside first, never appended to)."""
    append_record(pair_file, record)


def read_pairs(pair_file: str | Path) -> list[dict[str, Any]]:
    """Read and validate a pair file; a clear error names the line that is wrong."""
    pair_file = Path(pair_file)
    if not pair_file.is_file():
        raise UserError(f"pair file {pair_file} does not exist; mine pairs with `prefdiff bench` "
                        f"or label them with `prefdiff label`")
    records = []
    for number, rec in read_records(pair_file):
        missing = [k for k in ("a", "b", "winner") if k not in rec]
        if "condition" not in rec and "prompt" not in rec:
            missing.insert(0, "condition")
        if missing:
            raise UserError(f"{pair_file}:{number} lacks {', '.join(missing)}; each line needs "
                            f"condition (or prompt), a, b and winner")
        if rec["winner"] not in WINNERS:
            raise UserError(f"{pair_file}:{number} has winner {rec['winner']!r}; use one of {WINNERS}")
        records.append(rec)
    if not records:
        raise UserError(f"pair file {pair_file} holds no pairs; label or mine some first")
    return records


class PairDataset(Dataset):
    """Decided pairs from a pair file as ``{"x_w", "x_l", "cond"}`` items (ties are dropped)."""

    def __init__(self, pair_file: str | Path) -> None:
        from safetensors.torch import load_file

        self.pair_file = Path(pair_file)
        self.root = self.pair_file.parent
        self.records = [r for r in read_pairs(pair_file) if r["winner"] != "tie"]
        if not self.records:
            raise UserError(f"pair file {pair_file} holds only ties; DPO needs decided pairs")
        self._load = load_file

    def __len__(self) -> int:
        return len(self.records)

    def _read(self, rec: dict[str, Any], key: str) -> dict[str, torch.Tensor]:
        path = (self.root / rec[key]).resolve()
        fix = (f"re-create it (mine or label the pairs again), or delete the line of pair "
               f"'{rec.get('id', rec[key])}' from {self.pair_file}")
        try:
            tensors = self._load(str(path))
        except FileNotFoundError:
            raise UserError(f"{path}, named as '{key}' in {self.pair_file}, does not exist; {fix}") from None
        except Exception as exc:  # safetensors raises its own SafetensorError for a torn or foreign file
            raise UserError(f"{path}, named as '{key}' in {self.pair_file}, is truncated or not a safetensors "
                            f"file ({' '.join(str(exc).split())[:120]}); {fix}") from None
        if key != "condition" and "sample" not in tensors:
            raise UserError(f"{path}, named as '{key}' in {self.pair_file}, holds no 'sample' tensor (it has "
                            f"{', '.join(sorted(tensors)) or 'none'}); {fix}")
        return tensors

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        a, b = self._read(rec, "a")["sample"], self._read(rec, "b")["sample"]
        x_w, x_l = (a, b) if rec["winner"] == "a" else (b, a)
        cond = rec["prompt"] if "prompt" in rec else tensors_condition(self._read(rec, "condition"))
        return {"x_w": x_w, "x_l": x_l, "cond": cond}
