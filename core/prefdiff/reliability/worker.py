"""Processes the catalogue starts and kills: a tiny benchmark through `prefdiff bench`, and pair mining.

    python -m prefdiff.reliability.worker bench OUT CACHE MARKER [RECIPE_OPTIONS_JSON]
    python -m prefdiff.reliability.worker mine OUT SEED MARKER
    python -m prefdiff.reliability.worker dataset NAME OPTIONS_JSON

Each touches MARKER when its interesting part starts (the command, the writing of the pairs), and
``bench`` touches MARKER.done when the command has returned;
``dataset`` builds a registered dataset (and whatever cache its plugin writes) and prints its length.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MINED_CONDITIONS = 48


def tiny_bench_recipe(**overrides):
    """The benchmark the catalogue runs: the testing recipe with dpo (on mined pairs) and ddpo."""
    from prefdiff.testing import tiny_recipe

    return tiny_recipe(**{"default_methods": ["dpo", "ddpo"], **overrides})


def bench(out: str, cache: str, marker: str, options: str = "{}") -> int:
    """`prefdiff bench tiny --quick` with the tiny recipe registered, as its plugin would."""
    from prefdiff.cli import main
    from prefdiff.testing import RecipePlugin, registered_plugin

    with registered_plugin(RecipePlugin(tiny_bench_recipe(**json.loads(options))), "tiny"):
        Path(marker).touch()
        code = main(["bench", "tiny", "--quick", "--threads", "1", "--out", out, "--cache", cache])
    Path(f"{marker}.done").touch()  # a kill from here on lands in the interpreter's exit, after the run
    return code


def mine(out: str, seed: str, marker: str) -> int:
    """Mine best/worst pairs of a tiny model into ``out`` (appending to what is there)."""
    import torch

    from prefdiff.builtin.example import smoothness
    from prefdiff.data import mine as mine_pairs
    from prefdiff.data import write_best_worst_pairs
    from prefdiff.testing import tiny_denoiser, tiny_scheduler

    denoiser = tiny_denoiser(sample_size=8, block_out_channels=(8, 16))
    conditions = [torch.tensor(c % 4) for c in range(MINED_CONDITIONS)]
    mined = mine_pairs(denoiser, tiny_scheduler(), smoothness(), conditions, per_condition=2, num_steps=2,
                       eta=1.0, seed=int(seed))
    Path(marker).touch()
    write_best_worst_pairs(mined, out, labeler="reward:smoothness")
    return 0


def dataset(name: str, options: str) -> int:
    """Build the registered dataset ``name`` with ``options`` (JSON), as a command would."""
    import logging

    from prefdiff.plugins import get_manager

    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    print(len(get_manager().dataset(name, **json.loads(options))))
    return 0


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    sys.exit({"bench": bench, "mine": mine, "dataset": dataset}[command](*args))
