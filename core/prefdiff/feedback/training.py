"""`prefdiff reward-model train`: fit the Bradley-Terry reward model on a pair file.

Pairs are split by pair id (all labels of one pair fall on the same side), a
seeded fraction held out; the report gives the held-out pair accuracy (the
model ranks the winner higher) with a Wilson 95% interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prefdiff.errors import UserError
from prefdiff.feedback.reward_model import (PreferenceNet, RewardModelConfig, bradley_terry_loss, condition_mode,
                                            save_reward_model)

TARGET = {"a": 1.0, "b": 0.0, "tie": 0.5}


@dataclass
class PairTensors:
    """Labelled pairs as stacked tensors."""

    a: torch.Tensor
    b: torch.Tensor
    cond: Any
    target: torch.Tensor
    pair_ids: list[str]

    def take(self, index: torch.Tensor) -> "PairTensors":
        from prefdiff.data import select

        return PairTensors(self.a[index], self.b[index], select(self.cond, index), self.target[index],
                           [self.pair_ids[i] for i in index.tolist()])


def load_pair_tensors(pair_file: str | Path) -> PairTensors:
    """Every answered pair of a pair file (each labeler's answer is one row)."""
    from prefdiff.data import collate, read_pairs, tensors_condition
    from prefdiff.feedback.candidates import load_tensors

    pair_file = Path(pair_file)
    root = pair_file.parent
    cache: dict[str, dict[str, torch.Tensor]] = {}

    def read(rel: str) -> dict[str, torch.Tensor]:
        if rel not in cache:
            try:
                cache[rel] = load_tensors(root / rel)
            except Exception as exc:
                raise UserError(f"cannot read {root / rel} named in {pair_file}: {exc}") from None
        return cache[rel]

    records = read_pairs(pair_file)
    a = torch.stack([read(r["a"])["sample"] for r in records]).float()
    b = torch.stack([read(r["b"])["sample"] for r in records]).float()
    cond = collate([tensors_condition(read(r["condition"])) for r in records])
    target = torch.tensor([TARGET[r["winner"]] for r in records])
    return PairTensors(a, b, cond, target, [r.get("id") or f"{r['a']}|{r['b']}" for r in records])


def split_by_pair(data: PairTensors, held_out: float, seed: int) -> tuple[PairTensors, PairTensors]:
    """(train, held-out): a seeded ``held_out`` fraction of the distinct pair ids."""
    ids = sorted(set(data.pair_ids))
    g = torch.Generator().manual_seed(seed)
    order = [ids[i] for i in torch.randperm(len(ids), generator=g).tolist()]
    n_held = int(round(held_out * len(ids)))
    if held_out > 0 and (n_held == 0 or n_held == len(ids)):
        raise UserError(f"{len(ids)} labelled pairs cannot be split with --held-out {held_out}; label more pairs")
    held = set(order[:n_held])
    mask = torch.tensor([p in held for p in data.pair_ids])
    return data.take(torch.nonzero(~mask).squeeze(1)), data.take(torch.nonzero(mask).squeeze(1))


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (Wilson 1927) of a proportion."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


@torch.no_grad()
def evaluate(net: PreferenceNet, data: PairTensors) -> dict[str, Any]:
    """Loss and pair accuracy of ``net`` on ``data`` (accuracy over decided pairs)."""
    net.eval()
    loss, metrics = bradley_terry_loss(net(data.a, data.cond), net(data.b, data.cond), data.target)
    decided = int((data.target != 0.5).sum())
    correct = int(round(float(metrics["accuracy"]) * decided)) if decided else 0
    low, high = wilson_interval(correct, decided)
    return {"loss": float(loss), "accuracy": float(metrics["accuracy"]), "accuracy_ci95": [low, high],
            "decided_pairs": decided}


def train_reward_model(pair_file: str | Path, out: str | Path, *, epochs: int = 60, lr: float = 3e-3,
                       batch_size: int = 32, weight_decay: float = 1e-4, held_out: float = 0.2,
                       width: int = 16, seed: int = 0) -> dict[str, Any]:
    """Fit a preference model on ``pair_file``, save it in ``out``; returns the report."""
    for name, value in (("--epochs", epochs), ("--batch-size", batch_size), ("--width", width)):
        if value < 1:
            raise UserError(f"{name} must be >= 1, got {value}")
    if lr <= 0:
        raise UserError(f"--lr must be > 0, got {lr}")
    if not 0 <= held_out < 1:
        raise UserError(f"--held-out must be in [0, 1), got {held_out}")
    data = load_pair_tensors(pair_file)
    train, test = split_by_pair(data, held_out, seed)
    shape = tuple(data.a.shape[1:])
    first = data.cond if not isinstance(data.cond, torch.Tensor) else data.cond[0]
    mode, cond_channels = condition_mode(first, shape)
    num_classes = int(data.cond.max()) + 1 if mode == "class" else 0
    torch.manual_seed(seed)
    net = PreferenceNet(RewardModelConfig(list(shape), mode, cond_channels, num_classes, width))
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    n = train.target.shape[0]
    for _ in range(epochs):
        net.train()
        for index in torch.randperm(n, generator=g).split(batch_size):
            batch = train.take(index)
            r = net(torch.cat([batch.a, batch.b]), _twice(batch.cond))  # one forward for both sides
            loss, _ = bradley_terry_loss(r[:len(index)], r[len(index):], batch.target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    report = {"pairs_file": str(pair_file), "labels": len(data.pair_ids), "train_labels": n,
              "held_out_labels": int(test.target.shape[0]), "epochs": epochs, "seed": seed,
              "train": evaluate(net, train)}
    if test.target.shape[0]:
        report["held_out"] = evaluate(net, test)
    net.config.metrics = report
    save_reward_model(net, out)
    return report


def _twice(cond: Any) -> Any:
    from prefdiff.data import concat

    return concat(cond, cond)
