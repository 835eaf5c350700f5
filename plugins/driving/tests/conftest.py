"""Shared fixtures (prefdiff.testing's come from the repository's conftest.py): a mini dataroot."""

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def dataroot(tmp_path_factory) -> Path:
    """A synthetic v1.0-mini dataroot written by the make-data command (read-only: copy it to break it)."""
    from prefdiff.cli import main

    root = tmp_path_factory.mktemp("nuscenes") / "mini"
    assert main(["driving", "make-data", str(root), "--seed", "3"]) == 0
    return root


@pytest.fixture
def dataroot_copy(dataroot, tmp_path) -> Path:
    """A private copy of :func:`dataroot` that a test may corrupt."""
    return Path(shutil.copytree(dataroot, tmp_path / "mini"))


@pytest.fixture(scope="session")
def test_split(dataroot, tmp_path_factory):
    """The held-out split of :func:`dataroot` as a dataset (read once)."""
    import os

    from prefdiff_driving.data import NuScenesBEV

    old = os.environ.get("PREFDIFF_CACHE")
    os.environ["PREFDIFF_CACHE"] = str(tmp_path_factory.mktemp("split-cache"))
    try:
        return NuScenesBEV(root=str(dataroot), split="test")
    finally:
        if old is None:
            os.environ.pop("PREFDIFF_CACHE")
        else:
            os.environ["PREFDIFF_CACHE"] = old
