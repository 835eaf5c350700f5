"""`prefdiff fit`: LightningCLI over the trainers and the data module.

Config files follow LightningCLI conventions (``model.class_path`` names a
trainer, ``model.init_args`` its options, ``data`` the data module,
``trainer`` the Lightning Trainer). ``--ckpt_path last`` resumes from the
newest ``last.ckpt`` under the run's root folder, e.g. after a SIGKILL.

The terminal shows the training progress and prefdiff's own lines; Lightning's
info lines (seed, accelerators, tips) and Python warnings go to ``fit.log`` in
the run's root folder. A mistake in the options, prefdiff's or the Trainer's,
is one line naming the flag; a traceback means a bug.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml

from prefdiff.errors import UserError

LOG_FILE = "fit.log"
"""Where Lightning's lines go, in the run's root folder (``--trainer.default_root_dir``)."""


def check_config_files(argv: list[str]) -> None:
    """Parse every --config file of ``argv`` first, so a missing file or a YAML error is one line naming
    the file (jsonargparse's own message names neither). Every command calls it before parsing."""
    for i, arg in enumerate(argv):
        path = argv[i + 1] if arg in ("--config", "-c") and i + 1 < len(argv) else (
            arg.split("=", 1)[1] if arg.startswith("--config=") else None)
        if path is None:
            continue
        if not Path(path).is_file():
            raise UserError(f"config file {path} does not exist")
        try:
            content = yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise UserError(f"config file {path} is not valid YAML{where}: "
                            f"{getattr(exc, 'problem', None) or exc}") from None
        if content is not None and not isinstance(content, dict):
            raise UserError(f"config file {path} must hold a mapping of options (option: value), "
                            f"not a {type(content).__name__}")


def _resolve_checkpoint(ckpt_path: str | None, *roots: str) -> str | None:
    """The checkpoint to resume: ``last`` is the newest ``last*.ckpt`` under any of ``roots`` (the
    default_root_dir and the loggers' folders, which a config may put elsewhere)."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        found = sorted({p for root in roots if root for p in Path(root).rglob("last*.ckpt")},
                       key=lambda p: p.stat().st_mtime)
        if not found:  # nothing to resume yet: start fresh, like Lightning's "last", but say so
            print(f"--ckpt_path last: no last.ckpt under {', '.join(sorted({str(r) for r in roots if r}))}; "
                  f"starting fresh", file=sys.stderr)
            return None
        ckpt_path = str(found[-1])
        print(f"resuming from {ckpt_path}", file=sys.stderr)
    if not Path(ckpt_path).is_file():
        raise UserError(f"checkpoint {ckpt_path} does not exist")
    return ckpt_path


def _check_checkpoint(path: str, model) -> None:
    """A truncated file or one from another model is a user error, not a traceback."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        state = checkpoint["state_dict"]
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0].split(". ")[0][:200]  # torch's advice is not for users
        raise UserError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {first}); it is "
                        f"truncated or not a Lightning checkpoint; pass another or start fresh") from None
    own = model.state_dict()
    for key in model.frozen_keys(own):  # loaded from the model folder, never checkpointed
        del own[key]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        example = (missing or unexpected or wrong)[0]
        raise UserError(f"checkpoint {path} is from another model ({len(missing)} missing, "
                        f"{len(unexpected)} unexpected, {len(wrong)} mis-shaped tensors, e.g. "
                        f"'{example}'); resume with the config that wrote it")


def _class_path_error(message: str) -> UserError | None:
    """One line for a mistyped ``model.class_path`` (jsonargparse's names every Union subtype it tried)."""
    import difflib
    import re

    import prefdiff.trainers as trainers

    found = (re.search(r"Problem with given class_path '([^']*)': (.*?) - Expected a", message)
             or re.search(r"Import path (\S+) (does not correspond to a subclass of AlignmentModule)", message))
    if found is None:
        return None
    given, why = found.groups()
    if _is_a_trainer(given):
        return None  # jsonargparse words a bad init_args value of a good class the same way
    names = [n for n in trainers.__all__ if n.endswith("Module") and n != "AlignmentModule"]
    close = difflib.get_close_matches(given.rsplit(".", 1)[-1], names, n=1)
    hint = f"; did you mean prefdiff.trainers.{close[0]}?" if close else ""
    return UserError(f"--model.class_path {given} is not a trainer ({why}); prefdiff's are "
                     f"{', '.join(f'prefdiff.trainers.{n}' for n in names)}, or a subclass of "
                     f"prefdiff.trainers.AlignmentModule of yours{hint}")


