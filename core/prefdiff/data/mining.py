"""AI feedback: sample the base model several times per condition, score every sample, keep pairs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

from prefdiff.data.conditions import infer_sample_shape
from prefdiff.data.pairs import append_pair, condition_tensors, save_tensors
from prefdiff.errors import UserError


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
                     generator=generator, guidance_scale=guidance_scale, uncond=uncond, **denoiser.pinned(cond))
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
    """Keep the best and worst sample of each condition as a pair; returns the pair file.

    Each pair's tensor files are written whole (:func:`~prefdiff.data.pairs.save_tensors`) before
    its line is appended (:func:`~prefdiff.data.pairs.append_pair`), so a crash or a full disk at any
    point leaves a pair file whose every line names whole files.

    Mining into a folder that already holds pairs appends to them: the new files are named after
    the number of lines already there (``r12-c00003_0.safetensors``), so they never replace a
    file an earlier line names, and a rerun after a crash only leaves the crashed run's unnamed
    files behind.
    """
    from prefdiff.durable import read_records

    out_dir = Path(out_dir)
    pair_file = out_dir / "pairs.jsonl"
    earlier = len(read_records(pair_file, torn_tail_ok=True)) if pair_file.is_file() else 0
    prefix = f"r{earlier}-" if earlier else ""
    kept = 0
    for i, cond in enumerate(mined.conditions):
        best, worst = int(mined.rewards[i].argmax()), int(mined.rewards[i].argmin())
        if mined.rewards[i, best] - mined.rewards[i, worst] <= min_gap:
            continue
        if isinstance(cond, str):
            where = {"prompt": cond}
        else:
            where = {"condition": f"conds/{prefix}c{i:05d}.safetensors"}
            save_tensors(out_dir / where["condition"], condition_tensors(cond))
        names = []
        for j in (best, worst):
            rel = f"samples/{prefix}c{i:05d}_{j}.safetensors"
            save_tensors(out_dir / rel, {"sample": mined.samples[i, j]})
            names.append(rel)
        append_pair(pair_file, {"id": f"{prefix}c{i:05d}-{best}-{worst}", **where,
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
