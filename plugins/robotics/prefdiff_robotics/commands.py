"""`prefdiff robotics make-data FILE` (the commands hook): scripted demonstrations in robomimic's layout."""

from __future__ import annotations

import time
from pathlib import Path

from prefdiff.api import UserError


def make_data(file: Path, demos: int = 2000, seed: int = 0,
              fractions: tuple[float, float, float] = (0.75, 0.17, 0.08)) -> None:
    """Write demonstrations in robomimic's HDF5 layout.

    :param file: the HDF5 file to write (replaced atomically).
    :param demos: number of demonstrations.
    :param seed: seeds layouts and demonstrators.
    :param fractions: share of expert, perturbed and failing demonstrations, e.g. [0.75, 0.17, 0.08].
    """
    if demos < 1:
        raise UserError(f"--demos must be >= 1, got {demos}")
    if min(fractions) < 0 or sum(fractions) <= 0:
        raise UserError(f"--fractions must be >= 0 and not all 0, got {list(fractions)}")
    from prefdiff_robotics.demos import write_robomimic
    from prefdiff_robotics.expert import generate_demos

    start = time.perf_counter()
    kinds: dict[str, int] = {}

    def counted():
        for demo in generate_demos(demos, seed=seed, fractions=tuple(fractions)):
            kinds[demo.kind] = kinds.get(demo.kind, 0) + 1
            yield demo

    path = write_robomimic(file, counted())
    summary = ", ".join(f"{v} {k}" for k, v in sorted(kinds.items()))
    print(f"wrote {demos} demonstrations ({summary}) to {path} in {time.perf_counter() - start:.1f} s")