def _is_a_trainer(class_path: str) -> bool:
    import importlib

    from prefdiff.trainers import AlignmentModule

    module, _, name = class_path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(found, type) and issubclass(found, AlignmentModule)


def _user_error_in_chain(exc: BaseException) -> UserError | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def fit(argv: list[str]) -> int:
    """Run `prefdiff fit ARGS`; returns the exit code."""
    from prefdiff.quiet import show_progress_lines

    check_config_files(argv)
    show_progress_lines()
    with contextlib.ExitStack() as chatter:  # entered once the run's root folder is known
        return _fit(argv, chatter)


def _fit(argv: list[str], chatter: contextlib.ExitStack) -> int:
    from jsonargparse import ArgumentError
    from lightning_fabric.utilities.exceptions import MisconfigurationException
    from pytorch_lightning.cli import LightningCLI

    from prefdiff.datamodule import PrefDataModule
    from prefdiff.quiet import lightning_chatter_to
    from prefdiff.run_checkpoint import RunCheckpoint, check_checkpoint_every, set_checkpoint_every
    from prefdiff.trainers import AlignmentModule

    class PrefdiffCLI(LightningCLI):
        def add_arguments_to_parser(self, parser: Any) -> None:
            parser.add_argument("--ckpt_path", type=str | None, default=None,
                                help="checkpoint to resume from; 'last' finds the newest last.ckpt")
            parser.add_argument("--checkpoint_every", type=int | None, default=None,
                                help="also rewrite last.ckpt every N optimizer steps inside an epoch (default: "
                                     "only at an epoch's end and when training stops)")

        def parse_arguments(self, parser: Any, args: Any) -> None:
            with warnings.catch_warnings():
                # prefdiff passes args on purpose: `prefdiff fit` is a subcommand of its own CLI.
                warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
                super().parse_arguments(parser, args)
            root = Path(self.config.get("trainer.default_root_dir") or os.getcwd())
            blocked = next((p for p in (root, *root.parents) if p.exists() and not p.is_dir()), None)
            if blocked is not None:
                raise UserError(f"--trainer.default_root_dir {root}: {blocked} is a file, not a folder; pass "
                                f"a new folder for the run")
            root.mkdir(parents=True, exist_ok=True)
            chatter.enter_context(lightning_chatter_to(root / LOG_FILE))

        def before_instantiate_classes(self) -> None:
            _check_trainer_values(self.config)
            check_checkpoint_every(self.config.get("checkpoint_every"))
            _check_base_exists(self.config, argv)
            _seed_the_run(self.config)

        def instantiate_trainer(self, **kwargs: Any):
            kwargs.setdefault("plugins", _with_durable_checkpoints(
                self._get(self.config_init, "trainer", default={}).get("plugins")))
            try:
                return super().instantiate_trainer(**kwargs)
            except (MisconfigurationException, ValueError, TypeError) as exc:
                error = _trainer_option_error(exc, self.config, self.parser, instantiating=True)
                if error is None:
                    raise
                raise error from None

    try:
        cli = PrefdiffCLI(
            AlignmentModule, PrefDataModule, subclass_mode_model=True, run=False, args=argv,
            trainer_defaults={"use_distributed_sampler": False, "callbacks": [RunCheckpoint()]},
            parser_kwargs={"exit_on_error": False, "description": "prefdiff fit"},
            save_config_kwargs={"overwrite": True})
    except ArgumentError as exc:
        message = " ".join(str(exc).split())
        raise (_class_path_error(message) or UserError(f"bad fit arguments or config: {message}")) from None
    except Exception as exc:
        # jsonargparse wraps errors raised while instantiating; surface a user's own mistake.
        cause = _user_error_in_chain(exc)
        if cause is None:
            raise
        raise cause from None
    set_checkpoint_every(cli.trainer, cli.config.get("checkpoint_every"))
    ckpt = _resolve_checkpoint(cli.config.get("ckpt_path"), cli.trainer.default_root_dir,
                               *(getattr(logger, "save_dir", None) for logger in cli.trainer.loggers))
    if ckpt is not None:
        _check_checkpoint(ckpt, cli.model)
    _check_data_fits(cli)
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt)
    except MisconfigurationException as exc:  # Lightning checks some options only when fit starts
        error = _trainer_option_error(exc, cli.config, cli.parser, instantiating=False)
        if error is None:
            raise
        raise error from None
    root = Path(cli.trainer.log_dir or cli.trainer.default_root_dir)  # a collective: every rank asks
    if cli.trainer.global_rank == 0:
        _export(cli, root)
        print(f"log (with Lightning's lines): {Path(cli.trainer.default_root_dir) / LOG_FILE}")
    return 0


