"""The label store: durable appends in the core's pair format, no answer twice, no more answers than
--labels-per-pair, a torn last line moved aside, undo, many processes; pairs held while on screen."""

import json
import multiprocessing

import pytest
import torch

from prefdiff.data import PairDataset, read_pairs
from prefdiff.feedback.candidates import CandidatePool, write_sample_folder
from prefdiff.feedback.store import LabelConflict, LabelStore, Reservations


@pytest.fixture
def folder(tmp_path):
    samples = torch.rand(3, 3, 3, 8, 8) * 2 - 1
    write_sample_folder(tmp_path, samples, [torch.tensor(i) for i in range(3)])
    return tmp_path


def _pairs(folder):
    return list(CandidatePool(folder, folder / "pairs.jsonl").pairs.values())


def test_answers_are_pair_records_the_trainers_read(folder):
    store = LabelStore(folder / "pairs.jsonl")
    pairs = _pairs(folder)
    store.record(pairs[0], "ann", "a")
    store.record(pairs[1], "ann", "b")
    store.record(pairs[2], "ann", "tie")
    store.record(pairs[3], "ann", "skip")
    records = read_pairs(folder / "pairs.jsonl")
    assert [r["winner"] for r in records] == ["a", "b", "tie"]
    assert all(r["labeler"] == "ann" and r["time"] > 1e9 for r in records)
    data = PairDataset(folder / "pairs.jsonl")  # ties dropped
    assert len(data) == 2
    item = data[1]  # "b" won: x_w is sample b
    b = CandidatePool(folder, folder / "pairs.jsonl").pairs[pairs[1]["id"]]["b"]
    from safetensors.torch import load_file
    assert torch.equal(item["x_w"], load_file(str(folder / b))["sample"])
    assert store.answered("ann").keys() == {p["id"] for p in pairs[:4]}  # the skip counts as seen


def test_same_labeler_cannot_answer_twice_and_file_is_unchanged(folder):
    store = LabelStore(folder / "pairs.jsonl")
    pair = _pairs(folder)[0]
    store.record(pair, "ann", "a")
    before = (folder / "pairs.jsonl").read_bytes()
    with pytest.raises(LabelConflict, match="already answered"):
        store.record(pair, "ann", "b")
    with pytest.raises(LabelConflict):
        store.record(pair, "ann", "skip")
    assert (folder / "pairs.jsonl").read_bytes() == before
    store.record(pair, "bob", "b")  # another labeler may answer the same pair
    assert len(read_pairs(folder / "pairs.jsonl")) == 2


def test_undo_removes_only_the_labelers_last_action(folder):
    store = LabelStore(folder / "pairs.jsonl")
    pairs = _pairs(folder)
    store.record(pairs[0], "ann", "a")
    store.record(pairs[0], "bob", "b")
    store.record(pairs[1], "ann", "skip")
    store.record(pairs[2], "bob", "tie")
    undone = store.undo("ann")
    assert (undone.pair, undone.answer) == (pairs[1]["id"], "skip")
    undone = store.undo("ann")
    assert (undone.pair, undone.answer) == (pairs[0]["id"], "a")
    assert store.undo("ann") is None
    left = [(r["id"], r["labeler"], r["winner"]) for r in read_pairs(folder / "pairs.jsonl")]
    assert left == [(pairs[0]["id"], "bob", "b"), (pairs[2]["id"], "bob", "tie")]
    store.record(pairs[0], "ann", "b")  # after undo the pair may be answered again
    assert LabelStore(folder / "pairs.jsonl").answered("ann") == {pairs[0]["id"]: {"ann"}}


def _worker(args):
    pair_file, labeler, pairs = args
    store = LabelStore(pair_file)
    landed = 0
    for pair in pairs:
        try:
            store.record(pair, labeler, "a")
            landed += 1
        except LabelConflict:
            pass
        if landed % 5 == 4 and store.undo(labeler) is not None:
            landed -= 1
    return landed


def test_processes_writing_at_once_keep_every_line_whole(tmp_path):
    samples = torch.rand(8, 6, 3, 4, 4)
    write_sample_folder(tmp_path, samples, [torch.tensor(i % 4) for i in range(8)])
    pairs = _pairs(tmp_path)  # 8 conditions x 15 pairs
    pair_file = tmp_path / "pairs.jsonl"
    # Four processes, two per labeler name: each (pair, labeler) may land once only.
    jobs = [(pair_file, name, pairs) for name in ("ann", "bob", "ann", "bob")]
    with multiprocessing.get_context("fork").Pool(4) as pool:
        landed = pool.map(_worker, jobs)
    lines = pair_file.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is whole JSON
    keys = [(r["id"], r["labeler"]) for r in records]
    assert len(keys) == len(set(keys)) == sum(landed)
    assert len(read_pairs(pair_file)) == sum(landed)


def test_an_answer_after_a_torn_last_line_is_kept_whole(folder):
    pair_file = folder / "pairs.jsonl"
    pairs = _pairs(folder)
    half = json.dumps({"id": pairs[1]["id"], "condition": pairs[1]["condition"], "a": pairs[1]["a"]})[:40]
    pair_file.write_text(half)  # a crash mid-write: half a record, no newline
    store = LabelStore(pair_file)
    assert store.answered() == {}  # the torn line is not an answer
    store.record(pairs[0], "ann", "a")
    assert [(r["id"], r["winner"]) for r in read_pairs(pair_file)] == [(pairs[0]["id"], "a")]
    assert LabelStore(pair_file).answered("ann") == {pairs[0]["id"]: {"ann"}}
    assert (folder / "pairs.jsonl.torn").read_text().endswith(half + "\n")


def test_a_pair_takes_no_more_than_labels_per_pair_answers(folder):
    pair_file = folder / "pairs.jsonl"
    store = LabelStore(pair_file)
    pair = _pairs(folder)[0]
    store.record(pair, "ann", "a", labels_per_pair=2)
    store.record(pair, "bob", "skip", labels_per_pair=2)  # a skip takes a place too: bob was asked
    before = pair_file.read_bytes(), store.skip_file.read_bytes()
    for answer in ("b", "skip"):
        with pytest.raises(LabelConflict, match=rf"pair '{pair['id']}' already has its 2 label\(s\)"):
            store.record(pair, "carl", answer, labels_per_pair=2)
    assert (pair_file.read_bytes(), store.skip_file.read_bytes()) == before
    store.undo("bob")
    store.record(pair, "carl", "b", labels_per_pair=2)  # bob's place is free again
    assert [r["labeler"] for r in read_pairs(pair_file)] == ["ann", "carl"]


def test_a_pair_handed_out_is_held_from_other_labelers_for_a_while(folder):
    pool = CandidatePool(folder, folder / "pairs.jsonl")
    now = [0.0]
    holds = Reservations(seconds=60, clock=lambda: now[0])

    def ask(who, answered=None):
        return holds.hand_out(who, answered or {}, lambda view: pool.next_for(who, view, labels_per_pair=1))["id"]

    first = ask("ann")
    assert ask("ann") == first  # a reload shows ann the pair she holds
    second = ask("bob")
    assert second != first
    assert holds.view("carl", {}) == {first: {"ann"}, second: {"bob"}}
    assert ask("carl") not in (first, second)
    now[0] = 61  # every hold ran out: ann walked away
    assert ask("dan") == first
    # With one label wanted, dan's hold keeps the first pair from eve and bob's answer the second.
    assert ask("eve", {second: {"bob"}}) not in (first, second)
