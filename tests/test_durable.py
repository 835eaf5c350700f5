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


# ---------------------------------------------- every file prefdiff writes


def _all_writes_fail(monkeypatch):
    """A full disk: every os.write of prefdiff.durable fails with ENOSPC."""
    def write(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(durable.os, "write", write)


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_folder_is_replaced_whole_and_a_users_folder_is_refused(tmp_path):
    from prefdiff.durable import replacing_folder, write_new_file

    target = tmp_path / "model"
    with replacing_folder(target, markers=("meta.json",)) as tmp:
        write_new_file(tmp / "meta.json", b"1")
        write_new_file(tmp / "net" / "weights", b"old")
    with replacing_folder(target, markers=("meta.json",)) as tmp:
        write_new_file(tmp / "meta.json", b"2")
    assert _tree(target) == {"meta.json": b"2"}  # nothing of the old folder is left in the new
    with pytest.raises(RuntimeError, match="a bug"):
        with replacing_folder(target, markers=("meta.json",)) as tmp:
            write_new_file(tmp / "meta.json", b"3")
            raise RuntimeError("a bug")
    assert _tree(target) == {"meta.json": b"2"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's")
    with pytest.raises(UserError, match=r"mine holds files but none of meta\.json; not replacing"):
        with replacing_folder(mine, markers=("meta.json",)):
            pass
    assert (mine / "notes.txt").read_text() == "a user's"


def test_a_full_disk_while_saving_an_adapter_or_a_model_leaves_the_old_one(tmp_path, monkeypatch):
    from prefdiff.models import add_lora, load_lora, save_lora, save_model
    from prefdiff.testing import tiny_denoiser, tiny_scheduler

    denoiser = add_lora(tiny_denoiser(sample_size=8, block_out_channels=(8, 16)))
    save_lora(denoiser, tmp_path / "lora")
    save_model(denoiser, tmp_path / "model", tiny_scheduler())
    before = {name: _tree(tmp_path / name) for name in ("lora", "model")}
    assert "scheduler/scheduler_config.json" in before["model"]  # the model folder is whole in one step
    _all_writes_fail(monkeypatch)
    with pytest.raises(UserError, match=r"could not write .*lora: No space left on device; the folder is as it "
                                        r"was before this write; free disk space"):
        save_lora(denoiser, tmp_path / "lora")
    with pytest.raises(UserError, match=r"could not write .*model: No space left on device; the folder is as it "
                                        r"was before this write"):
        save_model(denoiser, tmp_path / "model")
    with pytest.raises(UserError, match=r"could not write .*new-lora: No space left on device; nothing of it was "
                                        r"left behind"):
        save_lora(denoiser, tmp_path / "new-lora")
    assert {name: _tree(tmp_path / name) for name in ("lora", "model")} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora", "model"]
    monkeypatch.undo()
    load_lora(tiny_denoiser(sample_size=8, block_out_channels=(8, 16)), tmp_path / "lora")


def test_a_full_disk_while_writing_pairs_leaves_the_pair_file_and_tensors_whole(tmp_path, monkeypatch):
    import torch

    from prefdiff.data import append_pair, read_pairs, save_tensors

    save_tensors(tmp_path / "a.safetensors", {"sample": torch.ones(2)})
    append_pair(tmp_path / "pairs.jsonl", {"condition": "c", "a": "a.safetensors", "b": "b", "winner": "a"})
    before = _tree(tmp_path)
    _all_writes_fail(monkeypatch)
    with pytest.raises(UserError, match=r"could not write .*pairs\.jsonl: No space left on device"):
        append_pair(tmp_path / "pairs.jsonl", {"condition": "c", "a": "a", "b": "b", "winner": "b"})
    with pytest.raises(UserError, match=r"could not write .*a\.safetensors: No space left on device; the file is "
                                        r"as it was"):
        save_tensors(tmp_path / "a.safetensors", {"sample": torch.zeros(2)})
    assert _tree(tmp_path) == before
    monkeypatch.undo()
    assert len(read_pairs(tmp_path / "pairs.jsonl")) == 1


def test_a_torn_or_foreign_tensor_file_of_a_pair_names_the_file_the_pair_and_the_fix(tmp_path):
    import torch

    from prefdiff.data import PairDataset, append_pair, save_tensors

    save_tensors(tmp_path / "c.safetensors", {"cond": torch.tensor(1)})
    for name in ("a", "b"):
        save_tensors(tmp_path / f"{name}.safetensors", {"sample": torch.rand(3, 4, 4)})
    append_pair(tmp_path / "pairs.jsonl", {"id": "p0", "condition": "c.safetensors", "a": "a.safetensors",
                                           "b": "b.safetensors", "winner": "a"})
    pairs = PairDataset(tmp_path / "pairs.jsonl")
    whole = (tmp_path / "a.safetensors").read_bytes()
    (tmp_path / "a.safetensors").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(UserError, match=r"a\.safetensors, named as 'a' in .*pairs\.jsonl, is truncated or not a "
                                        r"safetensors file .*re-create it .*or delete the line of pair 'p0'"):
        pairs[0]
    save_tensors(tmp_path / "a.safetensors", {"image": torch.rand(2)})
    with pytest.raises(UserError, match=r"a\.safetensors, named as 'a' .* holds no 'sample' tensor \(it has image\)"):
        pairs[0]


def test_mining_into_a_folder_of_earlier_pairs_leaves_their_files_as_they_were(tmp_path):
    import torch

    from prefdiff.data import MinedSamples, PairDataset, write_best_worst_pairs

    def mined(seed):
        g = torch.Generator().manual_seed(seed)
        return MinedSamples(torch.rand(3, 2, 3, 4, 4, generator=g), torch.tensor([[1.0, 0.0]] * 3),
                            [torch.tensor(c) for c in range(3)])

    first = mined(0)
    pair_file = write_best_worst_pairs(first, tmp_path, "reward:r")
    write_best_worst_pairs(mined(1), tmp_path, "reward:r")  # a second mining, with other samples
    pairs = PairDataset(pair_file)
    assert len(pairs) == 6 and len({r["id"] for r in pairs.records}) == 6
    for i in range(3):  # the earlier lines still name the earlier samples
        assert torch.equal(pairs[i]["x_w"], first.samples[i, 0]) and torch.equal(pairs[i]["x_l"], first.samples[i, 1])
