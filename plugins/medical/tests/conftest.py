"""Shared fixtures: one thread, a fresh plugin manager, a small task, the quick benchmark's cache."""

import os
import shutil
from pathlib import Path

import pytest
import torch

from prefdiff.plugins import reset_manager


@pytest.fixture(autouse=True, scope="session")
def _threads():
    # Two cores shared by everyone: one intra-op thread keeps tiny models fast and repeatable.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_manager(monkeypatch, tmp_path_factory):
    monkeypatch.delenv("PREFDIFF_PLUGINS", raising=False)
    monkeypatch.delenv("PREFDIFF_MEDICAL_TASK", raising=False)
    monkeypatch.setenv("PREFDIFF_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    reset_manager()
    yield
    reset_manager()


@pytest.fixture(scope="session")
def small_task(tmp_path_factory) -> Path:
    """A 4-volume synthetic task written by make-data (read-only: copy it before breaking it)."""
    from prefdiff_medical.synthetic import SyntheticTask, make_task

    return make_task(tmp_path_factory.mktemp("data") / "Task90", SyntheticTask(volumes=4, depth=10, seed=3))


@pytest.fixture
def task_copy(small_task, tmp_path) -> Path:
    """A private copy of :func:`small_task` that a test may corrupt."""
    return Path(shutil.copytree(small_task, tmp_path / "Task90"))


@pytest.fixture(scope="session")
def bench_cache(tmp_path_factory) -> Path:
    """The cache folder the quick benchmark test uses (shared so the segmenters are trained once)."""
    return tmp_path_factory.mktemp("bench-cache")


@pytest.fixture(scope="session")
def prepared(bench_cache) -> dict:
    """The quick recipe's prepared data and segmenters, where `run_benchmark(cache=bench_cache)` finds them."""
    from prefdiff_medical.recipe import prepare

    old = os.environ.pop("PREFDIFF_MEDICAL_TASK", None)
    try:
        return prepare(bench_cache / "bench" / "medical-data", quick=True, user_task=None, log=lambda m: None)
    finally:
        if old is not None:
            os.environ["PREFDIFF_MEDICAL_TASK"] = old
