"""Human preference pairs in the Pick-a-Pic v2 layout (Kirstain et al. 2023).

A folder of parquet shards, as the dataset's Hub snapshot holds them
(``data/train-00000-of-00645-*.parquet``, ``validation-*``, ``test-*``), each
with the columns

- ``caption``: the prompt;
- ``jpg_0``, ``jpg_1``: the two images, JPEG bytes;
- ``label_0``: 1 when image 0 won, 0 when image 1 won, 0.5 for a tie.

Shards are read through the ``datasets`` library, which converts them once
into memory-mapped Arrow files under its cache folder (as big again as the
shards; later runs reuse them). With ``size``, only the first shards that hold
that many decided pairs are converted, so a slice of v2's 645 training shards
(about 0.5 GB each) costs only its own share. Ties are dropped: Diffusion-DPO needs a winner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from prefdiff.errors import UserError
from prefdiff.textdata.images import check_resolution, geometry, read_image
from prefdiff.textdata.splits import SPLIT_NAMES, check_size, check_split

PICKAPIC_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0")
LABELS = (1.0, 0.0, 0.5)  # image 0 won, image 1 won, a tie


def _split_of(shard: Path) -> str | None:
    """The split a shard's name declares (``train-00000-of-00645.parquet``), or None."""
    return next((split for split, names in SPLIT_NAMES.items()
                 if any(shard.name.startswith(f"{name}-") for name in names)), None)


def parquet_shards(folder: str | Path, split: str = "train", columns: tuple[str, ...] = PICKAPIC_COLUMNS) -> list[Path]:
    """The shards of ``split`` in ``folder`` (searched recursively), checked for ``columns``.

    Shards named by split (``train-*``, ``validation-*``, ``test-*``, ``validation_unique-*``,
    ``test_unique-*``) are chosen by that prefix; when no shard is, every ``*.parquet`` is training data.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder, split = Path(folder), check_split(split)
    shards = sorted(folder.rglob("*.parquet"))
    if not shards:
        raise UserError(f"{folder} holds no .parquet files; point it at a folder of Pick-a-Pic shards "
                        f"(train-*.parquet), or give --data.pairs a JSONL pair file")
    named = {shard: _split_of(shard) for shard in shards}
    if any(named.values()):
        shards = [shard for shard in shards if named[shard] == split]
        if not shards:
            found = ", ".join(sorted({s for s in named.values() if s}))
            names = " or ".join(f"{name}-*.parquet" for name in SPLIT_NAMES[split])
            raise UserError(f"{folder} has no {split} shards ({names}); "
                            f"it has {found}")
    elif split != "train":
        raise UserError(f"the shards in {folder} are not named by split, so all of them are training data; "
                        f"name them {SPLIT_NAMES[split][-1]}-*.parquet for a {split} split")
    for shard in shards:
        try:
            schema = pq.read_schema(shard)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise UserError(f"{shard} is not a readable parquet file ({type(exc).__name__}: {exc})") from None
        missing = [column for column in columns if column not in schema.names]
        if missing:
            raise UserError(f"{shard} lacks the column(s) {', '.join(missing)}; Pick-a-Pic shards need "
                            f"{', '.join(columns)} (it has {', '.join(schema.names) or 'none'})")
        label = schema.field("label_0").type if "label_0" in columns else None
        if label is not None and not (pa.types.is_floating(label) or pa.types.is_integer(label)):
            raise UserError(f"{shard} holds label_0 as {label}; it must be a number: 1 (image 0 won), "
                            f"0 (image 1 won) or 0.5 (a tie)")
    return shards


def pickapic_captions(folder: str | Path, split: str = "train", size: int | None = None) -> list[str]:
    """The distinct captions of ``split``'s shards in ``folder``, in order of first appearance (at most
    ``size``): Pick-a-Pic's prompts, ties included. Only the ``caption`` column is read, shard by shard."""
    import pyarrow.parquet as pq

    captions: dict[str, None] = {}
    for shard in parquet_shards(folder, split, columns=("caption",)):
        for caption in pq.read_table(shard, columns=["caption"]).column(0).to_pylist():
            if isinstance(caption, str) and caption.strip():
                captions.setdefault(caption.strip())  # as a prompt file's lines are
        if size is not None and len(captions) >= size:
            break
    return list(captions)[:size]


