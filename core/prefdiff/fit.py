"""`prefdiff fit`: LightningCLI over the trainers and the data module.

Config files follow LightningCLI conventions (``model.class_path`` names a
trainer, ``model.init_args`` its options, ``data`` the data module,
``trainer`` the Lightning Trainer). ``--ckpt_path last`` resumes from the
newest ``last.ckpt`` under the run's root folder, e.g. after a SIGKILL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from prefdiff.errors import UserError


def _check_config_files(argv: list[str]) -> None:
    """Parse every --config file first so a YAML error is one line naming the file."""
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
            raise UserError(f"config file {path} must hold a mapping (model:, data:, trainer:), "
                            f"not a {type(content).__name__}")


def _resolve_checkpoint(ckpt_path: str | None, root: str) -> str | None:
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        found = sorted(Path(root).rglob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
        if not found:
            return None  # nothing to resume yet: start fresh, like Lightning's "last"
        ckpt_path = str(found[-1])
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
        raise UserError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); it is "
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
    from jsonargparse import ArgumentError
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.cli import LightningCLI

    from prefdiff.datamodule import PrefDataModule
    from prefdiff.trainers import AlignmentModule

    class PrefdiffCLI(LightningCLI):
        def add_arguments_to_parser(self, parser: Any) -> None:
            parser.add_argument("--ckpt_path", type=str | None, default=None,
                                help="checkpoint to resume from; 'last' finds the newest last.ckpt")

    _check_config_files(argv)
    try:
        cli = PrefdiffCLI(
            AlignmentModule, PrefDataModule, subclass_mode_model=True, run=False, args=argv,
            # Lightning 2.6 writes last.ckpt only beside a top-k save: top 1 keeps one per epoch end.
            trainer_defaults={"use_distributed_sampler": False,
                              "callbacks": [ModelCheckpoint(save_last=True, save_top_k=1)]},
            parser_kwargs={"exit_on_error": False, "description": "prefdiff fit"},
            save_config_kwargs={"overwrite": True})
    except ArgumentError as exc:
        message = " ".join(str(exc).split())
        raise UserError(f"bad fit arguments or config: {message}") from None
    except Exception as exc:
        # jsonargparse wraps errors raised while instantiating; surface a user's own mistake.
        cause = _user_error_in_chain(exc)
        if cause is None:
            raise
        raise cause from None
    ckpt = _resolve_checkpoint(cli.config.get("ckpt_path"), cli.trainer.default_root_dir)
    if ckpt is not None:
        _check_checkpoint(ckpt, cli.model)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt)
    root = Path(cli.trainer.log_dir or cli.trainer.default_root_dir)  # a collective: every rank asks
    if cli.trainer.global_rank == 0:
        _export(cli, root)
    return 0


def _export(cli, root: Path) -> None:
    """Write the trained model where users and `prefdiff sample` expect it."""
    from prefdiff.models import has_lora, save_lora, save_lora_for_pipeline, save_model

    denoiser = cli.model.denoiser
    if has_lora(denoiser):
        save_lora(denoiser, root / "lora")
        if denoiser.preset.conditioning == "text":  # also as diffusers' load_lora_weights reads it
            save_lora_for_pipeline(denoiser, root / "lora")
        print(f"LoRA adapter: {root / 'lora'}")
    else:
        save_model(denoiser, root / "model", cli.model.noise_scheduler)
        cli.model.noise_scheduler.save_pretrained(root / "model" / "scheduler")
        print(f"model: {root / 'model'}")
