"""The `prefdiff` command.

Every command parses through jsonargparse, as `prefdiff fit` does through
LightningCLI, so each takes ``--config FILE.yaml`` and ``--print_config`` the
same way. Plugins add their own commands under ``prefdiff PLUGIN ...`` with
the ``prefdiff_register_commands`` hook.

A mistake the user can fix (bad config, unknown name, bad file) prints one
line naming the culprit and the fix and exits with code 2; a traceback means
a bug in prefdiff. Ctrl-C prints one line and exits with code 130, also when
Lightning caught the interrupt first (it shuts down and exits with 1).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from prefdiff.errors import UserError

CORE_COMMANDS = ("plugins", "bench", "new-plugin", "fit", "sample", "edit", "label", "reward-model")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `prefdiff` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from prefdiff.threads import prepare_threads

    prepare_threads()  # before anything imports torch
    interrupted = _InterruptWatch()
    try:
        return _dispatch(argv)
    except UserError as exc:
        print(f"prefdiff: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    except SystemExit:
        if not interrupted.seen:  # a SystemExit of its own, not Lightning's answer to Ctrl-C
            raise
    finally:
        interrupted.restore()
    print(f"prefdiff: interrupted; {_AFTER_INTERRUPT.get(_command_of(argv), 'nothing was left half written')}",
          file=sys.stderr)
    return 130


def _command_of(argv: list[str]) -> str:
    """The command word of ``argv``: the first word that is neither an option nor ``--config``'s value
    (`prefdiff --config X fit`), never an option's value further on (`prefdiff sample --out bench`)."""
    value = False
    for word in argv:
        if value:
            value = False
        elif word in ("-c", "--config"):
            value = True
        elif not word.startswith("-"):
            return word
    return ""


#: What the interrupt line adds, per command: what survives and how to go on.
_AFTER_INTERRUPT = {
    "fit": "checkpoints written so far are kept; rerun the same command with --ckpt_path last to resume",
    "bench": "the output folder was left as it was; base models and data already cached are reused on the next run",
    "label": "the labeling page stopped; every answer given is in the pair file",
}


