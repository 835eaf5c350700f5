"""Shared fixtures (prefdiff.testing's come from the repository's conftest.py): a small world on
disk and two briefly trained recognisers, made once per session."""

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory) -> Path:
    """A small make-data folder (read-only: copy it before breaking it)."""
    from prefdiff_t2i.data import ShapesData, make_dataset

    return make_dataset(tmp_path_factory.mktemp("data") / "shapes", ShapesData(train=48, val=12, test=24, seed=3))


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    """The reward's and the judge's recognisers, trained briefly (a few seconds each)."""
    from prefdiff_t2i import recognisers

    folder = tmp_path_factory.mktemp("recognisers")
    torch.set_num_threads(1)
    out = {}
    # The judge's architecture learns more slowly (it regresses centres directly).
    for name, arch, seed, steps in (("reward", "conv", 1, 80), ("judge", "coord", 2, 150)):
        path = folder / f"{name}_{arch}.safetensors"
        recognisers.train(arch, path, steps=steps, seed=seed, scenes_n=600, batch=32, lr=3e-3)
        out[name] = str(path)
    return out
