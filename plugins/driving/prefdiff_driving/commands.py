"""`prefdiff driving make-data DIR` (the commands hook): a synthetic dataroot in the nuScenes schema."""

from __future__ import annotations

import json
import time
from pathlib import Path

from prefdiff.api import UserError


def make_data(dir: Path, version: str = "v1.0-mini", scenes: int | None = None, duration: float = 20.0,
              seed: int = 0) -> None:
    """Write a synthetic dataroot in the nuScenes schema that NuScenes and NuScenesMap load.

    :param dir: the dataroot to write (replaced atomically).
    :param version: v1.0-mini (the ten mini scenes) or v1.0-trainval.
    :param scenes: train scenes for v1.0-trainval (a quarter as many val scenes); default 40.
    :param duration: seconds per scene (keyframes at 2 Hz).
    :param seed: seeds the town's drives and traffic.
    """
    if scenes is not None and scenes < 1:
        raise UserError(f"--scenes must be >= 1, got {scenes}")
    if scenes is not None and version == "v1.0-mini":
        raise UserError("--scenes sets the train scenes of v1.0-trainval; v1.0-mini always holds the ten mini "
                        "scenes: drop --scenes or pass --version v1.0-trainval")
    from prefdiff_driving.synthetic import make_dataset

    start = time.perf_counter()
    root = make_dataset(dir, version, scenes=scenes, seed=seed, duration=duration)
    n = len(json.loads((root / version / "scene.json").read_text()))
    samples = len(json.loads((root / version / "sample.json").read_text()))
    print(f"wrote {n} scenes ({samples} keyframes, version {version}, map singapore-onenorth) "
          f"to {root} in {time.perf_counter() - start:.1f} s")