class _InterruptWatch:
    """Remembers a Ctrl-C (SIGINT) while it raises KeyboardInterrupt as Python's own handler does.

    Lightning's trainer catches KeyboardInterrupt, shuts down and calls ``sys.exit(1)``; this is how
    :func:`main` tells that exit from any other one.
    """

    def __init__(self) -> None:
        self.seen = False
        self._previous = None
        current = signal.getsignal(signal.SIGINT)
        if not callable(current):  # ignored (a job started with `&`), or not set from Python: leave it so
            return
        try:
            signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread: signals cannot be handled here
            return
        self._previous = current

    def _on_sigint(self, signum, frame) -> None:
        self.seen = True
        raise KeyboardInterrupt

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _subparser(description: str):
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(description=description, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of these options")
    return parser


def _parser(plugin_commands: dict[str, dict[str, Any]]):
    from jsonargparse import ArgumentParser

    from prefdiff.commands import add_function_command
    from prefdiff.feedback import commands as feedback

    parser = ArgumentParser(prog="prefdiff", description="Align diffusion models with preferences.",
                            exit_on_error=False)
    sub = parser.add_subcommands(dest="command")

    plugins = _subparser("List plugins and what they register; install or remove one.")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_subcommand("plugins", plugins, help="list plugins and what they register; install or remove one")
    # jsonargparse wants each level added to its parent before its own subcommands.
    actions = plugins.add_subcommands(dest="action", required=False)
    install = _subparser("pip install a plugin into prefdiff's environment.")
    install.add_argument("target", help="a package name or a path to a plugin folder")
    install.add_argument("-e", "--editable", action="store_true", help="install a folder in editable mode")
    actions.add_subcommand("install", install, help="pip install a plugin into prefdiff's environment")
    uninstall = _subparser("pip uninstall a plugin distribution.")
    uninstall.add_argument("name", help="the distribution to remove")
    actions.add_subcommand("uninstall", uninstall, help="pip uninstall a plugin distribution")

    bench = _subparser("Pretrain, align with each method, evaluate on held-out conditions, write a report.")
    bench.add_argument("domain", help="a registered benchmark (`prefdiff plugins` lists them)")
    bench.add_argument("--method", action="append", default=None, help="a method to run (repeatable)")
    bench.add_argument("--quick", action="store_true", help="the small settings (minutes)")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--out", default=None,
                       help="output folder (default runs/bench-DOMAIN, or runs/bench-DOMAIN-quick with --quick)")
    bench.add_argument("--cache", default=None, help="cache folder for base models and data")
    bench.add_argument("--threads", type=int, default=None,
                       help="torch threads (default: the cores other jobs leave free)")
    bench.add_argument("--reward", default=None, help="train with this reward instead of the recipe's")
    bench.add_argument("--judge", default=None, help="evaluate with this reward instead of the recipe's judge")
    bench.add_argument("--ship-base", action="store_true",
                       help="write the base model into the field's shipped bases (make bench does)")
    sub.add_subcommand("bench", bench, help="pretrain, align with each method, evaluate, write a report")

    new = _subparser("Write a pip-installable plugin package to start from.")
    new.add_argument("name", help="plugin name: lower-case letters, digits, underscores")
    new.add_argument("--dir", default=None, help="target folder (default ./prefdiff-NAME)")
    sub.add_subcommand("new-plugin", new, help="write a pip-installable plugin package to start from")

    sub.add_subcommand("fit", _subparser("Train with LightningCLI conventions: prefdiff fit --config FILE.yaml "
                                         "(`prefdiff fit --help` lists the options)."),
                       help="train with LightningCLI conventions (--config FILE.yaml)")

    sample = _subparser("Sample a saved model or pipeline on prompts or a dataset's conditions.")
    _model_args(sample)
    sample.add_argument("--n", type=int, default=16, help="number of samples")
    sample.add_argument("--out", required=True,
                        help="output folder: samples.safetensors, and samples.png where the samples can be drawn")
    sub.add_subcommand("sample", sample, help="sample a saved model or pipeline on prompts or a dataset's conditions")

    edit = _subparser("Edit real samples: SDEdit under a new condition, or inpaint outside a keep mask.")
    _model_args(edit)
    edit.add_argument("--index", type=int, default=0, help="dataset item to edit")
    edit.add_argument("--cond-from", type=int, default=None,
                      help="take the new condition from this dataset item (default: keep)")
    edit.add_argument("--strength", type=float, default=0.6,
                      help="SDEdit strength in (0, 1]: the last strength x steps steps run, counted as "
                           "diffusers' img2img pipelines count them (at least one)")
    edit.add_argument("--image", default=None, help="an image file to edit (instead of a dataset item)")
    edit.add_argument("--mask", default=None,
                      help="a safetensors file with a 'keep' tensor (1 keeps the input), or an image (white "
                           "keeps): inpaint instead")
    edit.add_argument("--out", required=True,
                      help="output folder: edit.safetensors (input, then edited) and edit.png, before and after")
    sub.add_subcommand("edit", edit, help="edit real samples: SDEdit under a new condition, or inpaint")

    label = _subparser("Serve the labeling page: people pick the better of two samples.")
    feedback.add_label_arguments(label)
    sub.add_subcommand("label", label, help="serve the labeling page: people pick the better of two samples")
    reward_model = _subparser("Learn a reward model from labelled pairs.")
    sub.add_subcommand("reward-model", reward_model, help="learn a reward model from labelled pairs")
    reward_actions = reward_model.add_subcommands(dest="action")
    train = _subparser("Fit a Bradley-Terry reward model.")
    feedback.add_reward_model_arguments(train)
    reward_actions.add_subcommand("train", train, help="fit a Bradley-Terry reward model")

    for plugin, entries in sorted(plugin_commands.items()):
        group = _subparser(f"Commands of the '{plugin}' plugin.")
        sub.add_subcommand(plugin, group, help=f"commands of the '{plugin}' plugin")
        group_sub = group.add_subcommands(dest="action")
        for name, entry in sorted(entries.items()):
            add_function_command(group_sub, name, entry.factory)
    return parser


