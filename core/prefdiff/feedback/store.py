"""The pair file that labels go to: durable appends, a lock between processes, undo.

Answers are records of the core's pair format (:mod:`prefdiff.data`) with the
labeler's name and a timestamp, so `prefdiff fit` trains DPO/KTO on the file
as it is. Skips are not preferences; they go to a side file
(``NAME.skips.jsonl``) so a restart does not ask them again.

Every write holds an exclusive ``fcntl`` lock on ``NAME.lock`` (a separate
file, because undo replaces the pair file's inode), re-reads what other
processes wrote, checks, writes and fsyncs before it returns. Undo rewrites
the file without the labeler's last record through a temporary file and
``os.replace``, so readers only ever see the old or the new whole file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from prefdiff.data import WINNERS, append_pair

ANSWERS = (*WINNERS, "skip")


class LabelConflict(Exception):
    """A request that would break the file's invariants (e.g. answering a pair twice)."""


@dataclass
class Action:
    """One labeler action as stored: an answer (a, b, tie) or a skip."""

    pair: str
    labeler: str
    answer: str
    time: float


class LabelStore:
    """Answers and skips of every labeler, for one pair file.

    :param pair_file: the JSONL pair file (created on the first answer).
    """

    def __init__(self, pair_file: str | Path) -> None:
        self.pair_file = Path(pair_file)
        self.skip_file = self.pair_file.with_name(self.pair_file.stem + ".skips.jsonl")
        self.lock_file = self.pair_file.with_name(self.pair_file.name + ".lock")
        self.pair_file.parent.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------- locking ----

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the exclusive lock shared by every process writing this pair file."""
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # ------------------------------------------------------------- reading ----

    @staticmethod
    def records(path: Path) -> list[dict[str, Any]]:
        """The JSON records of a pair or skip file; [] when it does not exist yet."""
        if not path.is_file():
            return []
        records = []
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line from a crash mid-write is not an answer
        return records

    def actions(self) -> list[Action]:
        """Every answer and skip on disk, oldest first."""
        found = [Action(r.get("id", ""), r.get("labeler", ""), r["winner"], float(r.get("time", 0.0)))
                 for r in self.records(self.pair_file) if "winner" in r]
        found += [Action(r["id"], r["labeler"], "skip", float(r["time"])) for r in self.records(self.skip_file)]
        return sorted(found, key=lambda a: a.time)

    def answered(self, labeler: str | None = None) -> dict[str, set[str]]:
        """Pair id -> the labelers who answered or skipped it (only ``labeler`` if given)."""
        seen: dict[str, set[str]] = {}
        for action in self.actions():
            if labeler is None or action.labeler == labeler:
                seen.setdefault(action.pair, set()).add(action.labeler)
        return seen

    # ------------------------------------------------------------- writing ----

    def record(self, pair: dict[str, Any], labeler: str, answer: str) -> dict[str, Any]:
        """Append ``labeler``'s answer to ``pair`` (its id, condition, a, b) durably.

        :raises LabelConflict: the labeler already answered or skipped this pair.
        """
        if answer not in ANSWERS:
            raise ValueError(f"answer must be one of {ANSWERS}, got {answer!r}")
        with self.locked():
            if any(a.pair == pair["id"] and a.labeler == labeler for a in self.actions()):
                raise LabelConflict(f"labeler '{labeler}' already answered pair '{pair['id']}'; "
                                    f"undo it first to change the answer")
            now = time.time()
            if answer == "skip":
                record = {"id": pair["id"], "labeler": labeler, "time": now}
                append_pair(self.skip_file, record)
            else:
                record = {"id": pair["id"], "condition": pair["condition"], "a": pair["a"], "b": pair["b"],
                          "winner": answer, "labeler": labeler, "time": now}
                append_pair(self.pair_file, record)
        return record

    def undo(self, labeler: str) -> Action | None:
        """Remove ``labeler``'s most recent answer or skip; None when there is none."""
        with self.locked():
            mine = [a for a in self.actions() if a.labeler == labeler]
            if not mine:
                return None
            last = mine[-1]
            path = self.skip_file if last.answer == "skip" else self.pair_file
            lines = path.read_text().splitlines(keepends=True)
            for i in range(len(lines) - 1, -1, -1):
                try:
                    rec = json.loads(lines[i])
                except json.JSONDecodeError:
                    continue
                if rec.get("id") == last.pair and rec.get("labeler") == labeler:
                    del lines[i]
                    break
            _replace_atomically(path, "".join(lines))
        return last


def _replace_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so a crash leaves the old or the new file, never a mix."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)
