"""The `prefdiff-driving` command: `make-data DIR` writes a synthetic nuScenes dataroot."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Sequence

from prefdiff.errors import UserError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prefdiff-driving", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make-data", help="write a synthetic dataroot in the nuScenes schema")
    make.add_argument("dir", help="the dataroot to write (replaced atomically)")
    make.add_argument("--version", default="v1.0-mini", help="v1.0-mini (the ten mini scenes) or v1.0-trainval")
    make.add_argument("--scenes", type=int, default=None,
                      help="train scenes for v1.0-trainval (a quarter as many val scenes); default 40")
    make.add_argument("--duration", type=float, default=20.0, help="seconds per scene (keyframes at 2 Hz)")
    make.add_argument("--seed", type=int, default=0, help="seeds the town's drives and traffic")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.scenes is not None and args.scenes < 1:
            raise UserError(f"--scenes must be >= 1, got {args.scenes}")
        from prefdiff_driving.synthetic import make_dataset

        start = time.perf_counter()
        root = make_dataset(args.dir, args.version, scenes=args.scenes, seed=args.seed, duration=args.duration)
        n = len(json.loads((root / args.version / "scene.json").read_text()))
        samples = len(json.loads((root / args.version / "sample.json").read_text()))
        print(f"wrote {n} scenes ({samples} keyframes, version {args.version}, map singapore-onenorth) "
              f"to {root} in {time.perf_counter() - start:.1f} s")
        return 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
