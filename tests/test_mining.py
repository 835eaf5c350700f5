"""Pair mining (prefdiff.data): the mined winner is the best sample of its condition, the loser the worst."""

import pytest
import torch

from prefdiff.builtin.example import smoothness
from prefdiff.data import PairDataset, mine, read_pairs, write_best_worst_pairs
from prefdiff.testing import tiny_denoiser, tiny_scheduler


def test_mined_pairs_put_the_best_sample_first(tmp_path):
    reward = smoothness()
    conditions = [torch.tensor(c) for c in range(4)]  # distinct, so a pair's condition names its row
    denoiser = tiny_denoiser(sample_size=8, block_out_channels=(8, 16))
    mined = mine(denoiser, tiny_scheduler(), reward, conditions, per_condition=4, num_steps=3,
                 eta=1.0, seed=0, batch_size=6)
    assert mined.samples.shape[:2] == (4, 4)
    rescored = reward(mined.samples.flatten(0, 1))[0].view(4, 4)
    torch.testing.assert_close(mined.rewards, rescored)
    assert (mined.rewards.max(1).values > mined.rewards.min(1).values).all()

    pair_file = write_best_worst_pairs(mined, tmp_path, "reward:smoothness")
    assert len(read_pairs(pair_file)) == 4
    pairs = PairDataset(pair_file)
    seen = set()
    for index in range(len(pairs)):
        item = pairs[index]
        row = int(item["cond"])
        seen.add(row)
        assert torch.equal(item["x_w"], mined.samples[row, mined.rewards[row].argmax()])
        assert torch.equal(item["x_l"], mined.samples[row, mined.rewards[row].argmin()])
        r_w, r_l = reward(torch.stack([item["x_w"], item["x_l"]]))[0]
        assert r_w > r_l
    assert seen == {0, 1, 2, 3}


def made(rewards, conditions=None, seed=0):
    """MinedSamples of hand-chosen rewards: 2 samples of [1, 2, 2] per condition, drawn from ``seed``."""
    from prefdiff.data.mining import MinedSamples

    rewards = torch.tensor(rewards, dtype=torch.float32)
    samples = torch.rand(*rewards.shape, 1, 2, 2, generator=torch.Generator().manual_seed(seed))
    conditions = conditions or [torch.tensor(i) for i in range(rewards.shape[0])]
    return MinedSamples(samples, rewards, conditions)


def test_mining_twice_into_one_folder_keeps_the_first_runs_pairs(tmp_path):
    first, second = made([[0.1, 0.9], [0.8, 0.2]], seed=1), made([[0.3, 0.7], [0.6, 0.4]], seed=2)
    write_best_worst_pairs(first, tmp_path, "reward:r")
    pair_file = write_best_worst_pairs(second, tmp_path, "reward:r")
    records = read_pairs(pair_file)
    assert len(records) == 4 and len({r["id"] for r in records}) == 4
    pairs = PairDataset(pair_file)
    # The first run's lines still name the first run's samples: the second wrote files of its own.
    assert torch.equal(pairs[0]["x_w"], first.samples[0, 1]) and torch.equal(pairs[1]["x_w"], first.samples[1, 0])
    assert torch.equal(pairs[2]["x_w"], second.samples[0, 1]) and torch.equal(pairs[3]["x_w"], second.samples[1, 0])


def test_a_tied_condition_is_skipped_and_the_ones_after_it_kept(tmp_path):
    pair_file = write_best_worst_pairs(made([[0.5, 0.5], [0.1, 0.9], [0.7, 0.3]]), tmp_path, "reward:r")
    assert [r["id"].split("-")[0] for r in read_pairs(pair_file)] == ["c00001", "c00002"]


def test_ties_everywhere_keep_no_pairs_and_say_so(tmp_path):
    from prefdiff.errors import UserError

    with pytest.raises(UserError, match="pair mining kept no pairs"):
        write_best_worst_pairs(made([[0.5, 0.5], [0.2, 0.2]]), tmp_path, "reward:r")


def test_each_record_names_its_prompt_labeler_and_time(tmp_path):
    import time

    before = time.time()
    pair_file = write_best_worst_pairs(made([[0.1, 0.9]], conditions=["a red circle"]), tmp_path, "reward:r")
    assert pair_file == tmp_path / "pairs.jsonl"  # the name `prefdiff fit --data.pairs FOLDER` reads
    (record,) = read_pairs(pair_file)
    assert record["prompt"] == "a red circle" and "condition" not in record
    assert record["labeler"] == "reward:r" and before <= record["time"] <= time.time()
    assert record["winner"] == "a"


def test_weighted_samples_pair_each_sample_with_its_condition_and_reward():
    from prefdiff.data.mining import WeightedSamples

    mined = made([[0.1, 0.9], [0.8, 0.2], [0.4, 0.6]])
    data = WeightedSamples(mined)
    assert len(data) == 6
    item = data[3]  # condition 1, sample 1
    assert torch.equal(item["x0"], mined.samples[1, 1]) and int(item["cond"]) == 1
    assert float(item["reward"]) == pytest.approx(0.2)