# ------------------------------------------------------ Trainer options ----


_HINTS = {
    "manual optimization": "prefdiff's online trainers (ddpo, d3po, draft, ...) step their own optimizer: "
                           "clip with --model.init_args.max_grad_norm, and raise --data.batch_size instead "
                           "of accumulating",
    "clip_gradients(": "prefdiff's trainers clip gradients themselves: set --model.init_args.max_grad_norm instead",
}
"""Fixes for the Trainer options that prefdiff's trainers take their own way, by a fragment of Lightning's message."""

_ALIASES = {"Timer(duration": "max_time"}
"""Lightning messages that name what an option became instead of the option."""


def _trainer_option_error(exc: Exception, config, parser, *, instantiating: bool) -> UserError | None:
    """The one-line error for a Trainer option Lightning rejected, or None for anything else (a bug).

    Only what Lightning's own code raised counts. While the Trainer is built every
    MisconfigurationException is the user's options, and a ValueError or TypeError is when its
    message names an option; once fit has started only a message naming an option the user set is.
    """
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    if not _raised_by_lightning(exc):
        return None
    message = " ".join(str(exc).split()).rstrip(".")
    given = _given_trainer_options(config, parser)
    name = _named_option(message, given if not instantiating else [*given, *_trainer_parameters()])
    if name is None and not (instantiating and isinstance(exc, MisconfigurationException)):
        return None
    fix = next((hint for fragment, hint in _HINTS.items() if fragment in message), None)
    if name is None:
        return UserError(f"the Trainer options are invalid: {message}; {fix or 'change the --trainer option it names'}")
    fix = fix or f"change --trainer.{name} (on the command line, or trainer.{name} in the config)"
    return UserError(f"--trainer.{name}: {message}; {fix}")


def _raised_by_lightning(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
    return module.startswith(("pytorch_lightning.", "lightning_fabric.", "lightning."))


def _trainer_parameters() -> list[str]:
    import inspect

    from pytorch_lightning import Trainer

    return [name for name in inspect.signature(Trainer.__init__).parameters if name != "self"]


def _given_trainer_options(config, parser) -> list[str]:
    """The Trainer options the command line or a config file set (those that differ from the default)."""
    defaults = parser.get_defaults()
    return [name for name in _trainer_parameters()
            if config.get(f"trainer.{name}") != defaults.get(f"trainer.{name}")]


def _named_option(message: str, candidates: list[str]) -> str | None:
    """The Trainer option ``message`` is about: one written as `` `name` `` or ``name=`` first, then a bare
    mention; the earliest in the message wins."""
    for fragment, name in _ALIASES.items():
        if fragment in message:
            return name
    for pattern in (r"(?:`{0}`|(?<![\w.]){0}=)", r"(?<![\w.]){0}(?!\w)"):
        found = [(m.start(), name) for name in dict.fromkeys(candidates)
                 for m in [re.search(pattern.format(re.escape(name)), message)] if m]
        if found:
            return min(found)[1]
    return None


def _check_trainer_values(config) -> None:
    """Values Lightning takes but then fails on with a bug's traceback (a division by zero)."""
    every = config.get("trainer.check_val_every_n_epoch")
    if every is not None and every < 1:
        raise UserError(f"--trainer.check_val_every_n_epoch must be >= 1 (or null), got {every}")


def _with_durable_checkpoints(plugins: Any) -> list:
    """The Trainer's plugins, with prefdiff's checkpoint writer unless the user gave a CheckpointIO."""
    from lightning_fabric.plugins import CheckpointIO, TorchCheckpointIO

    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if any(isinstance(p, CheckpointIO) for p in plugins):
        return plugins

    class DurableCheckpointIO(TorchCheckpointIO):
        """Checkpoints by the rule of :mod:`prefdiff.durable`: a temporary file beside the target, fsynced
        and renamed over it. Lightning's own writer puts the temporary file in the system's temp folder
        and moves it: a copy when that is another filesystem (a tmpfs /tmp), which a kill tears, and
        never fsynced."""

        def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
            import io

            import torch

            from prefdiff.durable import atomic_write_bytes

            if storage_options is not None:
                return super().save_checkpoint(checkpoint, path, storage_options)  # which refuses them
            buffer = io.BytesIO()
            torch.save(checkpoint, buffer)
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, buffer.getvalue())

    return [*plugins, DurableCheckpointIO()]