def _model_args(parser) -> None:
    parser.add_argument("--model", required=True, help="a saved model folder, or a local diffusers pipeline folder")
    parser.add_argument("--lora", default=None, help="a LoRA adapter folder to apply")
    parser.add_argument("--variant", default=None,
                        help="a pipeline's weight variant to read (fp16, non_ema, ...; default: the plain weights, "
                             "or a component's only variant)")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable; text-to-image)")
    parser.add_argument("--guidance-scale", type=float, default=1.0, help="classifier-free guidance (1: none)")
    parser.add_argument("--negative-prompt", default="", help="the prompt guidance steers away from (text-to-image)")
    parser.add_argument("--distilled-guidance", type=float, default=None,
                        help="a guidance-distilled FLUX's embedded guidance (FluxPipeline's guidance_scale; "
                             "default 3.5); --guidance-scale is classifier-free guidance")
    parser.add_argument("--dataset", default=None, help="registered dataset giving the conditions")
    parser.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--split", default="test")
    parser.add_argument("--conditioner", default=None,
                        help="registered conditioner (default: the one the model was saved with)")
    parser.add_argument("--conditioner-option", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the conditioner, over those the model was saved with (repeatable)")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="the weights' dtype; bfloat16/float16 run the network under autocast with the "
                             "sampler in float32 (half the memory; float16 needs a GPU)")


def _plugin_commands() -> dict[str, dict[str, Any]]:
    from prefdiff.plugins import get_manager

    grouped = get_manager().commands()
    clashes = sorted(set(grouped) & set(CORE_COMMANDS))
    if clashes:
        raise UserError(f"plugin '{clashes[0]}' registers commands, but `prefdiff {clashes[0]}` is a core "
                        f"command; rename the plugin's entry point")
    return grouped


def _parse(argv: list[str], plugin_commands: dict[str, dict[str, Any]]):
    from jsonargparse import ArgumentError

    parser = _parser(plugin_commands)
    try:
        return parser.parse_args(argv)
    except ArgumentError as exc:
        leaf, path, rest = _leaf_parser(parser, argv)
        message = " ".join(str(exc).split())
        if isinstance(exc.__context__, KeyError) and leaf is not parser:
            # jsonargparse reports a bad option of a nested subcommand's --config as a bare KeyError of
            # the command's name; the subcommand's own parser names the option.
            try:
                leaf.parse_args(rest)
            except ArgumentError as inner:
                message = " ".join(str(inner).split())
        where = " ".join(["prefdiff", *path])
        raise UserError(f"{message} (see `{where} --help`)") from None


def _leaf_parser(parser, argv: list[str]):
    """The parser of the innermost subcommand ``argv`` names, the command words leading to it, and the
    arguments after them."""
    path, i = [], 0
    while i < len(argv):
        action = getattr(parser, "_subcommands_action", None)
        if action is None or argv[i] not in action._name_parser_map:
            break
        parser = action._name_parser_map[argv[i]]
        path.append(argv[i])
        i += 1
    return parser, path, argv[i:]


