"""The `prefdiff` command.

A mistake the user can fix (bad config, unknown name, bad file) prints one
line naming the culprit and the fix and exits with code 2; a traceback means
a bug in prefdiff.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from prefdiff.errors import UserError


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `prefdiff` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _dispatch(argv)
    except UserError as exc:
        print(f"prefdiff: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prefdiff", description="Align diffusion models with preferences.")
    sub = parser.add_subparsers(dest="command", required=True)

    plugins = sub.add_parser("plugins", help="list plugins and what they register; install or remove one")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins_sub = plugins.add_subparsers(dest="action")
    install = plugins_sub.add_parser("install", help="pip install a plugin into prefdiff's environment")
    install.add_argument("target", help="a package name or a path to a plugin folder")
    install.add_argument("-e", "--editable", action="store_true", help="install a folder in editable mode")
    uninstall = plugins_sub.add_parser("uninstall", help="pip uninstall a plugin distribution")
    uninstall.add_argument("name")

    bench = sub.add_parser("bench", help="pretrain, align with each method, evaluate, write a report")
    bench.add_argument("domain", help="a registered benchmark (`prefdiff plugins` lists them)")
    bench.add_argument("--method", action="append", default=None, help="a method to run (repeatable)")
    bench.add_argument("--quick", action="store_true", help="the small settings (minutes)")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--out", default=None, help="output folder (default runs/bench-DOMAIN)")
    bench.add_argument("--cache", default=None, help="cache folder for base models and data")
    bench.add_argument("--threads", type=int, default=None,
                       help="torch threads (1 is faster when other jobs share the cores)")
    bench.add_argument("--reward", default=None, help="train with this reward instead of the recipe's")
    bench.add_argument("--judge", default=None, help="evaluate with this reward instead of the recipe's judge")

    new = sub.add_parser("new-plugin", help="write a pip-installable plugin package to start from")
    new.add_argument("name", help="plugin name: lower-case letters, digits, underscores")
    new.add_argument("--dir", default=None, help="target folder (default ./prefdiff-NAME)")

    sub.add_parser("fit", help="train with LightningCLI conventions (--config FILE.yaml)", add_help=False)

    sample = sub.add_parser("sample", help="sample a saved model on a dataset's conditions")
    _model_args(sample)
    sample.add_argument("--n", type=int, default=16, help="number of samples")
    sample.add_argument("--out", required=True, help="output folder")

    edit = sub.add_parser("edit", help="edit real samples: SDEdit under a new condition, or inpaint")
    _model_args(edit)
    edit.add_argument("--index", type=int, default=0, help="dataset item to edit")
    edit.add_argument("--cond-from", type=int, default=None,
                      help="take the new condition from this dataset item (default: keep)")
    edit.add_argument("--strength", type=float, default=0.6, help="SDEdit strength in (0, 1]")
    edit.add_argument("--mask", default=None,
                      help="safetensors file with a 'keep' tensor (1 keeps the input): inpaint instead")
    edit.add_argument("--out", required=True, help="output folder")

    from prefdiff.feedback import commands

    commands.add_label_arguments(sub.add_parser("label", help="serve the labeling page: people pick the "
                                                             "better of two samples"))
    reward_model = sub.add_parser("reward-model", help="learn a reward model from labelled pairs")
    reward_model_sub = reward_model.add_subparsers(dest="action", required=True)
    commands.add_reward_model_arguments(reward_model_sub.add_parser("train", help="fit a Bradley-Terry "
                                                                                  "reward model"))
    return parser


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a saved model folder")
    parser.add_argument("--lora", default=None, help="a LoRA adapter folder to apply")
    parser.add_argument("--dataset", required=True, help="registered dataset giving the conditions")
    parser.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--split", default="test")
    parser.add_argument("--conditioner", default=None)
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps")
    parser.add_argument("--seed", type=int, default=0)


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] == "fit":
        from prefdiff.fit import fit

        return fit(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "plugins":
        return _plugins(args)
    if args.command == "bench":
        from prefdiff.bench import run_benchmark

        if args.threads is not None:
            if args.threads < 1:
                raise UserError(f"--threads must be >= 1, got {args.threads}")
            import torch

            torch.set_num_threads(args.threads)
        out = Path(args.out or f"runs/bench-{args.domain}{'-quick' if args.quick else ''}")
        run_benchmark(args.domain, methods=args.method, quick=args.quick, seed=args.seed, out=out,
                      cache=Path(args.cache) if args.cache else None, reward=args.reward, judge=args.judge)
        print(f"report: {out / 'report.md'}\nresults: {out / 'results.json'}\nsamples: {out / 'samples.png'}")
        return 0
    if args.command == "new-plugin":
        from prefdiff.scaffold import new_plugin

        root = new_plugin(args.name, args.dir)
        print(f"wrote {root}; install it with: prefdiff plugins install -e {root}")
        return 0
    if args.command in ("label", "reward-model"):
        from prefdiff.feedback import commands

        return commands.label(args) if args.command == "label" else commands.reward_model(args)
    if args.command in ("sample", "edit"):
        from prefdiff.generate import edit, sample_to_folder

        return (sample_to_folder if args.command == "sample" else edit)(args)
    raise AssertionError(args.command)


def _plugins(args: argparse.Namespace) -> int:
    from prefdiff.plugins import get_manager

    if args.action in ("install", "uninstall"):
        return _pip(args)
    infos = get_manager().plugins()
    if args.json:
        print(json.dumps([info.as_dict() for info in infos], indent=2))
        return 0
    for info in infos:
        print(f"{info.name} {info.version} ({info.source})")
        for kind, names in info.registered.items():
            if names:
                print(f"  {kind}: {', '.join(names)}")
        for error in info.errors:
            print(f"  ERROR: {error}")
    return 0


def _pip(args: argparse.Namespace) -> int:
    # Like `llm install`: pip runs in the interpreter that runs prefdiff.
    if args.action == "install":
        target = args.target
        if os.path.exists(target):
            target = str(Path(target).resolve())
        cmd = [sys.executable, "-m", "pip", "install", *(["-e"] if args.editable else []), target]
    else:
        cmd = [sys.executable, "-m", "pip", "uninstall", "-y", args.name]
    result = subprocess.run(cmd)
    if result.returncode != 0:
        raise UserError(f"pip {args.action} {getattr(args, 'target', None) or args.name} failed "
                        f"(exit {result.returncode}); see pip's message above")
    return 0


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``["size=64", "root=/data"]`` -> ``{"size": 64, "root": "/data"}`` (values parsed as YAML)."""
    import yaml

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--dataset-option '{pair}' is not KEY=VALUE")
        options[key] = yaml.safe_load(value)
    return options


if __name__ == "__main__":
    raise SystemExit(main())
