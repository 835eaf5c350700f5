"""Which pairs to ask: two samples of one condition, from a folder or drawn from a model.

A sample folder has the layout the core's pair mining writes::

    conds/NAME.safetensors        one condition (prefdiff.data.condition_tensors)
    samples/NAME_J.safetensors    sample J of that condition (key "sample")

Every two samples of one condition make a candidate pair ``NAME-J-K``. With a
reward (a learned preference model or any registered one) candidates are asked
where it is least sure: closest scores first, since under Bradley-Terry
``P(a > b) = sigmoid(r(a) - r(b))`` is nearest 1/2 there, so each answer
teaches the model the most (uncertainty sampling, as in active reward
learning; Sadigh et al. 2017, Christiano et al. 2017).
"""

from __future__ import annotations

import os
import re
import threading
from itertools import combinations
from pathlib import Path
from typing import Any

import torch

from prefdiff.errors import UserError

_SAMPLE = re.compile(r"^(?P<name>.+)_(?P<j>\d+)\.safetensors$")


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of one safetensors file."""
    from safetensors.torch import load_file

    return load_file(str(path))


def write_sample_folder(folder: str | Path, samples: torch.Tensor, conditions: list[Any], prefix: str = "c",
                        start: int = 0) -> list[str]:
    """Write ``samples[i, j]`` (sample j of condition i) in the sample-folder layout; returns the names."""
    from prefdiff.data import condition_tensors, save_tensors

    folder = Path(folder)
    names = []
    for i, cond in enumerate(conditions):
        name = f"{prefix}{start + i:06d}"
        for j in range(samples.shape[1]):
            save_tensors(folder / "samples" / f"{name}_{j}.safetensors", {"sample": samples[i, j]})
        # The condition goes last: a pair exists only once its condition file does.
        save_tensors(folder / "conds" / f"{name}.safetensors", condition_tensors(cond))
        names.append(name)
    return names


class CandidatePool:
    """The candidate pairs of a sample folder, in the order they are asked.

    :param folder: the sample folder (see the module docstring).
    :param pair_file: where answers go; records name files relative to its folder.
    :param reward: a reward ``(samples, conditions) -> (scores, info)`` ranking by
        uncertainty; None keeps a seeded shuffle.
    :param source: a :class:`ModelSource` that draws more samples when a labeler runs out.
    :param seed: seeds the shuffle.
    """

    def __init__(self, folder: str | Path, pair_file: str | Path, reward=None, source=None,
                 seed: int = 0) -> None:
        self.folder = Path(folder).resolve()
        self.pair_root = Path(pair_file).resolve().parent
        self.reward, self.source, self.seed = reward, source, seed
        self.pairs: dict[str, dict[str, Any]] = {}
        self.margin: dict[str, float] = {}
        self.order: list[str] = []
        self._lock = threading.Lock()
        self.refresh()
        if not self.pairs and source is not None:
            source.draw(self.folder)
            self.refresh()
        if not self.pairs:
            raise UserError(f"{folder} holds no candidate pairs: it needs conds/NAME.safetensors and at "
                            f"least two samples/NAME_J.safetensors per condition; or pass --model (with "
                            f"--dataset) to draw samples from a model")

    def _rel(self, path: Path) -> str:
        return os.path.relpath(path, self.pair_root)

    def refresh(self) -> None:
        """Pick up every pair in the folder and rank the new ones."""
        groups: dict[str, list[tuple[int, Path]]] = {}
        for path in sorted((self.folder / "samples").glob("*.safetensors")):
            match = _SAMPLE.match(path.name)
            if match and (self.folder / "conds" / f"{match['name']}.safetensors").is_file():
                groups.setdefault(match["name"], []).append((int(match["j"]), path))
        new = []
        for name, members in groups.items():
            cond = self._rel(self.folder / "conds" / f"{name}.safetensors")
            for (j, a), (k, b) in combinations(sorted(members), 2):
                pid = f"{name}-{j}-{k}"
                if pid not in self.pairs:
                    new.append({"id": pid, "condition": cond, "a": self._rel(a), "b": self._rel(b)})
        with self._lock:
            self._rank(new)

    def _rank(self, new: list[dict[str, Any]]) -> None:
        if not new:
            return
        if self.reward is not None:
            scores = self._scores(new)
            for pair in new:
                self.margin[pair["id"]] = abs(scores[pair["a"]] - scores[pair["b"]])
        else:
            g = torch.Generator().manual_seed(self.seed + len(self.pairs))
            for pair, u in zip(new, torch.rand(len(new), generator=g).tolist()):
                self.margin[pair["id"]] = u
        self.pairs.update({p["id"]: p for p in new})
        self.order = sorted(self.pairs, key=lambda pid: (self.margin[pid], pid))

    @torch.no_grad()
    def _scores(self, pairs: list[dict[str, Any]]) -> dict[str, float]:
        from prefdiff.data import collate, tensors_condition

        wanted = {}
        for pair in pairs:
            wanted.setdefault(pair["a"], pair["condition"])
            wanted.setdefault(pair["b"], pair["condition"])
        names, scores = list(wanted), {}
        for start in range(0, len(names), 64):
            chunk = names[start:start + 64]
            samples = torch.stack([load_tensors(self.pair_root / n)["sample"] for n in chunk])
            conds = collate([tensors_condition(load_tensors(self.pair_root / wanted[n])) for n in chunk])
            values, _ = self.reward(samples, conds)
            scores.update(zip(chunk, values.float().tolist()))
        return scores

    def next_for(self, labeler: str, answered: dict[str, set[str]], labels_per_pair: int) -> dict | None:
        """The first pair in order that ``labeler`` has not answered and that still needs labels."""
        for attempt in range(2):
            with self._lock:
                for pid in self.order:
                    who = answered.get(pid, set())
                    if labeler not in who and len(who) < labels_per_pair:
                        return self.pairs[pid]
            if self.source is None or attempt:
                return None
            self.source.draw(self.folder)
            self.refresh()
        return None

    def remaining_for(self, labeler: str, answered: dict[str, set[str]], labels_per_pair: int) -> int:
        """How many pairs are left for ``labeler`` in the folder now."""
        with self._lock:
            return sum(1 for pid in self.order
                       if labeler not in answered.get(pid, set()) and len(answered.get(pid, set())) < labels_per_pair)


class ModelSource:
    """Draws samples from a saved model into a sample folder on demand.

    :param model: a saved model folder; ``lora`` an adapter to apply.
    :param dataset: registered dataset whose conditions are used, with ``dataset_options`` and ``split``.
    :param per_condition: samples drawn per condition (each two make a pair).
    :param conditions_per_draw: conditions drawn each time labelers run out.
    """

    def __init__(self, model: str, dataset: str, *, lora: str | None = None, conditioner: str | None = None,
                 dataset_options: dict | None = None, split: str = "train", per_condition: int = 2,
                 conditions_per_draw: int = 8, num_steps: int = 20, seed: int = 0) -> None:
        from prefdiff.models import load_lora, load_model
        from prefdiff.plugins import get_manager
        from prefdiff.schedulers import load_scheduler

        if per_condition < 2:
            raise UserError(f"--per-condition must be >= 2 to make pairs, got {per_condition}")
        manager = get_manager()
        self.denoiser = load_model(model, manager.conditioner(conditioner) if conditioner else None)
        if lora:
            load_lora(self.denoiser, lora)
        self.denoiser.eval()
        self.scheduler = load_scheduler(model)
        self.dataset = manager.dataset(dataset, split=split, **(dataset_options or {}))
        self.per_condition, self.conditions_per_draw = per_condition, conditions_per_draw
        self.num_steps, self.seed = num_steps, seed
        self._lock = threading.Lock()

    @torch.no_grad()
    def draw(self, folder: Path) -> int:
        """Sample the next conditions (continuing after what the folder holds); returns how many."""
        from prefdiff.data import collate, infer_sample_shape
        from prefdiff.sampling import sample

        with self._lock:
            done = len(list((Path(folder) / "conds").glob("d*.safetensors")))
            if done >= len(self.dataset):
                return 0
            conds = [self.dataset[i]["cond"] for i in range(done, min(done + self.conditions_per_draw,
                                                                      len(self.dataset)))]
            k = self.per_condition
            cond = collate([c for c in conds for _ in range(k)])
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + done)
            noise = torch.randn((len(conds) * k, *infer_sample_shape(self.denoiser)), generator=g)
            out = sample(self.denoiser, self.scheduler, noise, cond, num_steps=self.num_steps, eta=1.0,
                         generator=g, **self.denoiser.pinned(cond)).samples
            write_sample_folder(folder, out.reshape(len(conds), k, *out.shape[1:]), conds, prefix="d", start=done)
            return len(conds)