def _dispatch(argv: list[str]) -> int:
    from prefdiff.fit import check_config_files

    if argv and argv[0] == "fit":
        from prefdiff.fit import fit

        return fit(argv[1:])
    check_config_files(argv)
    plugin_commands = _plugin_commands()
    config = _parse(argv, plugin_commands)
    command = config.command
    args = config[command]
    if command == "plugins":
        return _plugins(args)
    if command == "bench":
        return _bench(args)
    if command == "new-plugin":
        from prefdiff.scaffold import new_plugin

        root = new_plugin(args.name, args.dir)
        print(f"wrote {root}; install it with: prefdiff plugins install -e {root}")
        return 0
    if command in ("label", "reward-model"):
        from prefdiff.feedback import commands

        return commands.label(args) if command == "label" else commands.reward_model(args[args.action])
    if command in ("sample", "edit"):
        from prefdiff.generate import edit, sample_to_folder
        from prefdiff.quiet import show_progress_lines

        show_progress_lines()  # what loading the model says: a variant's weights read, SD3 without T5
        return (sample_to_folder if command == "sample" else edit)(args)
    from prefdiff.commands import call_function_command
    from prefdiff.quiet import show_progress_lines

    show_progress_lines()
    call_function_command(plugin_commands[command][args.action].factory, args[args.action])
    return 0


def _bench(args) -> int:
    from prefdiff.bench import run_benchmark
    from prefdiff.quiet import show_progress_lines

    from prefdiff.threads import choose_threads

    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    choose_threads(args.threads)
    show_progress_lines()
    out = Path(args.out or f"runs/bench-{args.domain}{'-quick' if args.quick else ''}")
    results = run_benchmark(args.domain, methods=args.method, quick=args.quick, seed=args.seed, out=out,
                            cache=Path(args.cache) if args.cache else None, reward=args.reward,
                            judge=args.judge, ship_base=args.ship_base)
    print(f"report: {out / 'report.md'}\nresults: {out / 'results.json'}")
    print(f"samples: {out / 'samples.png'}")
    if "edit" in results and (out / "edit.png").exists():  # the fields that edit draw their edits there
        print(f"edits: {out / 'edit.png'}")
    from prefdiff.bench.adapters import ADAPTERS

    if (out / ADAPTERS / "README.md").exists():
        print(f"aligned adapters: {out / ADAPTERS} (how to sample them: {out / ADAPTERS / 'README.md'})")
    print(f"log (with Lightning's lines): {out / 'bench.log'}")
    return 0


def _plugins(args) -> int:
    from prefdiff.plugins import get_manager

    if args.action in ("install", "uninstall"):
        return _pip(args.action, args[args.action])
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


def _pip(action: str, args) -> int:
    # Like `llm install`: pip runs in the interpreter that runs prefdiff.
    if action == "install":
        target = args.target
        if os.path.exists(target):
            target = str(Path(target).resolve())
        cmd = [sys.executable, "-m", "pip", "install", *(["-e"] if args.editable else []), target]
    else:
        from importlib.metadata import PackageNotFoundError, distribution

        from prefdiff.plugins import ENTRY_POINT_GROUP

        try:
            dist = distribution(args.name)
        except PackageNotFoundError:
            raise UserError(f"no package '{args.name}' is installed; `prefdiff plugins` lists the plugins "
                            f"(uninstall takes the distribution name, e.g. prefdiff-medical)") from None
        if not any(ep.group == ENTRY_POINT_GROUP for ep in dist.entry_points):
            raise UserError(f"package '{args.name}' is not a prefdiff plugin (it has no '{ENTRY_POINT_GROUP}' entry "
                            f"point), so `prefdiff plugins uninstall` leaves it alone; remove it with pip if you "
                            f"mean to")
        cmd = [sys.executable, "-m", "pip", "uninstall", "-y", args.name]
    # pip's output goes to the terminal; its stderr is held back so that on a failure its ERROR line
    # is the one error line (the user's error promise), and shown as it is after a success.
    result = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        errors = [ln for ln in result.stderr.splitlines() if ln.startswith("ERROR:")] or result.stderr.splitlines()
        reason = (errors[0].removeprefix("ERROR:").strip() if errors else "no message")[:300]
        raise UserError(f"pip {action} {getattr(args, 'target', None) or args.name} failed (exit "
                        f"{result.returncode}): {reason}")
    sys.stderr.write(result.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
