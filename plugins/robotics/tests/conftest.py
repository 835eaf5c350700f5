"""Shared fixtures: a fresh plugin manager per test, a private bench cache, one thread."""

import os

import pytest
import torch

from prefdiff.plugins import reset_manager


@pytest.fixture(autouse=True)
def _fresh_manager(monkeypatch, tmp_path_factory):
    monkeypatch.delenv("PREFDIFF_PLUGINS", raising=False)
    monkeypatch.setenv("PREFDIFF_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    reset_manager()
    yield
    reset_manager()


@pytest.fixture(autouse=True, scope="session")
def _threads():
    # Two shared cores: one intra-op thread keeps tiny models fast and repeatable.
    torch.set_num_threads(1)
    os.environ.setdefault("PYTHONHASHSEED", "0")


@pytest.fixture(scope="session")
def demo_file(tmp_path_factory):
    """A small demonstration file written by the make-data command."""
    from prefdiff_robotics.cli import main

    path = tmp_path_factory.mktemp("demos") / "demos.hdf5"
    assert main(["make-data", str(path), "--demos", "60", "--seed", "3"]) == 0
    return path
