"""Data: the pair format, mining, the training shuffle and batches of conditions (one module each).

- :mod:`~prefdiff.data.pairs`: the JSONL pair file and the dataset of its decided pairs;
- :mod:`~prefdiff.data.mining`: pairs and scored samples mined from a model with a reward;
- :mod:`~prefdiff.data.sampler`: the resumable, DDP-exact training shuffle;
- :mod:`~prefdiff.data.conditions`: select, concatenate, repeat and count condition batches.
"""

from prefdiff.data.conditions import (collate, concat, condition_count, infer_sample_shape, repeat_condition,
                                      select)
from prefdiff.data.mining import MinedSamples, WeightedSamples, mine, write_best_worst_pairs
from prefdiff.data.pairs import (WINNERS, PairDataset, append_pair, condition_tensors, read_pairs, save_tensors,
                                 tensors_condition)
from prefdiff.data.sampler import EpochSampler

__all__ = ["WINNERS", "EpochSampler", "MinedSamples", "PairDataset", "WeightedSamples", "append_pair", "collate",
           "concat", "condition_count", "condition_tensors", "infer_sample_shape", "mine", "read_pairs",
           "repeat_condition", "save_tensors", "select", "tensors_condition", "write_best_worst_pairs"]
