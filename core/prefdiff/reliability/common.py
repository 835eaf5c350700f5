"""What every part of the catalogue shares: running the command as a user does, and reading what it left."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

PREFDIFF = str(Path(sys.executable).parent / "prefdiff")
TIMEOUT = 600
"""Seconds any one process may run; one that runs longer fails its case."""


def environment(work: Path) -> dict[str, str]:
    """The environment of every run: one thread, no warnings on the terminal, a cache of its own."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PREFDIFF_CACHE": str(work / "cache")}


def _file_size_limit(limit: int):
    def apply() -> None:
        # Writes past the limit fail with EFBIG, as on a full disk; the signal would kill instead.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def run(argv: list[str], work: Path, *, module: str | None = None, file_limit: int | None = None,
        timeout: float = TIMEOUT, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``prefdiff ARGV`` (or ``python -m MODULE ARGV``) to the end; a timeout is exit code -1."""
    command = [sys.executable, "-m", module, *argv] if module else [PREFDIFF, *argv]
    try:
        return subprocess.run(command, cwd=cwd or work, env=environment(work), capture_output=True, text=True,
                              timeout=timeout, preexec_fn=_file_size_limit(file_limit) if file_limit else None)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(command, -1, exc.stdout or "", f"timed out after {timeout} s")


def start(argv: list[str], work: Path, *, module: str | None = None) -> subprocess.Popen:
    """Start ``prefdiff ARGV`` (or ``python -m MODULE ARGV``) in the background."""
    command = [sys.executable, "-m", module, *argv] if module else [PREFDIFF, *argv]
    return subprocess.Popen(command, cwd=work, env=environment(work), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def kill_when(proc: subprocess.Popen, marker: Path, delay: float, timeout: float = TIMEOUT) -> bool:
    """SIGKILL ``proc`` ``delay`` seconds after ``marker`` appears; False when it ended first."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            return False
        time.sleep(0.02)
    try:
        proc.communicate(timeout=delay)
        return False  # it finished before the kill
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        return True


def one_line_error(result: subprocess.CompletedProcess, culprit: str) -> str | None:
    """None when ``result`` is the promised user error (exit 2, one stderr line naming ``culprit``, besides any
    ``prefdiff: warning:`` lines), else why not."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if result.returncode != 2:
        return f"exit code {result.returncode}: {' | '.join(lines[-3:])[:400]}"
    if any("Traceback" in line for line in lines):
        return f"a traceback: {' | '.join(lines[-3:])[:400]}"
    # Warnings printed before the error are lines of their own, "prefdiff: warning: ...".
    lines = [line for line in lines if not line.startswith("prefdiff: warning: ")]
    if len(lines) != 1 or not lines[0].startswith("prefdiff: error: "):
        return f"{len(lines)} lines on stderr: {' | '.join(lines[:4])[:400]}"
    if culprit not in lines[0]:
        return f"the line does not name {culprit!r}: {lines[0][:400]}"
    return None


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def changed(before: dict[str, bytes], folder: Path, *, may_grow: tuple[str, ...] = ()) -> list[str]:
    """The files of ``before`` that are gone or differ now (a file in ``may_grow`` may only have grown)."""
    now = snapshot(folder) if folder.exists() else {}
    lost = []
    for name, data in before.items():
        if name not in now:
            lost.append(f"{name} is gone")
        elif now[name] != data and not (name in may_grow and now[name].startswith(data)):
            lost.append(f"{name} changed")
    return lost


def leftovers(folder: Path) -> list[str]:
    """Temporary files and folders a killed writer left behind (garbage, not damage)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if ".tmp" in p.name or ".old" in p.name)
