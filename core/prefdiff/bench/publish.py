"""Putting a finished benchmark run in place: never half written, nothing of the old one lost."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def staging_folder(out: Path) -> Path:
    """An empty temporary folder beside ``out`` for a run to write into."""
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def publish(new: Path, out: Path) -> None:
    """Put the finished run ``new`` in place of ``out``, keeping what the run does not write.

    Files of the old folder that the new run has no file of the same name for
    (a results folder's NOTES.md, a user's own files) are copied into the new
    one first, so the old folder stays whole until the folders swap with two
    renames: ``out`` is never half written, and a crash loses nothing.
    """
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        for entry in out.iterdir():
            if not (new / entry.name).exists():
                (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, new / entry.name)
        os.replace(out, old)
    os.replace(new, out)
    shutil.rmtree(old, ignore_errors=True)
