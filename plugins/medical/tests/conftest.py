"""Shared fixtures (prefdiff.testing's come from the repository's conftest.py): a small task,
the quick benchmark's cache and its prepared recipe."""

import os
import shutil
from pathlib import Path

import pytest

#: What the tests train: a much smaller task, segmenters and base than the benchmark's.
TINY_SETTINGS = {"reward_steps": 300, "judge_steps": 200, "model": (16, 32), "pretrain_steps": 60, "downstream_steps": 40}


def _shrink(patch: pytest.MonkeyPatch) -> None:
    """A much smaller medical recipe, which never reads the shipped base."""
    from prefdiff_medical import recipe
    from prefdiff_medical.synthetic import SyntheticTask

    patch.setattr(recipe, "_settings", lambda quick: {"task": SyntheticTask(volumes=8, depth=16), **TINY_SETTINGS})
    patch.setattr(recipe, "SHIPPED", Path("/nonexistent-shipped-bases"))


@pytest.fixture(autouse=True)
def _tiny_recipe(monkeypatch):
    """Every medical test sees the small recipe, undone after it: a test elsewhere that the same
    (parallel) worker runs next reads the real recipe and its shipped base."""
    _shrink(monkeypatch)


@pytest.fixture(autouse=True)
def _no_user_task(monkeypatch):
    # A developer's own task in the environment must not leak into the tests.
    monkeypatch.delenv("PREFDIFF_MEDICAL_TASK", raising=False)


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
def prepared(bench_cache):
    """The quick recipe, prepared where `run_benchmark(cache=bench_cache)` finds its data and segmenters."""
    from prefdiff_medical.recipe import medical_recipe, prepare

    old = os.environ.pop("PREFDIFF_MEDICAL_TASK", None)
    try:
        with pytest.MonkeyPatch.context() as patch:  # built before any test's own fixtures
            _shrink(patch)
            return prepare(medical_recipe(quick=True), bench_cache / "bench" / "medical-data", quick=True,
                           user_task=None)
    finally:
        if old is not None:
            os.environ["PREFDIFF_MEDICAL_TASK"] = old
