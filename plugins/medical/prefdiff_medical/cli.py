"""The `prefdiff-medical` command: write a synthetic task, train a segmenter.

Mistakes a user can fix print one line naming the culprit and the fix and
exit with code 2, as `prefdiff` does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from prefdiff.errors import UserError


def _parser() -> argparse.ArgumentParser:
    from prefdiff_medical.segmenters import ARCHITECTURES
    from prefdiff_medical.synthetic import SyntheticTask

    d = SyntheticTask()
    parser = argparse.ArgumentParser(prog="prefdiff-medical", description="Medical imaging tools for prefdiff.")
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make-data", help="write a synthetic Decathlon task (dataset.json, imagesTr, labelsTr)")
    make.add_argument("directory", help="the task folder to create (must not exist or be empty)")
    make.add_argument("--volumes", type=int, default=d.volumes, help=f"training volumes (default {d.volumes})")
    make.add_argument("--size", type=int, default=d.size, help=f"in-plane side in voxels (default {d.size})")
    make.add_argument("--depth", type=int, default=d.depth, help=f"slices per volume (default {d.depth})")
    make.add_argument("--classes", type=int, default=d.num_classes, help="foreground label classes")
    make.add_argument("--objects", type=int, default=d.objects, help="spheres per volume")
    make.add_argument("--noise", type=float, default=d.noise, help="maximum noise amplitude")
    make.add_argument("--seed", type=int, default=d.seed)

    seg = sub.add_parser("train-segmenter", help="train a segmenter for the rewards on a task's training split")
    seg.add_argument("task", help="a Decathlon task folder")
    seg.add_argument("out", help="checkpoint to write (.safetensors)")
    seg.add_argument("--arch", choices=ARCHITECTURES, default="unet", help="unet (reward) or basicunet (judge)")
    seg.add_argument("--steps", type=int, default=800)
    seg.add_argument("--batch-size", type=int, default=16)
    seg.add_argument("--lr", type=float, default=3e-3)
    seg.add_argument("--seed", type=int, default=1)
    seg.add_argument("--resolution", type=int, default=32, help="in-plane side the slices are resized to")
    seg.add_argument("--percentiles", type=float, nargs=2, default=(0.5, 99.5), metavar=("LOW", "HIGH"),
                     help="intensity percentiles mapped to [-1, 1] (0 100: min-max)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `prefdiff-medical` console script."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.command == "make-data":
            from prefdiff_medical.synthetic import SyntheticTask, make_task

            task = SyntheticTask(volumes=args.volumes, size=args.size, depth=args.depth,
                                 num_classes=args.classes, objects=args.objects, noise=args.noise, seed=args.seed)
            out = make_task(Path(args.directory), task)
            print(f"wrote {task.volumes} volumes to {out} (dataset.json, imagesTr/, labelsTr/)")
        else:
            from prefdiff_medical.segmenters import train_segmenter

            train_segmenter(args.task, args.out, arch=args.arch, steps=args.steps, batch_size=args.batch_size,
                            lr=args.lr, seed=args.seed, resolution=args.resolution,
                            percentiles=tuple(args.percentiles))
            print(f"wrote {args.out}")
    except UserError as exc:
        print(f"prefdiff-medical: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
