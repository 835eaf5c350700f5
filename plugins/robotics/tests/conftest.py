"""Shared fixtures (prefdiff.testing's come from the repository's conftest.py): a demonstration file."""

import pytest


@pytest.fixture(scope="session")
def demo_file(tmp_path_factory):
    """A small demonstration file written by the make-data command."""
    from prefdiff.cli import main

    path = tmp_path_factory.mktemp("demos") / "demos.hdf5"
    assert main(["robotics", "make-data", str(path), "--demos", "60", "--seed", "3"]) == 0
    return path
