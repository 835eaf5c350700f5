"""Putting a finished benchmark run in place: never half written, nothing of the old one lost."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path


_HOST = socket.gethostname().replace("-", "_")
"""This machine, in the names of the folders a run leaves beside its output (a disk may be shared)."""


def staging_folder(out: Path) -> Path:
    """An empty temporary folder beside ``out`` for a run to write into.

    Leftovers of runs that were killed (SIGKILL, a power cut) are cleared first; see :func:`recover`.
    """
    recover(out)
    tmp = out.parent / f".{out.name}.tmp-{_HOST}-{os.getpid()}"
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
    old = out.parent / f".{out.name}.old-{_HOST}-{os.getpid()}"
    if out.exists():
        for entry in out.iterdir():
            if not (new / entry.name).exists():
                (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, new / entry.name)
        os.replace(out, old)
    os.replace(new, out)
    shutil.rmtree(old, ignore_errors=True)


def recover(out: Path) -> None:
    """Clear what killed runs left beside ``out``: their staging folders, and the old folder of a run
    killed while it swapped folders in :func:`publish`.

    Only folders whose process is gone are touched, so a run writing beside ``out`` at the same time
    keeps its own. An old folder goes back in place when ``out`` is missing (the kill came between the
    two renames), and is removed otherwise (the kill came while it was being removed).
    """
    for leftover in sorted(out.parent.glob(f".{out.name}.*-*")):
        kind, _, owner = leftover.name.removeprefix(f".{out.name}.").partition("-")
        host, _, pid = owner.rpartition("-")
        if kind not in ("tmp", "old") or not pid.isdigit() or host not in ("", _HOST) or _running(int(pid)):
            continue  # another machine's (a shared disk) is not ours to judge
        if kind == "old" and not out.exists():
            os.replace(leftover, out)
        else:
            shutil.rmtree(leftover, ignore_errors=True)


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists (ours counts: its leftovers are an earlier call's to replace)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or no process could have that number
        return False
    except PermissionError:  # another user's process
        return True
    return True
