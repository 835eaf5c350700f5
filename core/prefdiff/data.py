"""Preference data: the JSONL pair format, pair mining from a reward, data modules.

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

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.data import Dataset, Sampler
from torch.utils.data._utils.collate import default_collate

from prefdiff.durable import append_record, read_records
from prefdiff.errors import UserError

WINNERS = ("a", "b", "tie")


# ------------------------------------------------------------ pair file ----


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write a dict of tensors as one safetensors file (CPU, contiguous), creating its folder."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


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

        self.root = Path(pair_file).parent
        self.records = [r for r in read_pairs(pair_file) if r["winner"] != "tie"]
        if not self.records:
            raise UserError(f"pair file {pair_file} holds only ties; DPO needs decided pairs")
        self._load = load_file

    def __len__(self) -> int:
        return len(self.records)

    def _read(self, rel: str) -> dict[str, torch.Tensor]:
        path = (self.root / rel).resolve()
        try:
            return self._load(str(path))
        except Exception as exc:
            raise UserError(f"cannot read {path} named in the pair file: {exc}") from exc

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        a, b = self._read(rec["a"])["sample"], self._read(rec["b"])["sample"]
        x_w, x_l = (a, b) if rec["winner"] == "a" else (b, a)
        cond = rec["prompt"] if "prompt" in rec else tensors_condition(self._read(rec["condition"]))
        return {"x_w": x_w, "x_l": x_l, "cond": cond}


# --------------------------------------------------------------- mining ----


@dataclass
class MinedSamples:
    """N samples per condition with their rewards (AI feedback)."""

    samples: torch.Tensor      # [M, N, ...]
    rewards: torch.Tensor      # [M, N]
    conditions: list[Any]      # M conditions

    @property
    def queries(self) -> int:
        """Reward calls spent mining."""
        return int(self.rewards.numel())


@torch.no_grad()
def mine(denoiser, scheduler, reward, conditions: list[Any], *, per_condition: int, num_steps: int,
         eta: float, seed: int, batch_size: int = 32, guidance_scale: float = 1.0) -> MinedSamples:
    """Sample the model ``per_condition`` times per condition and score every sample."""
    from prefdiff.sampling import sample

    shape = infer_sample_shape(denoiser)
    all_samples, all_rewards = [], []
    flat = [c for c in conditions for _ in range(per_condition)]
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, len(flat), batch_size):
        cond = default_collate(flat[start:start + batch_size])
        noise = torch.randn((len(flat[start:start + batch_size]), *shape), generator=generator)
        uncond = denoiser.null_condition(cond) if guidance_scale != 1.0 else None
        out = sample(denoiser, scheduler, noise, cond, num_steps=num_steps, eta=eta,
                     generator=generator, guidance_scale=guidance_scale, uncond=uncond)
        decoded = denoiser.decode(out.samples)  # pairs hold samples (images), as a labeler sees them
        scores, _ = reward(decoded, cond)
        all_samples.append(decoded)
        all_rewards.append(scores.float())
    samples = torch.cat(all_samples)
    samples = samples.reshape(len(conditions), per_condition, *samples.shape[1:])
    rewards = torch.cat(all_rewards).reshape(len(conditions), per_condition)
    return MinedSamples(samples, rewards, list(conditions))


def write_best_worst_pairs(mined: MinedSamples, out_dir: str | Path, labeler: str,
                           min_gap: float = 0.0) -> Path:
    """Keep the best and worst sample of each condition as a pair; returns the pair file."""
    out_dir = Path(out_dir)
    pair_file = out_dir / "pairs.jsonl"
    kept = 0
    for i, cond in enumerate(mined.conditions):
        best, worst = int(mined.rewards[i].argmax()), int(mined.rewards[i].argmin())
        if mined.rewards[i, best] - mined.rewards[i, worst] <= min_gap:
            continue
        if isinstance(cond, str):
            where = {"prompt": cond}
        else:
            where = {"condition": f"conds/c{i:05d}.safetensors"}
            save_tensors(out_dir / where["condition"], condition_tensors(cond))
        names = []
        for j in (best, worst):
            rel = f"samples/c{i:05d}_{j}.safetensors"
            save_tensors(out_dir / rel, {"sample": mined.samples[i, j]})
            names.append(rel)
        append_pair(pair_file, {"id": f"c{i:05d}-{best}-{worst}", **where,
                                "a": names[0], "b": names[1], "winner": "a", "labeler": labeler,
                                "time": time.time()})
        kept += 1
    if kept == 0:
        raise UserError("pair mining kept no pairs: every condition's samples scored the same; "
                        "mine more samples per condition or check the reward")
    return pair_file


class WeightedSamples(Dataset):
    """Mined samples as SFT targets with their rewards, for reward-weighted SFT."""

    def __init__(self, mined: MinedSamples) -> None:
        self.mined = mined
        self.per = mined.samples.shape[1]

    def __len__(self) -> int:
        return self.mined.samples.shape[0] * self.per

    def __getitem__(self, index: int) -> dict[str, Any]:
        i, j = divmod(index, self.per)
        return {"x0": self.mined.samples[i, j], "cond": self.mined.conditions[i],
                "reward": self.mined.rewards[i, j]}


# ------------------------------------------------------------- sampling ----


class EpochSampler(Sampler[int]):
    """A shuffle fixed by (seed, epoch) and sharded by rank: resumable and DDP-safe.

    Lightning calls ``set_epoch`` on it, so a run resumed from a checkpoint at
    an epoch boundary sees exactly the batches an uninterrupted run sees. With
    ``batch_size`` (per process), each global batch of the shuffle is split
    across the ranks, rank r taking its r-th slice, so ``world_size`` processes
    see the batches one process with a ``world_size`` times larger batch sees.
    """

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 batch_size: int | None = None) -> None:
        if size == 0:
            raise UserError("the dataset is empty; check its root folder and split")
        self.size, self.seed, self.rank, self.world = size, seed, rank, world_size
        self.batch = batch_size or max(1, size // world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=g).tolist()
        step = self.batch * self.world
        mine = [i for start in range(0, len(order) - step + 1, step)
                for i in order[start + self.rank * self.batch:start + (self.rank + 1) * self.batch]]
        return iter(mine)

    def __len__(self) -> int:
        return (self.size // (self.batch * self.world)) * self.batch


def infer_sample_shape(denoiser) -> tuple[int, ...]:
    """The shape of one sample in the model's space (:attr:`prefdiff.models.Denoiser.sample_shape`)."""
    return denoiser.sample_shape


