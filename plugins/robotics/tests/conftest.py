"""Shared fixtures: a fresh plugin manager per test, a private bench cache, one thread."""

import pytest

from prefdiff.testing import isolated_prefdiff, one_thread  # noqa: F401  (autouse fixtures)


@pytest.fixture(scope="session")
def demo_file(tmp_path_factory):
    """A small demonstration file written by the make-data command."""
    from prefdiff_robotics.cli import main

    path = tmp_path_factory.mktemp("demos") / "demos.hdf5"
    assert main(["make-data", str(path), "--demos", "60", "--seed", "3"]) == 0
    return path
