"""Shared fixtures: a fresh plugin manager per test, a private bench cache."""

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
    # Two cores: one intra-op thread per test process keeps tiny models fast and repeatable.
    torch.set_num_threads(1)
    os.environ.setdefault("PYTHONHASHSEED", "0")
