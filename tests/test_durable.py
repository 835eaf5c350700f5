"""Files a user cannot afford to lose: whole-line appends, torn tails moved aside, atomic rewrites,
strict reads, and a full disk that leaves the file as it was."""

import errno
import fcntl
import json
import multiprocessing
import os
import threading
import time

import pytest

from prefdiff import durable
from prefdiff.durable import (append_line, append_record, atomic_write_bytes, atomic_write_text, read_records,
                              torn_path)
from prefdiff.errors import UserError

FIRST = b'{"id": "p0", "winner": "a"}\n'
TORN = b'{"id": "p1", "condition": "conds/c1.safe'


def _line(record):
    return (json.dumps(record, sort_keys=True) + "\n").encode()


def test_appends_are_whole_sorted_json_lines(tmp_path):
    path = tmp_path / "sub" / "pairs.jsonl"  # the folder is made on the first append
    append_record(path, {"winner": "a", "id": "p0"})
    append_record(path, {"id": "p1", "winner": "b"})
    assert path.read_bytes() == _line({"id": "p0", "winner": "a"}) + _line({"id": "p1", "winner": "b"})
    with pytest.raises(ValueError, match="one line"):
        append_line(path, b"two\nlines\n")
    with pytest.raises(ValueError, match="one line"):
        append_line(path, b"no newline")


def test_a_torn_tail_is_moved_aside_and_never_appended_to(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(FIRST + TORN)
    append_record(path, {"id": "p2"})
    assert path.read_bytes() == FIRST + _line({"id": "p2"})
    assert [r for _, r in read_records(path)] == [{"id": "p0", "winner": "a"}, {"id": "p2"}]
    kept = torn_path(path).read_bytes()
    note, partial = kept.split(b"\n", 1)
    assert note.startswith(b"# ") and b"torn last line of pairs.jsonl" in note
    assert f"(bytes {len(FIRST)}-{len(FIRST + TORN)})".encode() in note
    assert partial == TORN + b"\n"
    append_record(path, {"id": "p3"})  # a whole file is not touched again
    assert torn_path(path).read_bytes() == kept


def test_a_torn_tail_with_no_newline_before_it_leaves_an_empty_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b"x" * 100_000)  # longer than one look-back block
    append_record(path, {"id": "p0"})
    assert path.read_bytes() == _line({"id": "p0"})
    assert torn_path(path).read_bytes().endswith(b"x" * 100_000 + b"\n")


def test_a_whole_last_record_lacking_its_newline_gets_one(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(FIRST + b'{"id": "p1"}')  # as "\n".join(lines) writes a file by hand
    append_record(path, {"id": "p2"})
    assert path.read_bytes() == FIRST + b'{"id": "p1"}\n' + _line({"id": "p2"})
    assert not torn_path(path).exists()


def _no_space(real_write, fail_on, written_first=0):
    """os.write that fails with ENOSPC on data starting with ``fail_on``, after writing ``written_first`` bytes."""
    def write(fd, data):
        if bytes(data[:len(fail_on)]) != fail_on:
            return real_write(fd, data)
        if written_first:
            return real_write(fd, bytes(data[:written_first]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return write


@pytest.mark.parametrize("written_first", [0, 10], ids=["nothing written", "half a line written"])
def test_a_full_disk_during_an_append_leaves_the_file_as_it_was(tmp_path, monkeypatch, written_first):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(FIRST)
    monkeypatch.setattr(durable.os, "write", _no_space(os.write, b'{"id": "new"', written_first))
    with pytest.raises(UserError, match=r"could not write .*pairs\.jsonl: No space left on device.*; "
                                        r"the file is as it was before this write; free disk space"):
        append_record(path, {"id": "new"})
    assert path.read_bytes() == FIRST


def test_a_full_disk_during_a_rewrite_leaves_the_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(FIRST)
    monkeypatch.setattr(durable.os, "write", _no_space(os.write, b"new"))
    with pytest.raises(UserError, match="No space left on device; the file is as it was"):
        atomic_write_text(path, "new contents\n")
    assert path.read_bytes() == FIRST
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl"]


def test_a_rewrite_replaces_the_file_whole_and_keeps_its_permissions(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(FIRST)
    path.chmod(0o600)
    inode = path.stat().st_ino
    atomic_write_bytes(path, b"replaced\n")
    assert path.read_bytes() == b"replaced\n"
    assert path.stat().st_ino != inode  # renamed over, never written in place
    assert path.stat().st_mode & 0o777 == 0o600
    atomic_write_text(tmp_path / "new.txt", "fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.txt", "pairs.jsonl"]


def test_an_append_waiting_on_a_rewrite_lands_in_the_new_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(FIRST)
    holder = os.open(path, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)  # as another appender would
    appender = threading.Thread(target=append_record, args=(path, {"id": "late"}))
    appender.start()
    time.sleep(0.2)  # the appender opened the old file and waits for its lock
    atomic_write_bytes(path, b'{"id": "rewritten"}\n')
    fcntl.flock(holder, fcntl.LOCK_UN)
    os.close(holder)
    appender.join(timeout=10)
    assert path.read_bytes() == b'{"id": "rewritten"}\n' + _line({"id": "late"})


def _append_many(args):
    path, name = args
    for i in range(25):
        append_record(path, {"id": f"{name}-{i}", "pad": "x" * 300})


def test_processes_appending_at_once_repair_a_torn_tail_once_and_keep_lines_whole(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(FIRST + TORN)
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.map(_append_many, [(path, f"w{n}") for n in range(4)])
    ids = [r["id"] for _, r in read_records(path)]
    assert ids[0] == "p0" and sorted(ids[1:]) == sorted(f"w{n}-{i}" for n in range(4) for i in range(25))
    assert torn_path(path).read_bytes().count(TORN) == 1


def test_reading_names_the_torn_or_foreign_line_and_the_fix(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(FIRST + b"\n" + b'{"id": "p1"}\n' + TORN)
    assert [n for n, _ in read_records(path, torn_tail_ok=True)] == [1, 3]  # blank line 2 skipped
    with pytest.raises(UserError, match=r"pairs\.jsonl:4 is a torn last line .*delete that partial line, "
                                        r"or let the next append move it to pairs\.jsonl\.torn"):
        read_records(path)
    for foreign, reason in [(b"left please", "Expecting value"), (b"[1, 2]", "a JSON list, not an object"),
                            (b'{"id": "\xc3\x28"}', "UnicodeDecodeError"), (b"[" * 100_000, "RecursionError")]:
        path.write_bytes(FIRST + foreign + b"\n" + FIRST)
        with pytest.raises(UserError, match=rf"pairs\.jsonl:2 is not a JSON record \({reason}.*\); "
                                            rf"fix or delete that line"):
            read_records(path, torn_tail_ok=True)
    path.write_bytes(FIRST + b'{"id": "p1"}')  # whole, only the newline missing
    assert [r["id"] for _, r in read_records(path)] == ["p0", "p1"]
