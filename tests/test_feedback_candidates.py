"""Candidate pairs: every two samples of a condition, least-sure first, drawn from a model on demand."""

import pytest
import torch

from prefdiff.errors import UserError
from prefdiff.feedback.candidates import CandidatePool, ModelSource, write_sample_folder
from prefdiff.models import save_model
from prefdiff.testing import tiny_denoiser, tiny_scheduler


def _brightness_reward(samples, conditions=None):
    return samples.flatten(1).mean(1), {}


def test_closest_scores_are_asked_first(tmp_path):
    levels = torch.tensor([[0.0, 0.5, 0.52], [-0.9, 0.9, 0.1]])
    samples = levels.view(2, 3, 1, 1, 1).expand(2, 3, 3, 4, 4).clone()
    write_sample_folder(tmp_path, samples, [torch.tensor(0), torch.tensor(1)])
    pool = CandidatePool(tmp_path, tmp_path / "pairs.jsonl", reward=_brightness_reward)
    assert len(pool.pairs) == 6
    # gaps: 0.02, 0.5, 0.52 in condition 0; 0.8, 1.0, 1.8 in condition 1
    assert pool.order == ["c000000-1-2", "c000000-0-1", "c000000-0-2", "c000001-1-2", "c000001-0-2",
                          "c000001-0-1"]
    answered = {"c000000-1-2": {"ann"}}
    assert pool.next_for("ann", answered, labels_per_pair=2)["id"] == "c000000-0-1"
    assert pool.next_for("bob", answered, labels_per_pair=2)["id"] == "c000000-1-2"
    assert pool.next_for("bob", answered, labels_per_pair=1)["id"] == "c000000-0-1"
    assert pool.remaining_for("ann", answered, labels_per_pair=2) == 5


def test_pair_records_are_relative_to_the_pair_file(tmp_path):
    write_sample_folder(tmp_path / "s", torch.zeros(1, 2, 3, 4, 4), [torch.tensor(0)])
    pool = CandidatePool(tmp_path / "s", tmp_path / "labels" / "pairs.jsonl")
    (pair,) = pool.pairs.values()
    assert pair == {"id": "c000000-0-1", "condition": "../s/conds/c000000.safetensors",
                    "a": "../s/samples/c000000_0.safetensors", "b": "../s/samples/c000000_1.safetensors"}


def test_empty_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="holds no candidate pairs"):
        CandidatePool(tmp_path, tmp_path / "pairs.jsonl")


def test_model_source_draws_when_labelers_run_out(tmp_path):
    base = tmp_path / "base"
    save_model(tiny_denoiser(sample_size=8), base)
    tiny_scheduler().save_pretrained(base / "scheduler")
    source = ModelSource(str(base), "synthetic_textures", conditioner="class_label",
                         dataset_options={"resolution": 8, "size": 5}, per_condition=3, conditions_per_draw=2,
                         num_steps=2)
    folder = tmp_path / "drawn"
    pool = CandidatePool(folder, folder / "pairs.jsonl", source=source)
    assert len(pool.pairs) == 2 * 3  # the first draw: 2 conditions x 3 pairs
    answered = {pid: {"ann"} for pid in pool.pairs}
    nxt = pool.next_for("ann", answered, labels_per_pair=1)
    assert nxt is not None and nxt["id"][:7] in ("d000002", "d000003") and len(pool.pairs) == 12
    for _ in range(3):  # the dataset has 5 conditions: then it stops drawing
        answered.update({pid: {"ann"} for pid in pool.pairs})
        pool.next_for("ann", answered, labels_per_pair=1)
    assert len(pool.pairs) == 5 * 3
    assert pool.next_for("ann", {pid: {"ann"} for pid in pool.pairs}, labels_per_pair=1) is None
    # A restarted server picks up what was drawn and continues after it.
    again = CandidatePool(folder, folder / "pairs.jsonl", source=source)
    assert set(again.pairs) == set(pool.pairs)
