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

The same holds beyond JSON Lines, for every file prefdiff writes that a user
cannot afford to lose (a tensor file of a pair, an exported adapter, a model
folder, a cache, a checkpoint): one file is written by
:func:`atomic_write_bytes` (safetensors through ``safetensors.torch.save``,
torch through a bytes buffer), and a folder of files by
:func:`replacing_folder`: written whole into a temporary folder beside its
target, fsynced, and swapped into place in one step.

A failed write (a full disk, say) leaves the file as it was and raises a
UserError saying so. Appenders of one file exclude each other with ``flock``
on it; code that rewrites a file while others append must hold a lock of its
own around both (:class:`prefdiff.feedback.store.LabelStore` does).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import stat
import time
from pathlib import Path
from typing import Any, Iterator

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


def _write_failed(path: Path, exc: OSError, what: str = "file") -> UserError:
    """The one-line error for a write that did not happen."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free disk space and retry"
    elif exc.errno == errno.EFBIG:
        fix = "free disk space or raise the file size limit (ulimit -f), then retry"
    else:
        fix = "check the folder exists and is writable, then retry"
    state = ("nothing of it was left behind" if what == "new folder"
             else f"the {what} is as it was before this write")
    return UserError(f"could not write {path}: {exc.strerror or exc}; {state}; {fix}")


# -------------------------------------------------------------- folders ----


@contextlib.contextmanager
def replacing_folder(target: str | Path, *, markers: tuple[str, ...] = ()) -> Iterator[Path]:
    """Write a folder whole: yields an empty temporary folder beside ``target`` to fill.

    When the block ends without an error every file in the temporary folder is
    fsynced and the folder takes ``target``'s place in one step (Linux's
    ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames), so a reader sees
    the old folder or the new one, never a mix, and a crash at any point
    leaves ``target`` whole. On an error the temporary folder is removed and
    ``target`` is untouched; a failed write (a full disk) is one
    :class:`UserError` naming ``target``.

    Write files in the block with :func:`write_new_file` (or any writer that
    raises ``OSError``): the block syncs them.

    :param markers: names of files, one of which marks ``target`` as a folder
        of this kind; a target that holds files but none of these is not
        replaced (a user's own folder is never deleted) but refused.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} exists and is not a folder; pass a new folder")
    if markers and target.is_dir() and any(target.iterdir()) and not any((target / m).exists() for m in markers):
        raise UserError(f"{target} holds files but none of {', '.join(markers)}; not replacing a folder "
                        f"prefdiff did not write; pass a new or empty folder")
    what = "folder" if target.exists() else "new folder"
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    leftover = tmp
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        yield tmp
        _fsync_tree(tmp)
        leftover = _swap_into_place(tmp, target)
        _fsync_folder(target.parent)
    except Exception as exc:
        error = write_error(target, exc, what)
        if error is None:
            raise
        raise error from None
    finally:
        shutil.rmtree(leftover, ignore_errors=True)


def write_error(path: str | Path, exc: BaseException, what: str = "file") -> UserError | None:
    """The one-line :class:`UserError` for a write of ``path`` that failed with ``exc``; None when
    ``exc`` is not an I/O failure (a bug, which keeps its traceback).

    Besides ``OSError`` this knows the I/O errors libraries wrap in their own types, such as
    safetensors' ``SafetensorError(... (os error 28))``.
    """
    if isinstance(exc, UserError):
        return exc
    if not isinstance(exc, OSError):
        found = re.search(r"\(os error (\d+)\)", str(exc))
        if found is None:
            return None
        code = int(found.group(1))
        exc = OSError(code, os.strerror(code))
    return _write_failed(Path(path), exc, what)


def write_new_file(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a file in a :func:`replacing_folder` block (which syncs it); raises ``OSError``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """fsync every file and folder under ``folder``, deepest first."""
    for root, _, files in os.walk(folder, topdown=False):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_folder(Path(root))


def _swap_into_place(new: Path, target: Path) -> Path:
    """Put folder ``new`` at ``target``; returns the path that now holds the old folder (to remove)."""
    if not target.exists():
        os.rename(new, target)
        return new  # nothing is there any more
    if _exchange(new, target):
        return new  # ``new`` now names the old folder
    old = target.with_name(f".{target.name}.{secrets.token_hex(4)}.old")
    os.rename(target, old)  # a crash here leaves the old folder whole at ``old``
    os.rename(new, target)
    return old


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with ``renameat2(RENAME_EXCHANGE)``; False where it is not available."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # an old kernel or a filesystem without it
        return False
    raise OSError(code, os.strerror(code), str(b))


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
