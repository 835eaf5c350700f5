"""The LightningDataModule that `prefdiff fit` and the benchmark runner feed trainers with."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset, Subset

from prefdiff.data import EpochSampler, PairDataset, collate
from prefdiff.errors import UserError
from prefdiff.plugins import get_manager
from prefdiff.textdata import PickAPicPairs


class ResumableLoader(DataLoader):
    """A training loader that resumes inside an epoch. Its position needs no state of its own: the
    :class:`~prefdiff.data.EpochSampler` continues after the batches Lightning's restored progress
    counts as trained. Having ``state_dict``/``load_state_dict`` tells Lightning so (it warns of an
    unreliable resume for loaders without them)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


class PrefDataModule(pl.LightningDataModule):
    """Conditions (and SFT targets) from a registered dataset, or pairs from a pair file or folder.

    :param dataset: registered dataset name (`prefdiff plugins` lists them).
    :param dataset_options: keyword options for its factory (``root``, ``size``, ...).
    :param pairs: a JSONL pair file, or a folder of Pick-a-Pic parquet shards;
        trains pair objectives (dpo, kto) on it.
    :param pairs_options: keyword options for the Pick-a-Pic reader
        (:class:`prefdiff.textdata.PickAPicPairs`: ``resolution``, ``size``,
        ``split``, ``cache_dir``).
    :param batch_size: items per batch and process.
    :param val_size: validation items scored each validation run (0: none).
    :param seed: seeds the shuffle; `prefdiff fit` sets it to ``--seed_everything`` unless it is given
        (None elsewhere means 0).
    :param num_workers: DataLoader worker processes.
    """

    def __init__(self, dataset: str | None = None, dataset_options: dict | None = None,
                 pairs: str | None = None, pairs_options: dict | None = None, batch_size: int = 16,
                 val_size: int = 16, seed: int | None = None, num_workers: int = 0) -> None:
        super().__init__()
        if dataset is None and pairs is None:
            raise UserError("give --data.dataset (a registered dataset) or --data.pairs (a pair file or a "
                            "folder of Pick-a-Pic parquet shards)")
        if batch_size < 1:
            raise UserError(f"--data.batch_size must be >= 1, got {batch_size}")
        self.dataset_name, self.options, self.pairs = dataset, dict(dataset_options or {}), pairs
        self.pairs_options = dict(pairs_options or {})
        self.batch_size, self.val_size, self.num_workers = batch_size, val_size, num_workers
        self.seed = 0 if seed is None else seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    @classmethod
    def from_datasets(cls, train: Dataset, val: Dataset | None = None, **kwargs: Any) -> "PrefDataModule":
        """A data module over ready datasets (the benchmark runner's mined data)."""
        module = cls(dataset="<in-memory>", **kwargs)
        module.train_set, module.val_set = train, val
        return module

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        manager = get_manager()
        self.train_set = (self._pair_dataset() if self.pairs
                          else manager.dataset(self.dataset_name, split="train", **self.options))
        if len(self.train_set) == 0:
            raise UserError(f"the training data ({self.pairs or self.dataset_name}) is empty; "
                            f"check --data.dataset_options")
        if self.dataset_name and self.val_size > 0:
            val = manager.dataset(self.dataset_name, split="val", **self.options)
            self.val_set = Subset(val, range(min(self.val_size, len(val))))

    def _pair_dataset(self) -> Dataset:
        """The pairs: a folder is read as Pick-a-Pic parquet shards, a file as prefdiff's JSONL pair file."""
        if not Path(self.pairs).exists():
            raise UserError(f"--data.pairs {self.pairs} does not exist; pass a folder of Pick-a-Pic parquet shards "
                            f"or a JSONL pair file (mined by `prefdiff bench`, labelled with `prefdiff label`)")
        if not Path(self.pairs).is_dir():
            if self.pairs_options:
                raise UserError(f"--data.pairs_options applies to a folder of Pick-a-Pic parquet shards; "
                                f"{self.pairs} is a pair file, so drop the options")
            if _is_a_prompt_list(Path(self.pairs)):
                raise UserError(f"--data.pairs {self.pairs} is a prompt list, not preference pairs (JSONL lines "
                                f"with a, b and winner); for prompts pass --data.dataset prompts "
                                f"--data.dataset_options '{{\"path\": \"{self.pairs}\"}}' to a method that "
                                f"samples (ddpo, grpo, draft, ...)")
            return PairDataset(self.pairs)
        options = {"split": "train", **self.pairs_options}
        try:
            inspect.signature(PickAPicPairs).bind(self.pairs, **options)
        except TypeError as exc:
            raise UserError(f"--data.pairs_options {sorted(self.pairs_options)} do not fit the Pick-a-Pic "
                            f"reader ({exc}); it takes resolution, size, split and cache_dir") from None
        return PickAPicPairs(self.pairs, **options)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        # Asked when an epoch's iteration starts. Lightning counts a batch as processed before a checkpoint
        # written at its end, and as completed only after: on a resume from such a checkpoint a loader with
        # worker processes draws before Lightning adds that batch to the completed count.
        done = None if trainer is None else lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed
        epoch = None if trainer is None else lambda: trainer.current_epoch
        sampler = EpochSampler(len(self.train_set), self.seed, rank, world, batch_size=self.batch_size,
                               batches_done=done, current_epoch=epoch)
        if len(sampler) < self.batch_size:
            raise UserError(f"the training data has {len(self.train_set)} items, fewer than one batch of "
                            f"{self.batch_size} per process; lower --data.batch_size")
        return ResumableLoader(self.train_set, batch_size=self.batch_size, sampler=sampler, drop_last=True,
                               collate_fn=collate, num_workers=self.num_workers)

    def val_dataloader(self) -> Any:
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=self.batch_size, collate_fn=collate,
                          num_workers=self.num_workers)


def _is_a_prompt_list(path: Path) -> bool:
    """Whether the file's first line is a prompt (plain text, or a JSON record with a prompt but no pair)."""
    import json

    from prefdiff.textdata.splits import TEXT_KEYS

    with open(path, "rb") as f:
        head = f.read(1 << 16)  # a first line longer than 64 KB is no prompt
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    if b"\0" in head:
        return False  # a binary file (a parquet shard, weights) is the pair reader's to name
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if not first:
        return False
    try:
        record = json.loads(first)
    except ValueError:
        return not first.startswith(("{", "["))  # a torn or broken record is the pair reader's to name
    return isinstance(record, dict) and not {"a", "b"} & set(record) and any(k in record for k in TEXT_KEYS)