def shards_holding(shards: list[Path], size: int) -> list[Path]:
    """The first of ``shards`` that together hold ``size`` decided pairs (all of them when they hold fewer);
    only each shard's ``label_0`` column is read."""
    import pyarrow.parquet as pq

    decided = 0
    for count, shard in enumerate(shards, 1):
        labels = pq.read_table(shard, columns=["label_0"]).column(0).to_numpy(zero_copy_only=False)
        decided += int(np.count_nonzero(labels.astype(float) != 0.5))
        if decided >= size:
            return shards[:count]
    return shards


class PickAPicPairs(Dataset):
    """Decided Pick-a-Pic pairs as ``{"x_w", "x_l", "cond"}`` items, images in [-1, 1], with image 0's
    ``original_size`` and ``crop_top_left`` (SDXL's size and crop conditioning).

    :param path: the folder of parquet shards.
    :param split: ``train``, ``val`` (or ``validation``), ``test``, ``val_unique`` (or
        ``validation_unique``) or ``test_unique`` shards.
    :param size: keep at most this many decided pairs, the first in shard order (None: all); only the
        shards that hold them are read.
    :param resolution: images are resized (shorter side) and centre-cropped to this square.
    :param cache_dir: where ``datasets`` keeps its Arrow copy (default: the
        prefdiff cache, ``$PREFDIFF_CACHE/datasets``).
    """

    def __init__(self, path: str | Path, split: str = "train", size: int | None = None,
                 resolution: int = 512, cache_dir: str | None = None) -> None:
        import datasets

        from prefdiff.cache import cache_root

        self.folder, self.resolution = Path(path), check_resolution(resolution)
        self.shards = parquet_shards(self.folder, split)
        if check_size(size) is not None:
            self.shards = shards_holding(self.shards, size)
        table = datasets.load_dataset(
            "parquet", data_files=[str(s) for s in self.shards], split="train", columns=list(PICKAPIC_COLUMNS),
            cache_dir=str(cache_dir or cache_root() / "datasets"))
        for column in ("jpg_0", "jpg_1"):  # shards written with datasets' Image feature: keep the bytes
            if isinstance(table.features[column], datasets.Image):
                table = table.cast_column(column, datasets.Image(decode=False))
        self.table = table
        # From the Arrow column at once: iterating the dataset's column takes seconds per million rows.
        labels = table.data.column("label_0").to_numpy(zero_copy_only=False).astype(float)  # null: NaN
        unknown = np.flatnonzero(~np.isin(labels, LABELS))
        if len(unknown):
            raise UserError(f"{self._where(int(unknown[0]))} has label_0 {labels[unknown[0]]}; Pick-a-Pic "
                            f"labels are 1 (image 0 won), 0 (image 1 won) or 0.5 (a tie)")
        self.rows = np.flatnonzero(labels != 0.5)[:size]
        if len(self.rows) == 0:
            raise UserError(f"the {split} shards in {self.folder} hold only ties; Diffusion-DPO needs "
                            f"decided pairs (label_0 of 1 or 0)")
        self.first_wins = labels[self.rows] == 1.0

    def _where(self, row: int) -> str:
        """Row ``row`` of the loaded shards, named by its file (for error messages)."""
        import pyarrow.parquet as pq

        for shard in self.shards:
            count = pq.ParquetFile(shard).metadata.num_rows
            if row < count:
                return f"row {row} of {shard}"
            row -= count
        return f"row {row} past the end of the shards in {self.folder}"

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = int(self.rows[index])
        record = self.table[row]
        images = []
        for column in ("jpg_0", "jpg_1"):
            value = record[column]
            data = value["bytes"] if isinstance(value, dict) else value  # an Image feature's struct
            if not isinstance(data, bytes):
                raise UserError(f"{column} of {self._where(row)} holds no image bytes ({type(data).__name__})")
            images.append(read_image(data, self.resolution, lambda column=column: f"{column} of {self._where(row)}"))
        x_w, x_l = (p.pixels for p in (images if self.first_wins[index] else images[::-1]))
        # One size and crop a pair, image 0's, as diffusers' SDXL Diffusion-DPO script conditions both images
        return {"x_w": x_w, "x_l": x_l, "cond": record["caption"], **geometry(images[0])}
