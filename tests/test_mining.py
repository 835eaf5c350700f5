"""Pair mining (prefdiff.data): the mined winner is the best sample of its condition, the loser the worst."""

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