# ---------------------------------------------------------------- data ----


def _seed_the_run(config) -> None:
    """``--seed_everything N`` seeds the whole run, as Lightning users expect: the module's and the data's
    own seeds (which make their draws resumable) take N unless given. Without this a sweep over
    ``seed_everything`` would change only the LoRA's start and keep seed 0's data order and noise.
    Lightning has already replaced ``true`` by the seed it drew; ``false`` leaves them alone."""
    seed = config.get("seed_everything")
    if isinstance(seed, bool) or not isinstance(seed, int):
        return
    for key in ("model.init_args.seed", "data.seed"):
        if config.get(key) is None:
            config[key] = seed


def _check_base_exists(config, argv: list[str]) -> None:
    """A base model that another config writes, and that is not there yet: name that config."""
    from prefdiff.models import is_model_folder

    base = config.get("model.init_args.base")
    if not base or is_model_folder(base):
        return
    for path in _config_paths(argv):
        for other in sorted(Path(path).parent.glob("*.y*ml")):
            if other.resolve() == Path(path).resolve():
                continue
            try:
                root = ((yaml.safe_load(other.read_text()) or {}).get("trainer") or {}).get("default_root_dir")
            except (yaml.YAMLError, OSError, AttributeError):
                continue
            if root and Path(root).resolve() in (Path(base).resolve(), *Path(base).resolve().parents):
                raise UserError(f"--model.init_args.base {base} is not a model folder yet: {other} writes it "
                                f"(its trainer.default_root_dir is {root}); run `prefdiff fit --config {other}` "
                                f"first, or pass --model.init_args.base a model folder")


def _config_paths(argv: list[str]) -> list[str]:
    paths = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            paths.append(argv[i + 1])
        elif arg.startswith("--config="):
            paths.append(arg.split("=", 1)[1])
    return paths


def _check_data_fits(cli) -> None:
    """One item of the training data through the model before training: a dataset made for another
    model is one line naming the dataset, the conditioner and the model, not a traceback mid-step."""
    from prefdiff.checks import check_conditions_fit
    from prefdiff.data import collate

    data = cli.datamodule
    data.setup("fit")
    if data.train_set is None or len(data.train_set) == 0:
        return  # the data module says what is wrong when training asks for batches
    init = cli.config.get("model.init_args")
    base, preset = init.get("base"), init.get("model")
    model = f"in {base}" if base else f"preset {dict(preset).get('kind', '?')}"
    name = f"pair file {data.pairs}" if data.pairs else f"dataset '{data.dataset_name}'"
    check_conditions_fit(cli.model.denoiser, collate([data.train_set[0]])["cond"], data=name, model=model,
                         conditioner=init.get("conditioner"),
                         fix="pass --data.dataset a dataset made for this model, with the "
                             "--model.init_args.conditioner that turns its conditions into what the model takes")


def _export(cli, root: Path) -> None:
    """Write the trained model where users and `prefdiff sample` expect it."""
    from prefdiff.models import export_lora, has_lora, save_model

    denoiser = cli.model.denoiser
    if has_lora(denoiser):
        export_lora(denoiser, root / "lora")
        print(f"LoRA adapter: {root / 'lora'}")
    else:
        save_model(denoiser, root / "model", cli.model.noise_scheduler)  # with scheduler/, in one step
        print(f"model: {root / 'model'}")
