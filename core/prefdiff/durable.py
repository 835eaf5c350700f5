"""Files a user cannot afford to lose: whole-line appends, torn-tail repair, atomic rewrites, strict reads.

The one rule for every JSON Lines file that holds a user's work (the pair
file and skip file of `prefdiff label`, mined pair files):

* An append is one whole line, written by one ``os.write`` on an ``O_APPEND``
  descriptor and fsynced before the caller acknowledges it.
* A file that does not end in a newline has a torn tail: a write that stopped
  mid-line (a crash, a full disk). Before the next append the tail is
  repaired: the partial line moves to ``FILE.torn`` with a note, and the file
  is truncated back to its last newline and fsynced. A new line is never
  written onto a torn one, which would glue two records into one unreadable
  line. (A last line that is a whole JSON object and lacks only its newline,
  as a file written by hand may, gets its newline instead.)
* A whole-file rewrite goes to a temporary file in the same folder, which is
  fsynced, renamed over the target, and the folder fsynced: a crash leaves the
  old or the new file, never a mix.
* A reader that meets a torn or foreign line stops with a
  :class:`~prefdiff.errors.UserError` naming the file, the line and the fix,
  instead of going on with part of the data.

A failed write (a full disk, say) leaves the file as it was and raises a
UserError saying so. Appenders of one file exclude each other with ``flock``
on it; code that rewrites a file while others append must hold a lock of its
own around both (:class:`prefdiff.feedback.store.LabelStore` does).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import stat
import time
from pathlib import Path
from typing import Any

from prefdiff.errors import UserError

_BLOCK = 1 << 16  # bytes read at a time when looking back for the last newline


# ------------------------------------------------------------ appending ----


def append_record(path: str | Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line and make it durable before returning."""
    append_line(path, (json.dumps(record, sort_keys=True) + "\n").encode())


def append_line(path: str | Path, line: bytes) -> None:
    """Append one whole ``line`` (ending in its only newline) durably, after repairing a torn tail.

    :raises UserError: the write failed (e.g. the disk is full); the file is as it was.
    """
    if not line.endswith(b"\n") or b"\n" in line[:-1]:
        raise ValueError(f"append_line takes exactly one line ending in a newline, got {line[:80]!r}")
    path = Path(path)
    try:
        fd = _open_for_append(path)
    except OSError as exc:
        raise _write_failed(path, exc) from None
    try:
        _repair_tail(fd, path)
        size = os.fstat(fd).st_size
        try:
            # One write on O_APPEND: the line lands whole after whatever is there.
            written = os.write(fd, line)
            if written != len(line):
                # A short write to a file means the disk (or quota) filled up mid-line.
                raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({written} of {len(line)} bytes "
                                            f"written)")
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, size)  # a partial line must not become the next torn tail
            os.fsync(fd)
            raise
    except OSError as exc:
        raise _write_failed(path, exc) from None
    finally:
        os.close(fd)  # also releases the flock


def _open_for_append(path: Path) -> int:
    """An O_APPEND descriptor on ``path`` holding its exclusive flock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        # While we waited, a rewrite may have renamed a new file over the path:
        # our descriptor would then append to the old, unlinked one.
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        mine = os.fstat(fd)
        if current is not None and (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev):
            return fd
        os.close(fd)


def _repair_tail(fd: int, path: Path) -> None:
    """Make the file end in a newline: finish a whole last record, or move a torn one aside."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    start = _last_line_start(fd, size)
    tail = os.pread(fd, size - start, start)
    if _is_record(tail):
        os.write(fd, b"\n")
    else:
        _set_aside(path, tail, start)
        os.ftruncate(fd, start)
    os.fsync(fd)


def _last_line_start(fd: int, size: int) -> int:
    """The offset just after the last newline before ``size`` (0 when there is none)."""
    end = size
    while end > 0:
        begin = max(0, end - _BLOCK)
        found = os.pread(fd, end - begin, begin).rfind(b"\n")
        if found >= 0:
            return begin + found + 1
        end = begin
    return 0


def _set_aside(path: Path, tail: bytes, offset: int) -> None:
    """Append a torn tail to ``FILE.torn`` with a note saying where it came from."""
    torn = torn_path(path)
    created = not torn.exists()
    note = (f"# {time.strftime('%Y-%m-%dT%H:%M:%S%z')}: torn last line of {path.name} "
            f"(bytes {offset}-{offset + len(tail)}), moved here before the next append\n").encode()
    fd = os.open(torn, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, note + tail + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        _fsync_folder(path.parent)


def torn_path(path: str | Path) -> Path:
    """Where torn tails of ``path`` are kept: ``FILE.torn`` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".torn")


def _is_record(raw: bytes) -> bool:
    """Whether ``raw`` is one whole JSON object (a record's prefix never is)."""
    try:
        return isinstance(json.loads(raw), dict)
    except (ValueError, RecursionError):
        return False


# ------------------------------------------------------------ rewriting ----


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) so a crash leaves the old or the new file, never a mix."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: temporary file, fsync, rename over the target, fsync the folder.

    :raises UserError: the write failed (e.g. the disk is full); the file is as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            if path.exists():  # the new file keeps the old one's permissions
                os.fchmod(fd, stat.S_IMODE(path.stat().st_mode))
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _write_failed(path, exc) from None
    _fsync_folder(path.parent)  # the rename itself survives a power cut


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_failed(path: Path, exc: OSError) -> UserError:
    """The one-line error for a write that did not happen."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free disk space and retry"
    else:
        fix = "check the folder exists and is writable, then retry"
    return UserError(f"could not write {path}: {exc.strerror or exc}; the file is as it was before this "
                     f"write; {fix}")


# -------------------------------------------------------------- reading ----


def read_records(path: str | Path, *, torn_tail_ok: bool = False) -> list[tuple[int, dict[str, Any]]]:
    """The JSON records of a JSON Lines file as ``(line number, record)``; blank lines are skipped.

    :param torn_tail_ok: skip a torn last line instead of raising; for a writer
        whose next append repairs it (:func:`append_line`).
    :raises UserError: a line is not a JSON object, or the last line is torn;
        the message names the file, the line and the fix.
    """
    path = Path(path)
    lines = path.read_bytes().split(b"\n")
    records = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            value, reason = None, getattr(exc, "msg", None) or type(exc).__name__
        else:
            reason = f"a JSON {type(value).__name__}, not an object"
        if isinstance(value, dict):
            records.append((number, value))
            continue
        if number < len(lines):  # a newline follows: the line was written whole, by someone else
            raise UserError(f"{path}:{number} is not a JSON record ({reason}); fix or delete that line")
        if torn_tail_ok:
            break
        raise UserError(f"{path}:{number} is a torn last line (a write stopped mid-line: a crash or a full "
                        f"disk); delete that partial line, or let the next append move it to "
                        f"{torn_path(path).name}")
    return records
