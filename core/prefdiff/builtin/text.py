"""The built-in text-to-image data plugin: prompt lists, Pick-a-Pic pairs, image-caption folders.

One of the core's default plugins (``prefdiff.plugins.DEFAULT_PLUGINS``);
``PREFDIFF_PLUGINS`` limits it like any plugin. The readers live in
:mod:`prefdiff.textdata`; they are imported when a dataset is built, so
loading the plugin stays cheap.
"""

from __future__ import annotations

from pathlib import Path

from prefdiff.api import UserError, hookimpl


def _location(dataset: str, path: str | None, root: str | None) -> Path:
    if (path is None) == (root is None):
        raise UserError(f"dataset '{dataset}' needs one of the options path or root (its file or folder), "
                        f"e.g. --data.dataset_options '{{\"path\": \"...\"}}'")
    return Path(path if path is not None else root)


def prompts(path: str | None = None, root: str | None = None, split: str = "train", size: int | None = None):
    """Prompts from a text or JSONL file, or a folder of per-split files (:class:`~prefdiff.textdata.PromptList`)."""
    from prefdiff.textdata import PromptList

    return PromptList(_location("prompts", path, root), split=split, size=size)


def pickapic(path: str | None = None, root: str | None = None, split: str = "train", size: int | None = None,
             resolution: int = 512, cache_dir: str | None = None):
    """Decided pairs from a folder of Pick-a-Pic v2 parquet shards (:class:`~prefdiff.textdata.PickAPicPairs`)."""
    from prefdiff.textdata import PickAPicPairs

    return PickAPicPairs(_location("pickapic", path, root), split=split, size=size, resolution=resolution,
                         cache_dir=cache_dir)


def image_captions(path: str | None = None, root: str | None = None, split: str = "train",
                   size: int | None = None, resolution: int = 512):
    """Images and captions from an imagefolder with metadata.jsonl (:class:`~prefdiff.textdata.ImageCaptions`)."""
    from prefdiff.textdata import ImageCaptions

    return ImageCaptions(_location("image_captions", path, root), split=split, size=size, resolution=resolution)


@hookimpl
def prefdiff_register_datasets(register):
    register("prompts", prompts)
    register("pickapic", pickapic)
    register("image_captions", image_captions)
