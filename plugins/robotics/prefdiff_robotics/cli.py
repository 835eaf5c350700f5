"""The `prefdiff-robotics` command: `make-data FILE` writes scripted demonstrations."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

from prefdiff.errors import UserError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prefdiff-robotics", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make-data", help="write demonstrations in robomimic's HDF5 layout")
    make.add_argument("file", help="the HDF5 file to write (replaced atomically)")
    make.add_argument("--demos", type=int, default=2000, help="number of demonstrations")
    make.add_argument("--seed", type=int, default=0, help="seeds layouts and demonstrators")
    make.add_argument("--fractions", type=float, nargs=3, default=(0.75, 0.17, 0.08),
                      metavar=("EXPERT", "PERTURBED", "FAILING"), help="share of each kind of demonstration")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.demos < 1:
            raise UserError(f"--demos must be >= 1, got {args.demos}")
        if min(args.fractions) < 0 or sum(args.fractions) <= 0:
            raise UserError(f"--fractions must be >= 0 and not all 0, got {list(args.fractions)}")
        from prefdiff_robotics.demos import write_robomimic
        from prefdiff_robotics.expert import generate_demos

        start = time.perf_counter()
        kinds: dict[str, int] = {}

        def counted():
            for demo in generate_demos(args.demos, seed=args.seed, fractions=args.fractions):
                kinds[demo.kind] = kinds.get(demo.kind, 0) + 1
                yield demo

        path = write_robomimic(args.file, counted())
        summary = ", ".join(f"{v} {k}" for k, v in sorted(kinds.items()))
        print(f"wrote {args.demos} demonstrations ({summary}) to {path} in {time.perf_counter() - start:.1f} s")
        return 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
