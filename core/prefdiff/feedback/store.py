"""The pair file that labels go to (durable appends, a lock between processes, undo),
and the pairs handed out but not answered yet.

Answers are records of the core's pair format (:mod:`prefdiff.data`) with the
labeler's name and a timestamp, so `prefdiff fit` trains DPO/KTO on the file
as it is. Skips are not preferences; they go to a side file
(``NAME.skips.jsonl``) so a restart does not ask them again.

Both files follow :mod:`prefdiff.durable`: whole-line fsynced appends, a torn
last line (a crash mid-write) moved aside before the next append, rewrites
through a temporary file and a rename. Every write holds an exclusive
``fcntl`` lock on ``NAME.lock`` (a separate file, because undo replaces the
pair file's inode), re-reads what other processes wrote, checks, writes and
fsyncs before it returns.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from prefdiff.data import WINNERS, append_pair
from prefdiff.durable import append_record, atomic_write_bytes, read_records

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
        """The JSON records of a pair or skip file; [] when it does not exist yet.

        :raises UserError: a line in the middle is not a JSON record. A torn last
            line is not an answer and is skipped: the next append moves it aside.
        """
        if not path.is_file():
            return []
        return [record for _, record in read_records(path, torn_tail_ok=True)]

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

    def record(self, pair: dict[str, Any], labeler: str, answer: str, *,
               labels_per_pair: int | None = None) -> dict[str, Any]:
        """Append ``labeler``'s answer to ``pair`` (its id, condition, a, b) durably.

        :param labels_per_pair: refuse once this many labelers answered or skipped the pair.
        :raises LabelConflict: the labeler already answered or skipped this pair, or it has all its labels.
        """
        if answer not in ANSWERS:
            raise ValueError(f"answer must be one of {ANSWERS}, got {answer!r}")
        with self.locked():
            who = {a.labeler for a in self.actions() if a.pair == pair["id"]}
            if labeler in who:
                raise LabelConflict(f"labeler '{labeler}' already answered pair '{pair['id']}'; "
                                    f"undo it first to change the answer")
            if labels_per_pair is not None and len(who) >= labels_per_pair:
                raise LabelConflict(f"pair '{pair['id']}' already has its {labels_per_pair} label(s) "
                                    f"(--labels-per-pair); ask for the next pair")
            now = time.time()
            if answer == "skip":
                record = {"id": pair["id"], "labeler": labeler, "time": now}
                append_record(self.skip_file, record)
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
            lines = path.read_bytes().split(b"\n")  # joined back byte for byte, less one line
            for number, rec in reversed(read_records(path, torn_tail_ok=True)):
                if rec.get("id") == last.pair and rec.get("labeler") == labeler:
                    del lines[number - 1]
                    break
            atomic_write_bytes(path, b"\n".join(lines))
        return last



class Reservations:
    """Pairs handed out and not answered yet: each labeler holds the pair on their screen for a while.

    With ``--labels-per-pair N``, a pair is not handed out once its answers plus
    other labelers' holds reach N, so two labelers working in lockstep are not
    shown the same pair when it needs one more label. Holds live in this server
    process only; :meth:`LabelStore.record`'s limit is what holds across processes.

    :param seconds: how long a hold lasts; a labeler who walks away frees the pair after it.
    :param clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, seconds: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds, self.clock = seconds, clock
        self._held: dict[str, tuple[str, float]] = {}  # labeler -> (pair id, until)
        self._lock = threading.Lock()

    def view(self, labeler: str, answered: dict[str, set[str]]) -> dict[str, set[str]]:
        """``answered`` (pair id -> labelers) plus the other labelers holding each pair now."""
        with self._lock:
            return self._view(labeler, answered)

    def hand_out(self, labeler: str, answered: dict[str, set[str]],
                 pick: Callable[[dict[str, set[str]]], dict[str, Any] | None]) -> dict[str, Any] | None:
        """The pair ``pick`` chooses from :meth:`view`, held for ``labeler`` in place of what they held.

        Picking and holding happen under one lock, so two labelers asking at once
        cannot both be handed the last free place of a pair.
        """
        with self._lock:
            pair = pick(self._view(labeler, answered))
            if pair is None:
                self._held.pop(labeler, None)
            else:
                self._held[labeler] = (pair["id"], self.clock() + self.seconds)
            return pair

    def _view(self, labeler: str, answered: dict[str, set[str]]) -> dict[str, set[str]]:
        now = self.clock()
        self._held = {who: held for who, held in self._held.items() if held[1] > now}
        view = {pid: set(who) for pid, who in answered.items()}
        for who, (pid, _) in self._held.items():
            if who != labeler:  # a labeler's own hold must not hide their pair from them
                view.setdefault(pid, set()).add(who)
        return view