# A collated condition is a tensor, a dict of them, or a list of prompts (text-to-image).


def condition_count(cond: Any) -> int:
    """Batch size of a collated condition."""
    while isinstance(cond, dict):
        cond = next(iter(cond.values()))
    return len(cond) if isinstance(cond, (list, tuple)) else int(cond.shape[0])


def select(cond: Any, index: Any) -> Any:
    """Index or slice a collated condition along the batch (dicts recurse; None stays None)."""
    if cond is None:
        return None
    if isinstance(cond, dict):
        return {k: select(v, index) for k, v in cond.items()}
    if isinstance(cond, (list, tuple)):
        if isinstance(index, slice):
            return list(cond[index])
        if isinstance(index, int):
            return cond[index]
        return [cond[int(i)] for i in torch.as_tensor(index).reshape(-1).tolist()]
    if isinstance(index, torch.Tensor):
        index = index.to(cond.device)
    return cond[index]


def concat(a: Any, b: Any) -> Any:
    """Concatenate two collated conditions along the batch."""
    if isinstance(a, dict):
        return {k: concat(a[k], b[k]) for k in a}
    if isinstance(a, (list, tuple)):
        return [*a, *b]
    return torch.cat([a, b])


def repeat_condition(cond: Any, times: int) -> Any:
    """Repeat each condition ``times`` times along the batch (consecutive copies)."""
    if times == 1:
        return cond
    if isinstance(cond, dict):
        return {k: repeat_condition(v, times) for k, v in cond.items()}
    if isinstance(cond, (list, tuple)):
        return [c for c in cond for _ in range(times)]
    return cond.repeat_interleave(times, dim=0)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of items (dicts of tensors, nested dicts allowed)."""
    return default_collate(items)
