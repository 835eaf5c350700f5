"""`prefdiff t2i make-data` (the commands hook).

The function's signature is its command line: ``prefdiff t2i make-data DIR --train 6000``.
"""

from __future__ import annotations

from pathlib import Path

from prefdiff_t2i.data import ShapesData


def make_data(directory: Path, train: int = ShapesData.train, val: int = ShapesData.val, test: int = ShapesData.test,
              resolution: int = ShapesData.resolution, seed: int = ShapesData.seed) -> None:
    """Write the shapes world: an imagefolder per split (PNGs and metadata.jsonl) and prompt lists.

    :param directory: the folder to create (must not exist or be empty).
    :param train: training images (captions of training prompts only).
    :param val: validation images (held-out validation combinations).
    :param test: test images (held-out test combinations).
    :param resolution: image side in pixels.
    :param seed: seeds every scene.
    """
    from prefdiff_t2i.data import make_dataset

    spec = ShapesData(train=train, val=val, test=test, resolution=resolution, seed=seed)
    out = make_dataset(Path(directory), spec)
    print(f"wrote {train} + {val} + {test} images to {out} (train/, val/, test/ with metadata.jsonl; prompts/)")
