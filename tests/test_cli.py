"""The `prefdiff` command end to end, in subprocesses as a user runs it (in this process where a
test registers a plugin, watches Lightning or saves a process start)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from prefdiff import hookimpl
from prefdiff.plugins import reset_manager
from prefdiff.reliability.kills import FAMILIES, TINY_MODEL, pair_file  # shared with the catalogue, which kills these runs
from prefdiff.testing import registered_plugin

ROOT = Path(__file__).resolve().parents[1]
PREFDIFF = str(Path(sys.executable).parent / "prefdiff")
def child_env() -> dict:
    """The environment as it is now: with the test's private PREFDIFF_CACHE, not the developer's."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def run(*args, cwd=ROOT, timeout=300, env=None, **kw):
    return subprocess.run([PREFDIFF, *map(str, args)], cwd=cwd, env=env or child_env(), capture_output=True,
                          text=True, timeout=timeout, **kw)


def assert_user_error(result, *fragments):
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    line = [ln for ln in result.stderr.splitlines() if ln.startswith("prefdiff: error:")]
    assert len(line) == 1, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in line[0], line[0]


def test_plugins_json_lists_the_builtins():
    result = run("plugins", "--json")
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert "jpeg_compressibility" in plugins["example"]["rewards"]
    assert plugins["example"]["benchmarks"] == ["example"]


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_parses(config, capsys, monkeypatch):
    from prefdiff.cli import main

    monkeypatch.chdir(ROOT)  # the configs name the shipped bases relative to the repository
    with pytest.raises(SystemExit) as printed:  # jsonargparse's --print_config prints, then exits
        main(["fit", "--config", str(config), "--print_config"])
    out, err = capsys.readouterr()
    assert printed.value.code == 0, err[-2000:]
    assert "class_path: prefdiff.trainers." in out


def test_malformed_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args: [unclosed\n")
    assert_user_error(run("fit", "--config", bad), "bad.yaml", "not valid YAML", "line")
    # every command's --config, not only fit's (jsonargparse's own message names no file)
    assert_user_error(run("medical", "make-data", tmp_path / "task", "--config", bad), "bad.yaml", "not valid YAML")
    assert_user_error(run("plugins", "--config", tmp_path / "no-such.yaml"), "no-such.yaml", "does not exist")


def test_unknown_names(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text((ROOT / "configs/example_ddpo.yaml").read_text()
                      .replace("reward: jpeg_compressibility", "reward: jpeg_compresibility")
                      .replace("base: core/prefdiff/builtin/bases/example", "base: null")
                      + "\n")
    line = fit_user_error(capsys, "fit", "--config", config, "--trainer.default_root_dir", tmp_path / "run",
                          "--model.init_args.model", '{"kind": "unet2d", "sample_size": 16, '
                          '"conditioning": "class", "num_classes": 4, "block_out_channels": [16, 32]}')
    assert "unknown reward 'jpeg_compresibility'" in line and "jpeg_compressibility" in line
    line = fit_user_error(capsys, "bench", "example", "--method", "ppo", "--cache", tmp_path)
    assert "unknown method 'ppo'" in line and "ddpo" in line
    line = fit_user_error(capsys, "bench", "nowhere")
    assert "unknown benchmark 'nowhere'" in line and "example" in line


def _tiny_fit_args(root, *extra):
    return ["fit", "--config", ROOT / "configs/example_ddpo.yaml",
            "--trainer.default_root_dir", root, "--trainer.logger", "false", "--trainer.max_epochs", "3",
            "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "0",
            "--trainer.enable_progress_bar", "false",
            "--model.init_args.base", "null",
            "--model.init_args.model", '{"kind": "unet2d", "sample_size": 8, "conditioning": "class", '
            '"num_classes": 4, "block_out_channels": [8, 16]}',
            "--model.init_args.num_steps", "3", "--model.init_args.samples_per_condition", "2",
            "--model.init_args.lr", "0.01",
            "--data.dataset_options", '{"resolution": 8, "size": 16}', "--data.batch_size", "4",
            "--data.val_size", "0", *extra]


def _adapter(root):
    return load_file(str(next(Path(root).rglob("lora/adapter_model.safetensors"))))


def _family_config(family, folder, model=TINY_MODEL, **init_args):
    """Write a config that trains ``family`` for 3 epochs of 2 steps of batch 4; returns its path."""
    cls, options = FAMILIES[family]
    options = {**options, **init_args}
    data = ({"pairs": str(pair_file(folder))} if family == "dpo" else
            {"dataset": "synthetic_textures", "dataset_options": {"resolution": 8, "size": 8}})
    config = {"seed_everything": 0,
              "trainer": {"accelerator": "cpu", "max_epochs": 3, "logger": False, "enable_progress_bar": False,
                          "enable_model_summary": False, "limit_val_batches": 0},
              "model": {"class_path": f"prefdiff.trainers.{cls}",
                        "init_args": {"model": model, "conditioner": "class_label", "num_steps": 3, "lr": 0.01,
                                      "lora_rank": 4, **options}},
              "data": {**data, "batch_size": 4, "val_size": 0}}
    path = folder / f"{family}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def fit_here(config, root, *extra):
    """Run `prefdiff fit` in this process; returns its exit code."""
    from prefdiff.cli import main

    return main(["fit", "--config", str(config), "--trainer.default_root_dir", str(root), *map(str, extra)])


# Imported by the killed `prefdiff fit` (PYTHONPATH) and named in its config like any
# Lightning callback. It writes the end-of-epoch checkpoint itself, where fit's own
# ModelCheckpoint should (see test_fit_keeps_a_checkpoint_of_every_finished_epoch).
SIGKILL_CALLBACK = """
import os
import signal

from pytorch_lightning import Callback


class CheckpointThenKill(Callback):
    def __init__(self, epoch: int, path: str) -> None:
        self.epoch, self.path = epoch, path

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch - 1:
            trainer.save_checkpoint(self.path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, family):
    config = _family_config(family, tmp_path)
    (tmp_path / "sigkill_callback.py").write_text(SIGKILL_CALLBACK)
    killed = tmp_path / "killed"
    last = killed / "checkpoints" / "last.ckpt"
    kill = tmp_path / "kill.yaml"
    kill.write_text(yaml.safe_dump({"trainer": {"callbacks": [{
        "class_path": "sigkill_callback.CheckpointThenKill", "init_args": {"epoch": 1, "path": str(last)}}]}}))
    # Killed one step into epoch 1, in its own process; the uninterrupted run goes meanwhile in this one.
    proc = subprocess.Popen([PREFDIFF, "fit", "--config", config, "--config", kill, "--trainer.default_root_dir",
                             killed], cwd=ROOT, env={**child_env(), "PYTHONPATH": str(tmp_path)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert fit_here(config, tmp_path / "straight") == 0
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, stderr[-3000:]
    assert not list(killed.rglob("lora/adapter_model.safetensors")), "the run finished before the kill"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (0, 2)

    assert fit_here(config, killed, "--ckpt_path", "last") == 0
    expected, got = _adapter(tmp_path / "straight"), _adapter(killed)
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)


@pytest.mark.parametrize("family", ["sft", "ddpo"])
def test_a_run_stopped_mid_epoch_and_resumed_matches_an_uninterrupted_run(tmp_path, family):
    # Stopped by --trainer.max_steps one step into epoch 1 (of 2 steps), then extended with --ckpt_path last:
    # the resumed epoch must take its second batch, not start the epoch's shuffle again.
    config = _family_config(family, tmp_path)
    assert fit_here(config, tmp_path / "straight") == 0
    assert fit_here(config, tmp_path / "stopped", "--trainer.max_steps", 3) == 0
    checkpoint = torch.load(next((tmp_path / "stopped").rglob("last.ckpt")), map_location="cpu", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (1, 3)
    assert fit_here(config, tmp_path / "stopped", "--ckpt_path", "last") == 0
    expected, got = _adapter(tmp_path / "straight"), _adapter(tmp_path / "stopped")
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)


@pytest.mark.parametrize("family, workers", [("sft", 0), ("ddpo", 0), ("sft", 1)])
def test_checkpoint_every_n_steps_resumes_inside_the_epoch_to_the_uninterrupted_adapter(tmp_path, monkeypatch,
                                                                                      family, workers):
    # 3 epochs of 2 steps, last.ckpt every 3 steps: step 3 is epoch 1's first batch. A crash at step 4
    # would leave that file; resuming it must train epoch 1's second batch, then epoch 2, as one run does.
    import shutil

    import pytorch_lightning as pl

    saved, at_step_3 = [], tmp_path / "at-step-3.ckpt"
    save = pl.Trainer.save_checkpoint

    def recording_save(trainer, filepath, *args, **kwargs):
        save(trainer, filepath, *args, **kwargs)
        saved.append((Path(filepath).name, trainer.global_step))
        if trainer.global_step == 3:
            shutil.copy(filepath, at_step_3)

    monkeypatch.setattr(pl.Trainer, "save_checkpoint", recording_save)
    config = _family_config(family, tmp_path)
    # A loader with a worker process draws its indices before Lightning sets the epoch or counts the batch.
    loader = ("--data.num_workers", workers)
    assert fit_here(config, tmp_path / "straight", "--checkpoint_every", 3, *loader) == 0
    assert [(name, step) for name, step in saved if name.startswith("last")] == [
        ("last.ckpt", 2), ("last.ckpt", 3), ("last.ckpt", 4), ("last.ckpt", 6)], saved
    assert ("epoch=2-step=6.ckpt", 6) in saved, saved  # the last epoch's own file too, as without the option
    assert fit_here(config, tmp_path / "resumed", "--ckpt_path", at_step_3, *loader) == 0
    expected, got = _adapter(tmp_path / "straight"), _adapter(tmp_path / "resumed")
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)


def test_checkpoint_every_must_be_a_positive_number_of_steps(tmp_path, capsys):
    line = fit_user_error(capsys, *_tiny_fit_args(tmp_path, "--checkpoint_every", "0"))
    assert "--checkpoint_every must be a whole number of optimizer steps >= 1" in line and "got 0" in line
    # It is refused before anything loads: a base that is not there is not reached.
    line = fit_user_error(capsys, *_tiny_fit_args(tmp_path, "--checkpoint_every", "-2",
                                                  "--model.init_args.base", tmp_path / "no-such-base"))
    assert "--checkpoint_every" in line and "got -2" in line


def test_fit_keeps_a_checkpoint_of_every_finished_epoch(tmp_path, monkeypatch):
    import pytorch_lightning as pl

    saved = []
    save = pl.Trainer.save_checkpoint

    def recording_save(trainer, filepath, *args, **kwargs):
        saved.append((Path(filepath).name, trainer.global_step))
        return save(trainer, filepath, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "save_checkpoint", recording_save)
    assert fit_here(_family_config("sft", tmp_path), tmp_path / "run") == 0
    assert ("last.ckpt", 2) in saved, saved  # epoch 0 has 2 steps


def test_seed_everything_seeds_the_modules_draws_and_the_data_order_unless_they_are_given(tmp_path):
    # The module's and the data's own seeds (resumable draws) default to the run's seed: a sweep over
    # --seed_everything must change the sampling noise and the data order, not only the LoRA's start.
    config = _family_config("ddpo", tmp_path)
    for name, given, expected in [("default", [], (3, 3)),
                                  ("given", ["--model.init_args.seed", 5, "--data.seed", 7], (5, 7))]:
        root = tmp_path / name
        assert fit_here(config, root, "--seed_everything", 3, "--trainer.max_epochs", 1, *given) == 0
        checkpoint = torch.load(next(root.rglob("last*.ckpt")), map_location="cpu", weights_only=False)
        saved = yaml.safe_load(next(root.rglob("config.yaml")).read_text())
        seeds = (checkpoint["hyper_parameters"]["seed"], saved["data"]["seed"])
        assert seeds == expected and saved["model"]["init_args"]["seed"] == expected[0], (name, seeds)


def test_bad_checkpoints(tmp_path, capsys):
    from prefdiff.cli import main

    assert main([str(a) for a in _tiny_fit_args(tmp_path / "a", "--trainer.max_epochs", "1")]) == 0, \
        capsys.readouterr().err[-3000:]
    ckpt = next((tmp_path / "a").rglob("last*.ckpt"))
    capsys.readouterr()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[:2000])
    line = fit_user_error(capsys, *_tiny_fit_args(tmp_path / "b", "--ckpt_path", truncated))
    assert "truncated.ckpt" in line and "truncated" in line.replace("truncated.ckpt", "")
    other = _tiny_fit_args(tmp_path / "c", "--ckpt_path", ckpt)
    other[other.index("--model.init_args.model") + 1] = other[other.index("--model.init_args.model") + 1].replace(
        "[8, 16]", "[16, 32]")
    assert "from another model" in fit_user_error(capsys, *other)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(bytes(range(256)) * 4)
    line = fit_user_error(capsys, *_tiny_fit_args(tmp_path / "d", "--ckpt_path", garbage))  # one line, no traceback
    assert "garbage.ckpt cannot be read" in line and "weights_only" not in line


def test_ckpt_path_last_looks_in_the_loggers_folders_and_says_what_it_does(tmp_path, capsys):
    from prefdiff.fit import _resolve_checkpoint

    assert _resolve_checkpoint("last", str(tmp_path / "root"), str(tmp_path / "logs")) is None
    err = capsys.readouterr().err
    assert "--ckpt_path last: no last.ckpt under" in err and "starting fresh" in err
    saved = tmp_path / "logs" / "csv" / "version_0" / "checkpoints" / "last.ckpt"
    saved.parent.mkdir(parents=True)
    saved.write_bytes(b"x")
    assert _resolve_checkpoint("last", str(tmp_path / "root"), str(tmp_path / "logs"), None) == str(saved)
    assert f"resuming from {saved}" in capsys.readouterr().err


def test_ddp_with_two_processes(tmp_path):
    result = run(*_tiny_fit_args(tmp_path, "--trainer.strategy", "ddp", "--trainer.devices", "2",
                                 "--trainer.max_epochs", "1", "--data.dataset_options",
                                 '{"resolution": 8, "size": 32}'), timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(tmp_path.rglob("lora/adapter_model.safetensors"))) == 1
    adapter = _adapter(tmp_path)
    assert all(torch.isfinite(w).all() for w in adapter.values())
    assert any(w.abs().max() > 0 for key, w in adapter.items() if "lora_B" in key), "DDP trained nothing"


# Named in a DDP run's config (on PYTHONPATH): both ranks run it. When step 4 starts, last.ckpt holds
# --checkpoint_every 3's save at step 3, which rank 0 copies aside (the save ended on a barrier).
COPY_AT_STEP_3_CALLBACK = """
import shutil

from pytorch_lightning import Callback


class CopyAtStep3(Callback):
    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 3 and trainer.global_rank == 0:
            shutil.copy(trainer.checkpoint_callback.last_model_path, self.path)
"""


def test_checkpoint_every_under_ddp_resumes_inside_the_epoch_to_the_uninterrupted_adapter(tmp_path):
    # Two processes, 3 epochs of 2 steps (batch 2 each): the step-3 save is epoch 1's first batch. Every
    # rank must save (a collective), and resuming must give each rank its own next batch and draws.
    config = _family_config("ddpo", tmp_path)
    (tmp_path / "copy_callback.py").write_text(COPY_AT_STEP_3_CALLBACK)
    at_step_3 = tmp_path / "at-step-3.ckpt"
    copy = tmp_path / "copy.yaml"
    copy.write_text(yaml.safe_dump({"trainer": {"callbacks": [{
        "class_path": "copy_callback.CopyAtStep3", "init_args": {"path": str(at_step_3)}}]}}))
    ddp = ("--trainer.strategy", "ddp", "--trainer.devices", "2", "--data.batch_size", "2")
    env = {**child_env(), "PYTHONPATH": str(tmp_path)}
    straight = run("fit", "--config", config, "--config", copy, "--trainer.default_root_dir", tmp_path / "straight",
                   "--checkpoint_every", 3, *ddp, timeout=400, env=env)
    assert straight.returncode == 0, straight.stderr[-3000:]
    checkpoint = torch.load(at_step_3, map_location="cpu", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (1, 3)
    resumed = run("fit", "--config", config, "--trainer.default_root_dir", tmp_path / "resumed",
                  "--ckpt_path", at_step_3, *ddp, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = _adapter(tmp_path / "straight"), _adapter(tmp_path / "resumed")
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)


@pytest.mark.parametrize("family", ["sft", "kto"])
def test_ddp_matches_one_process_with_the_same_global_batch(tmp_path, family):
    # 16 and 32 channels: with 8 channels in 8 GroupNorm groups a block's time-embedding
    # shift is normalised away, its LoRA's gradient is rounding noise, and Adam turns
    # that noise into steps of up to lr, which no float tolerance can absorb.
    # KTO: its reference point is a mean over the batch, which DDP splits.
    config = _family_config("dpo" if family == "kto" else family, tmp_path,
                            model={**TINY_MODEL, "block_out_channels": [16, 32]},
                            **({"objective": "kto", "beta": 500.0} if family == "kto" else {}))
    two = run("fit", "--config", config, "--trainer.default_root_dir", tmp_path / "two",
              "--trainer.strategy", "ddp", "--trainer.devices", "2", "--data.batch_size", "2", timeout=400)
    assert two.returncode == 0, two.stderr[-3000:]
    assert fit_here(config, tmp_path / "one", "--data.batch_size", "4") == 0
    one, two = _adapter(tmp_path / "one"), _adapter(tmp_path / "two")
    assert one.keys() == two.keys()
    if family == "sft":
        for key in one:
            torch.testing.assert_close(two[key], one[key], rtol=0, atol=5e-4)
    else:
        # KTO's nonlinear weights leave an element in a thousand an Adam step apart (the rounding
        # noise above); with a per-process reference point 94% of them were.
        apart = sum(int(((two[key] - one[key]).abs() > 5e-4).sum()) for key in one)
        assert apart <= 0.01 * sum(w.numel() for w in one.values()), apart


def test_fit_holds_a_class_models_frozen_weights_in_bfloat16(tmp_path, capsys):
    # The conditions check before training runs the model as training does (under autocast), not on
    # float32 zeros against bfloat16 weights, which read as "the conditions do not fit".
    from prefdiff.cli import main

    code = main([str(a) for a in _tiny_fit_args(tmp_path, "--model.init_args.frozen_dtype", "bfloat16",
                                                "--trainer.precision", "bf16-mixed", "--trainer.max_epochs", "1")])
    assert code == 0, capsys.readouterr().err[-2000:]
    assert {w.dtype for w in _adapter(tmp_path).values()} == {torch.float32}

def test_empty_dataset(tmp_path, capsys):
    args = _tiny_fit_args(tmp_path)
    args[args.index("--data.dataset_options") + 1] = '{"resolution": 8, "size": 0}'
    assert "size must be > 0" in fit_user_error(capsys, *args)


def test_sample_and_edit(tmp_path, capsys):
    from prefdiff.cli import main
    from prefdiff.models import build_denoiser, save_model

    def prefdiff(*args):
        code = main([str(a) for a in args])
        assert code == 0, capsys.readouterr().err[-2000:]

    torch.manual_seed(0)
    save_model(build_denoiser({"kind": "unet2d", "sample_size": 8, "conditioning": "class", "num_classes": 4,
                               "block_out_channels": [8, 16]}), tmp_path / "model")
    common = ["--model", tmp_path / "model", "--dataset", "synthetic_textures", "--dataset-option", "resolution=8",
              "--conditioner", "class_label", "--steps", "3"]
    prefdiff("sample", *common, "--n", "4", "--out", tmp_path / "s")
    assert load_file(str(tmp_path / "s/samples.safetensors"))["samples"].shape == (4, 3, 8, 8)
    assert (tmp_path / "s/samples.png").is_file()
    prefdiff("edit", *common, "--index", "1", "--cond-from", "2", "--strength", "0.5", "--out", tmp_path / "e")
    edited = load_file(str(tmp_path / "e/edit.safetensors"))["samples"]
    assert edited.shape == (2, 3, 8, 8) and not torch.equal(edited[0], edited[1])
    keep = torch.ones(1, 1, 8, 8)
    keep[..., 2:6, 2:6] = 0
    from safetensors.torch import save_file

    save_file({"keep": keep}, str(tmp_path / "mask.safetensors"))
    prefdiff("edit", *common, "--index", "1", "--mask", tmp_path / "mask.safetensors", "--out", tmp_path / "i")
    original, inpainted = load_file(str(tmp_path / "i/edit.safetensors"))["samples"]
    torch.testing.assert_close(inpainted * keep[0], original * keep[0])
    capsys.readouterr()
    assert "--strength" in fit_user_error(capsys, "edit", *common, "--strength", "1.5", "--out", tmp_path / "x")
    assert "not a prefdiff model folder" in fit_user_error(
        capsys, "sample", "--model", tmp_path, "--dataset", "synthetic_textures", "--out", tmp_path / "y")


# ------------------------------------------------- `prefdiff fit` mistakes


class NaNReward:
    @hookimpl
    def prefdiff_register_rewards(self, register):
        register("nan_reward", lambda: lambda s, c: (torch.full((s.shape[0],), float("nan")), {}))


def fit_user_error(capsys, *args):
    """Run `prefdiff ARGS` in this process; returns its one line of stderr, after checking exit code 2."""
    from prefdiff.cli import main

    code = main([str(a) for a in args])
    stderr = capsys.readouterr().err
    assert code == 2, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if not line.startswith("prefdiff: warning: ")]
    assert len(lines) == 1 and lines[0].startswith("prefdiff: error: "), stderr[-3000:]
    return lines[0]


def test_fit_with_an_unknown_dataset(tmp_path, capsys):
    line = fit_user_error(capsys, *_tiny_fit_args(tmp_path, "--data.dataset", "nowhere"))
    assert "unknown dataset 'nowhere'" in line and "synthetic_textures" in line


def test_fit_with_a_reward_from_a_plugin_that_is_not_installed(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PREFDIFF_PLUGINS", "example,prefdiff_nowhere")
    reset_manager()  # the manager reads the allow-list when it is made
    line = fit_user_error(capsys, *_tiny_fit_args(tmp_path, "--model.init_args.reward", "nowhere_reward"))
    assert "unknown reward 'nowhere_reward'" in line
    assert "PREFDIFF_PLUGINS names plugin 'prefdiff_nowhere' but no such plugin is installed" in line


def test_fit_stops_at_a_nan_reward(tmp_path, capsys):
    with registered_plugin(NaNReward(), "nan-plugin"):
        line = fit_user_error(capsys, *_tiny_fit_args(tmp_path, "--model.init_args.reward", "nan_reward"))
    assert "reward 'nan_reward' (plugin 'nan-plugin') returned 8 NaN score(s) of 8" in line
    assert not list(tmp_path.rglob("lora/adapter_model.safetensors"))


# ------------------------------------- issue 18: no bad first impression


def test_fit_names_an_invalid_trainer_value_and_keeps_a_bugs_traceback(tmp_path, capsys, monkeypatch):
    import functools

    import pytorch_lightning as pl

    line = fit_user_error(capsys, *_tiny_fit_args(tmp_path, "--trainer.max_steps", "-5"))
    assert line.startswith("prefdiff: error: --trainer.max_steps: `max_steps` must be a non-negative integer")
    assert "change --trainer.max_steps" in line
    line = fit_user_error(capsys, *_tiny_fit_args(tmp_path, "--trainer.accelerator", "nowhere"))  # a ValueError
    assert "--trainer.accelerator" in line and "'nowhere'" in line
    line = fit_user_error(capsys, *_tiny_fit_args(tmp_path, "--trainer.check_val_every_n_epoch", "0"))
    assert "--trainer.check_val_every_n_epoch must be >= 1" in line  # Lightning would divide by it

    @functools.wraps(pl.Trainer.__init__)  # the parser reads the Trainer's options from its signature
    def broken(self, *args, **kwargs):
        raise ValueError("max_steps went wrong in a bug")  # names an option, but is not Lightning's check

    monkeypatch.setattr(pl.Trainer, "__init__", broken)
    with pytest.raises(ValueError, match="a bug"):
        fit_here(_family_config("sft", tmp_path), tmp_path / "run")


class VectorData:
    """A dataset of 20-number conditions, as a robot layout is: they do not fit an image model."""

    @hookimpl
    def prefdiff_register_datasets(self, register):
        register("vectors", lambda split="train", **options: [{"cond": torch.rand(20), "x0": torch.rand(3, 8, 8)}
                                                               for _ in range(8)])


def test_fit_says_when_the_datasets_conditions_do_not_fit_the_model(tmp_path, capsys):
    with registered_plugin(VectorData(), "vector-data"):
        line = fit_user_error(capsys, *_tiny_fit_args(tmp_path, "--data.dataset", "vectors"))
    assert "the conditions of dataset 'vectors' do not fit the model preset unet2d (conditioner class_label)" in line
    assert "--model.init_args.conditioner" in line


def test_sample_and_edit_say_when_the_datasets_conditions_do_not_fit_the_model(tmp_path, capsys):
    from prefdiff.models import build_denoiser, save_model

    save_model(build_denoiser(TINY_MODEL), tmp_path / "model")
    common = ["--model", tmp_path / "model", "--dataset", "vectors", "--conditioner", "class_label", "--steps", "2"]
    with registered_plugin(VectorData(), "vector-data"):
        for command in (["sample", *common, "--n", "2"], ["edit", *common]):
            line = fit_user_error(capsys, *command, "--out", tmp_path / command[0])
            assert (f"the conditions of dataset 'vectors' do not fit the model in {tmp_path / 'model'} "
                    f"(conditioner class_label)") in line, line
    assert not (tmp_path / "sample").exists() and not (tmp_path / "edit").exists()


class DrawnData:
    """A dataset that draws its own figure, recording what `prefdiff sample` and `prefdiff edit` hand it."""

    drawn: list = []

    @hookimpl
    def prefdiff_register_datasets(self, register):
        register("drawn", DrawnData.Items)
        register("drawn_inputs", DrawnData.WithInputs)

    class Items(list):
        def __init__(self, split="train"):
            super().__init__({"cond": torch.tensor(i % 4), "x0": torch.rand(3, 8, 8)} for i in range(6))

        def draw(self, rows, cond, png_path):
            DrawnData.drawn.append(({k: v.clone() for k, v in rows.items()}, cond.clone()))
            Path(png_path).write_bytes(b"drawn")

    class WithInputs(Items):
        def draw(self, rows, cond, png_path, input_cond=None):
            DrawnData.drawn.append((list(rows), cond.clone(), input_cond))
            Path(png_path).write_bytes(b"drawn")


def test_sample_and_edit_draw_with_the_datasets_own_figure(tmp_path, capsys):
    from prefdiff.cli import main
    from prefdiff.models import build_denoiser, save_model

    save_model(build_denoiser({**TINY_MODEL, "sample_size": 8}), tmp_path / "model")
    common = ["--model", str(tmp_path / "model"), "--dataset", "drawn", "--conditioner", "class_label", "--steps", "2"]
    DrawnData.drawn.clear()
    with registered_plugin(DrawnData(), "drawn-data"):
        assert main(["sample", *common, "--n", "5", "--out", str(tmp_path / "s")]) == 0
        assert main(["edit", *common, "--index", "1", "--cond-from", "2", "--out", str(tmp_path / "e")]) == 0
    assert f"figure: {tmp_path / 's' / 'samples.png'}" in capsys.readouterr().out
    (rows, cond), (edit_rows, edit_cond) = DrawnData.drawn
    assert list(rows) == ["samples"] and torch.equal(cond, torch.tensor([0, 1, 2, 3, 0]))
    torch.testing.assert_close(rows["samples"], load_file(str(tmp_path / "s/samples.safetensors"))["samples"])
    assert list(edit_rows) == ["input", "edited"] and torch.equal(edit_cond, torch.tensor([2]))  # --cond-from's
    written = load_file(str(tmp_path / "e/edit.safetensors"))["samples"]
    torch.testing.assert_close(torch.cat(list(edit_rows.values())), written)
    assert (tmp_path / "s/samples.png").read_bytes() == b"drawn"
    # a draw that takes input_cond gets the input item's own condition when --cond-from changed it
    DrawnData.drawn.clear()
    common[common.index("drawn")] = "drawn_inputs"
    with registered_plugin(DrawnData(), "drawn-data"):
        assert main(["edit", *common, "--index", "1", "--cond-from", "2", "--out", str(tmp_path / "e2")]) == 0
        assert main(["edit", *common, "--index", "1", "--out", str(tmp_path / "e3")]) == 0
    (rows, cond, inputs), (_, same, none) = DrawnData.drawn
    assert rows == ["input", "edited"] and torch.equal(cond, torch.tensor([2])) and torch.equal(inputs, torch.tensor([1]))
    assert torch.equal(same, torch.tensor([1])) and none is None


def test_edit_without_a_drawing_dataset_labels_before_and_after(tmp_path):
    from PIL import Image

    from prefdiff.cli import main
    from prefdiff.models import build_denoiser, save_model

    save_model(build_denoiser({**TINY_MODEL, "sample_size": 8}), tmp_path / "model")
    common = ["--model", str(tmp_path / "model"), "--dataset", "synthetic_textures", "--dataset-option",
              "resolution=8", "--conditioner", "class_label", "--steps", "2", "--out", str(tmp_path / "e")]
    assert main(["edit", *common, "--index", "1"]) == 0
    with Image.open(tmp_path / "e/edit.png") as labelled:
        labels = np.asarray(labelled.convert("L"))[:, :labelled.width - 8 * 3]
    assert labelled.height >= 2 * 8 * 3 and labels.min() < 128  # two rows of 8-pixel tiles at scale 3, labelled


def test_a_labelled_figure_is_wide_enough_for_its_title(tmp_path):
    from PIL import Image

    from prefdiff.viz import save_labelled_rows

    title = "edited towards 'two red circles left of a blue square'"
    save_labelled_rows({"input": torch.zeros(1, 3, 8, 8)}, tmp_path / "one.png", title=title)
    with Image.open(tmp_path / "one.png") as figure:
        top = np.array(figure.convert("L"))[:24]
    dark = np.nonzero((top < 128).any(axis=0))[0]
    assert len(dark) and dark.max() < top.shape[1] - 4  # the title ends inside the figure, not cut at its edge

def test_labelled_rows_of_different_lengths_show_every_image(tmp_path):
    # `prefdiff sample --prompt A --prompt B --n 3`: two samples of A, one of B.
    from PIL import Image

    from prefdiff.viz import save_labelled_rows

    save_labelled_rows({"A": -torch.ones(2, 3, 8, 8), "B": -torch.ones(1, 3, 8, 8)}, tmp_path / "rows.png")
    with Image.open(tmp_path / "rows.png") as figure:
        pixels = np.array(figure.convert("L"))
    tile, gap, top = 8 * 3, 4, 4
    last = pixels[:, -(tile + gap):-gap]  # the last column of tiles
    assert (last[top:top + tile] == 0).all() and (last[top + tile + gap:top + 2 * tile + gap] == 255).all()

def test_samples_without_a_figure_leave_no_earlier_figure_beside_them(tmp_path):
    from prefdiff.generate import _figure, _write

    trajectories = torch.rand(2, 4, 16)  # not images, and no dataset to draw them
    (tmp_path / "samples.png").write_bytes(b"an earlier run's")
    _write(trajectories, tmp_path, "samples", _figure(None, {"samples": trajectories}, None))
    assert (tmp_path / "samples.safetensors").is_file() and not (tmp_path / "samples.png").exists()


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("example_*.yaml")), ids=lambda p: p.name)
def test_the_example_configs_start_from_the_shipped_base(config):
    # A fresh checkout has no runs/ folder: the configs' base must be one the repository ships.
    from prefdiff.models import is_model_folder

    base = (yaml.safe_load(config.read_text())["model"].get("init_args") or {}).get("base")
    assert base is None or is_model_folder(ROOT / base), f"{config.name}: base {base} is not in the checkout"


def test_fit_names_the_config_that_writes_a_missing_base(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing under runs/ yet
    (tmp_path / "configs").mkdir()
    pretrain = tmp_path / "configs" / "example_pretrain.yaml"
    pretrain.write_text((ROOT / "configs/example_pretrain.yaml").read_text())
    ddpo = tmp_path / "configs" / "example_ddpo.yaml"
    ddpo.write_text((ROOT / "configs/example_ddpo.yaml").read_text().replace(
        "base: core/prefdiff/builtin/bases/example", "base: runs/example-pretrain/csv/version_0/model"))
    line = fit_user_error(capsys, "fit", "--config", ddpo)
    assert "runs/example-pretrain/csv/version_0/model is not a model folder yet" in line
    assert f"run `prefdiff fit --config {pretrain}` first" in line


def test_fit_keeps_lightnings_chatter_in_a_log_file(tmp_path, capsys):
    # A user's error is the only line, not the last of the args warning, seed, GPU, TPU and tip lines.
    failed = run(*_tiny_fit_args(tmp_path / "bad", "--data.dataset", "nowhere"))
    assert_user_error(failed, "unknown dataset 'nowhere'")
    assert len(failed.stderr.splitlines()) == 1 and failed.stdout == "", failed.stderr + failed.stdout
    assert "GPU available" in (tmp_path / "bad" / "fit.log").read_text()  # the Trainer was built
    assert fit_here(_family_config("sft", tmp_path), tmp_path / "ok") == 0
    out = capsys.readouterr().out
    assert "LoRA adapter:" in out and f"log (with Lightning's lines): {tmp_path / 'ok' / 'fit.log'}" in out
    log = (tmp_path / "ok" / "fit.log").read_text()
    assert "Seed set to 0" in log and "GPU available" in log and "`Trainer.fit` stopped" in log


def test_checkpoints_are_written_beside_their_target_not_moved_from_the_temp_folder(tmp_path, monkeypatch):
    # Lightning's own writer saves into the system temp folder and moves the file. From another
    # filesystem (a tmpfs /tmp) the move is a copy: a kill or a full disk mid-copy tears last.ckpt.
    import errno
    import shutil
    import tempfile

    rename, temp = os.rename, tempfile.gettempdir()

    def cross_device(src, dst, *args, **kwargs):
        if os.path.dirname(os.fspath(src)) == temp:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        return rename(src, dst, *args, **kwargs)

    def torn_copy(src, dst, *args, **kwargs):
        data = Path(src).read_bytes()
        Path(dst).write_bytes(data[:len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "rename", cross_device)
    monkeypatch.setattr(shutil, "copyfile", torn_copy)
    assert fit_here(_family_config("sft", tmp_path), tmp_path / "run") == 0
    checkpoint = torch.load(next((tmp_path / "run").rglob("last.ckpt")), map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 2


def test_plugins_install_and_uninstall_failures_are_one_line(tmp_path, monkeypatch):
    # pip's own ERROR line is the reason; a package that is not installed is not a silent success.
    assert_user_error(run("plugins", "install", tmp_path / "no-such-plugin"), "pip install", "no-such-plugin")
    assert_user_error(run("plugins", "uninstall", "prefdiff-no-such-plugin"),
                      "no package 'prefdiff-no-such-plugin' is installed")
    # Only prefdiff plugins: a package without a prefdiff entry point (here a throwaway one, so that
    # a broken check could only remove this folder's files) is left alone.
    (tmp_path / "site" / "notaplugin.py").parent.mkdir()
    (tmp_path / "site" / "notaplugin.py").write_text("")
    info = tmp_path / "site" / "notaplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: notaplugin\nVersion: 0.1\n")
    (info / "RECORD").write_text("notaplugin.py,,\nnotaplugin-0.1.dist-info/METADATA,,\nnotaplugin-0.1.dist-info/RECORD,,\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]))
    assert_user_error(run("plugins", "uninstall", "notaplugin"), "package 'notaplugin' is not a prefdiff plugin")
    assert (tmp_path / "site" / "notaplugin.py").is_file()


def test_sample_with_an_adapter_of_another_model_is_one_line(tmp_path, capsys):
    from prefdiff.models import add_lora, build_denoiser, save_lora, save_model

    save_model(build_denoiser(TINY_MODEL), tmp_path / "model")
    save_lora(add_lora(build_denoiser({**TINY_MODEL, "block_out_channels": [16, 32]})), tmp_path / "lora")
    line = fit_user_error(capsys, "sample", "--model", tmp_path / "model", "--lora", tmp_path / "lora", "--dataset",
                          "synthetic_textures", "--dataset-option", "resolution=8", "--conditioner", "class_label",
                          "--steps", "2", "--n", "2", "--out", tmp_path / "out")
    assert f"the LoRA adapter in {tmp_path / 'lora'} is for another model (size mismatch" in line
    assert not (tmp_path / "out").exists()
    line = fit_user_error(capsys, "sample", "--model", tmp_path / "model", "--lora", tmp_path / "nothere", "--dataset",
                          "synthetic_textures", "--dataset-option", "resolution=8", "--conditioner", "class_label",
                          "--steps", "2", "--n", "2", "--out", tmp_path / "out")
    assert f"the LoRA adapter folder {tmp_path / 'nothere'} does not exist; pass the `lora/` folder" in line


# Named in a config like any Lightning callback: Ctrl-C, as the terminal sends it, one step into training.
SIGINT_CALLBACK = """
import os
import signal

from pytorch_lightning import Callback


class CtrlC(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        os.kill(os.getpid(), signal.SIGINT)
"""


def test_ctrl_c_during_fit_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    import signal

    # Lightning catches the KeyboardInterrupt itself and exits with 1; the user must still see why it stopped.
    (tmp_path / "sigint_callback.py").write_text(SIGINT_CALLBACK)
    monkeypatch.syspath_prepend(str(tmp_path))
    ctrl_c = tmp_path / "ctrl_c.yaml"
    ctrl_c.write_text(yaml.safe_dump({"trainer": {"callbacks": [{"class_path": "sigint_callback.CtrlC"}]}}))
    # A suite started in the background (`make test &`) inherits SIGINT ignored, which prefdiff keeps
    # (test_a_ctrl_c_the_shell_ignores_stays_ignored); a terminal's Ctrl-C reaches a foreground run.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        handler = signal.getsignal(signal.SIGINT)
        assert fit_here(_family_config("sft", tmp_path), tmp_path / "run", "--config", ctrl_c) == 130
        assert "prefdiff: interrupted; checkpoints written so far are kept" in capsys.readouterr().err
        assert signal.getsignal(signal.SIGINT) is handler  # Lightning's SIG_IGN is not left behind
    finally:
        signal.signal(signal.SIGINT, inherited)


@pytest.mark.parametrize("argv, says", [(["--config", "c.yaml", "fit"], "checkpoints written so far are kept"),
                                        (["bench", "example"], "the output folder was left as it was"),
                                        (["sample", "--out", "bench"], "nothing was left half written")])
def test_the_interrupt_line_names_what_the_command_leaves(argv, says, monkeypatch, capsys):
    from prefdiff import cli

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_dispatch", interrupted)
    assert cli.main(argv) == 130
    assert capsys.readouterr().err.startswith(f"prefdiff: interrupted; {says}")

def test_an_exit_that_is_not_an_interrupt_keeps_its_code(monkeypatch):
    from prefdiff import cli

    def exits(argv):
        raise SystemExit(3)

    monkeypatch.setattr(cli, "_dispatch", exits)
    with pytest.raises(SystemExit) as raised:
        cli.main(["sample"])
    assert raised.value.code == 3


def test_edit_checks_the_mask_the_samples_shape_and_the_out_folder(tmp_path, capsys):
    from safetensors.torch import save_file

    from prefdiff.models import build_denoiser, save_model

    save_model(build_denoiser({"kind": "unet2d", "sample_size": 8, "conditioning": "class", "num_classes": 4,
                               "block_out_channels": [8, 16]}), tmp_path / "model")
    common = ["edit", "--model", tmp_path / "model", "--dataset", "synthetic_textures", "--dataset-option",
              "resolution=8", "--conditioner", "class_label", "--steps", "2"]
    masks = {"wide": torch.ones(1, 1, 16, 16), "byte": torch.full((1, 1, 8, 8), 255.0),
             "nan": torch.full((1, 1, 8, 8), float("nan"))}
    for name, keep in masks.items():
        save_file({"keep": keep}, str(tmp_path / f"{name}.safetensors"))
    line = fit_user_error(capsys, *common, "--mask", tmp_path / "wide.safetensors", "--out", tmp_path / "o")
    assert "'keep' tensor has shape (1, 1, 16, 16), which does not fit the sample's (1, 3, 8, 8)" in line
    for name in ("byte", "nan"):
        line = fit_user_error(capsys, *common, "--mask", tmp_path / f"{name}.safetensors", "--out", tmp_path / "o")
        assert "'keep' must hold values in [0, 1]" in line, line
    line = fit_user_error(capsys, *[a if a != "resolution=8" else "resolution=16" for a in common],
                          "--out", tmp_path / "o")
    assert "gives samples of shape (3, 16, 16), but the model" in line and "makes (3, 8, 8)" in line
    (tmp_path / "afile").write_text("mine")
    line = fit_user_error(capsys, *common, "--out", tmp_path / "afile")
    assert f"--out {tmp_path / 'afile'}: {tmp_path / 'afile'} is a file, not a folder" in line
    assert (tmp_path / "afile").read_text() == "mine" and not (tmp_path / "o").exists()


def test_fit_reads_one_model_field_from_the_command_line_and_checks_the_run_folder(tmp_path, capsys):
    from prefdiff.models.presets import ModelPreset

    # jsonargparse hands a nested field's value over as text: it is read as YAML, like the rest.
    assert ModelPreset(conditioning="concat", cond_channels="3").cond_channels == 3
    line = fit_user_error(capsys, *_tiny_fit_args(tmp_path / "a", "--model.init_args.model.num_classes", "four"))
    assert "model option num_classes must be an integer, got 'four'" in line
    (tmp_path / "afile").write_text("mine")
    line = fit_user_error(capsys, *_tiny_fit_args(tmp_path / "afile"))
    assert f"--trainer.default_root_dir {tmp_path / 'afile'}: {tmp_path / 'afile'} is a file, not a folder" in line
    assert (tmp_path / "afile").read_text() == "mine"


class ShiftedLabels:
    """A conditioner with an option, as the fields' are (num_classes, pin_endpoints)."""

    class Shifted(torch.nn.Module):
        def __init__(self, shift: int = 0) -> None:
            super().__init__()
            self.shift = shift

        def forward(self, cond):
            return (cond.long() + self.shift) % 4

    @hookimpl
    def prefdiff_register_conditioners(self, register):
        register("shifted_label", self.Shifted)


def test_a_saved_model_brings_its_conditioner_and_its_options(tmp_path, capsys):
    from prefdiff.cli import main
    from prefdiff.models import build_denoiser, save_model, saved_conditioner
    from prefdiff.plugins import get_manager
    from prefdiff.trainers import PolicyGradientModule

    def samples(name, *extra):
        assert main(["sample", "--model", str(tmp_path / "model"), "--dataset", "synthetic_textures",
                     "--dataset-option", "resolution=8", "--n", "2", "--steps", "2", *extra,
                     "--out", str(tmp_path / name)]) == 0, capsys.readouterr().err
        return load_file(str(tmp_path / name / "samples.safetensors"))["samples"]

    with registered_plugin(ShiftedLabels(), "shifted"):
        torch.manual_seed(0)
        save_model(build_denoiser({**TINY_MODEL, "sample_size": 8},
                                  get_manager().conditioner("shifted_label", shift=2)), tmp_path / "model")
        assert saved_conditioner(tmp_path / "model") == ("shifted_label", {"shift": 2})
        told = samples("told", "--conditioner", "shifted_label", "--conditioner-option", "shift=2")
        torch.testing.assert_close(samples("untold"), told, rtol=0, atol=0)
        assert not torch.equal(samples("other", "--conditioner-option", "shift=0"), told)
        assert samples("few", "--dataset-option", "size=1").shape[0] == 1
        assert "holds 1 conditions: sampling 1, not 2" in capsys.readouterr().out
        module = PolicyGradientModule(base=str(tmp_path / "model"), reward="smoothness", lora_rank=2)
        assert module.denoiser.conditioner.shift == 2


def greet(name: str, times: int = 1) -> None:
    """Say hello."""
    print("hello " * times + name)


class Greeter:
    @hookimpl
    def prefdiff_register_commands(self, register):
        register("greet", greet)


def test_a_plugin_commands_bad_config_key_is_named_with_the_commands_help(tmp_path, capsys):
    (tmp_path / "greet.yaml").write_text("times: 2\ntimez: 3\n")
    with registered_plugin(Greeter(), "greeter"):
        line = fit_user_error(capsys, "greeter", "greet", "you", "--config", tmp_path / "greet.yaml")
        assert "'timez' is not accepted" in line and line.endswith("(see `prefdiff greeter greet --help`)"), line
        line = fit_user_error(capsys, "greeter", "greet", "you", "--timez", "3")
        assert line.endswith("(see `prefdiff greeter greet --help`)"), line


def convert(source: str, out: str, width: int = 64) -> None:
    """Write a checkpoint (of either kind, the older or the newer) as a folder
    that the reward reads.

    A longer paragraph that is not the summary.

    :param source: the checkpoint.
    :param out: the folder to write,
        made whole or not at all.
    :param width: the heads' width.
    """


def test_a_plugin_commands_help_is_its_docstrings_first_paragraph_and_params():
    from prefdiff.commands import _param_docs

    summary, params = _param_docs(convert)
    assert summary == "Write a checkpoint (of either kind, the older or the newer) as a folder that the reward reads."
    assert params == {"source": "the checkpoint.", "out": "the folder to write, made whole or not at all.",
                      "width": "the heads' width."}
    assert _param_docs(greet) == ("Say hello.", {})

    def google(who: str) -> None:
        """Say hi
        to someone.
        Args:
            who: whom.
        """

    assert _param_docs(google) == ("Say hi to someone.", {"who": "whom."})


def test_a_ctrl_c_the_shell_ignores_stays_ignored(monkeypatch):
    # `prefdiff bench ... &` from a script starts with SIGINT ignored; Python keeps it so, and so must main.
    from prefdiff import cli

    seen = []

    def dispatch(argv):
        seen.append(signal.getsignal(signal.SIGINT))
        return 0

    monkeypatch.setattr(cli, "_dispatch", dispatch)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert cli.main(["sample"]) == 0
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen == [signal.SIG_IGN]


def test_a_conditioners_numpy_options_are_recorded_and_a_malformed_record_is_ignored(tmp_path):
    import numpy as np

    from prefdiff.models import MODEL_FILE, saved_conditioner
    from prefdiff.plugins import get_manager

    with registered_plugin(ShiftedLabels(), "shifted"):
        module = get_manager().conditioner("shifted_label", shift=np.int64(2))
    assert module.prefdiff_spec == {"name": "shifted_label", "options": {"shift": 2}}
    (tmp_path / MODEL_FILE).write_text(json.dumps({"conditioner": {"name": "x", "options": ["shift"]}}))
    assert saved_conditioner(tmp_path) is None


@pytest.mark.parametrize("channels", [1, 3])
def test_edit_an_image_file_towards_a_dataset_items_condition(tmp_path, capsys, channels):
    import numpy as np
    from PIL import Image

    from prefdiff.cli import main
    from prefdiff.models import build_denoiser, save_model

    save_model(build_denoiser({**TINY_MODEL, "channels": channels}), tmp_path / "model")
    Image.fromarray((np.random.default_rng(0).random((12, 12, 3)) * 255).astype(np.uint8)).save(tmp_path / "in.png")
    common = ["edit", "--model", str(tmp_path / "model"), "--image", str(tmp_path / "in.png"), "--steps", "2"]
    assert main([*common, "--dataset", "synthetic_textures", "--dataset-option", "resolution=8",
                 "--conditioner", "class_label", "--cond-from", "2", "--out", str(tmp_path / "e")]) == 0
    edited = load_file(str(tmp_path / "e" / "edit.safetensors"))["samples"]
    assert edited.shape == (2, channels, 8, 8) and not torch.equal(edited[0], edited[1])
    line = fit_user_error(capsys, *common, "--out", tmp_path / "f")
    assert "--image needs the condition to edit the image towards" in line and "--cond-from" in line


def test_edit_an_image_file_towards_a_prompt_on_a_pipeline(tmp_path):
    import numpy as np
    from PIL import Image

    from prefdiff.cli import main
    from prefdiff.testing import tiny_pipeline

    pipe = tiny_pipeline(tmp_path / "pipe")
    Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)).save(tmp_path / "in.png")
    assert main(["edit", "--model", str(pipe), "--image", str(tmp_path / "in.png"), "--prompt", "a red circle",
                 "--steps", "2", "--out", str(tmp_path / "e")]) == 0
    original, edited = load_file(str(tmp_path / "e" / "edit.safetensors"))["samples"]
    assert original.shape == edited.shape == (3, 16, 16) and not torch.allclose(original, edited)
    # --guidance-scale reaches the edit (it was ignored), and --dtype bfloat16 edits about as float32 does.
    assert main(["edit", "--model", str(pipe), "--image", str(tmp_path / "in.png"), "--prompt", "a red circle",
                 "--steps", "2", "--guidance-scale", "5", "--out", str(tmp_path / "g")]) == 0
    assert not torch.allclose(load_file(str(tmp_path / "g" / "edit.safetensors"))["samples"][1], edited)
    assert main(["edit", "--model", str(pipe), "--image", str(tmp_path / "in.png"), "--prompt", "a red circle",
                 "--steps", "2", "--dtype", "bfloat16", "--device", "cpu", "--out", str(tmp_path / "b")]) == 0
    half = load_file(str(tmp_path / "b" / "edit.safetensors"))["samples"]
    assert half.dtype == torch.float32 and (half[1] - edited).abs().mean() < 0.05


def test_sample_runs_where_and_in_what_it_is_told(tmp_path, capsys):
    from prefdiff.cli import main
    from prefdiff.testing import tiny_pipeline

    pipe = str(tiny_pipeline(tmp_path / "pipe"))
    common = ["sample", "--model", pipe, "--prompt", "a red circle", "--n", "2", "--steps", "3"]
    assert main([*common, "--out", str(tmp_path / "f")]) == 0
    assert main([*common, "--dtype", "bfloat16", "--out", str(tmp_path / "b")]) == 0
    full, half = (load_file(str(tmp_path / name / "samples.safetensors"))["samples"] for name in ("f", "b"))
    assert half.dtype == torch.float32 and torch.isfinite(half).all() and not torch.equal(full, half)
    assert (full - half).abs().mean() < 0.05  # bfloat16 weights, the sampler in float32
    capsys.readouterr()
    # A warning goes to stderr, beside the error lines, not into the output a user may pipe to a file.
    assert main(["sample", "--model", pipe, "--prompt", "a red circle " * 20, "--n", "1", "--steps", "2",
                 "--out", str(tmp_path / "long")]) == 0
    out, err = capsys.readouterr()
    assert "longer than the tokenizer's limit" in err and "longer than the tokenizer's limit" not in out
    assert str(tmp_path / "long") in out  # where the samples went: still on stdout
    line = fit_user_error(capsys, *common, "--dtype", "float16", "--device", "cpu", "--out", tmp_path / "x")
    assert "--dtype float16 needs a GPU" in line
    line = fit_user_error(capsys, *common, "--device", "toaster", "--out", tmp_path / "x")
    assert "--device toaster is not a device" in line
    if not torch.cuda.is_available():
        line = fit_user_error(capsys, *common, "--device", "cuda", "--out", tmp_path / "x")
        assert "--device cuda: this machine has no CUDA device torch can use; pass --device cpu" in line
    assert not (tmp_path / "x").exists()


def test_sampling_an_empty_split_names_a_split_that_holds_the_prompts(tmp_path, capsys):
    from prefdiff.testing import tiny_pipeline
    from prefdiff.textdata.splits import hash_split

    prompts = [f"a red circle number {i}" for i in range(40) if hash_split(f"a red circle number {i}") == "train"][:3]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    pipe = tiny_pipeline(tmp_path / "pipe")
    capsys.readouterr()
    line = fit_user_error(capsys, "sample", "--model", pipe, "--dataset", "prompts",
                          "--dataset-option", f"path={tmp_path / 'prompts.txt'}", "--steps", "2",
                          "--out", tmp_path / "s")
    assert "dataset 'prompts' split 'test' is empty; its split 'train' holds 3 items: pass --split train" in line


def test_a_pair_file_with_a_byte_order_mark_or_a_binary_file_is_not_taken_for_a_prompt_list(tmp_path):
    from prefdiff.datamodule import _is_a_prompt_list

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(b"\xef\xbb\xbf" + b'{"prompt": "a red circle", "a": "a.png", "b": "b.png", "winner": "a"}\n')
    shard = tmp_path / "train-0000.parquet"
    shard.write_bytes(b"PAR1\x15\x04\x00\x00" * 8)
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"\xef\xbb\xbfa red circle\n")
    assert not _is_a_prompt_list(pairs) and not _is_a_prompt_list(shard) and _is_a_prompt_list(prompts)


@pytest.mark.parametrize("text", ["a red circle\na blue square\n", '{"prompt": "a red circle", "seed": 3}\n'],
                         ids=["txt", "jsonl"])
def test_a_prompt_list_given_as_pairs_is_named_with_where_prompts_go(tmp_path, capsys, text):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(text)
    line = fit_user_error(capsys, "fit", "--config", _family_config("dpo", tmp_path), "--data.pairs", prompts,
                          "--trainer.default_root_dir", tmp_path / "run")
    assert f"--data.pairs {prompts} is a prompt list, not preference pairs" in line
    assert f"--data.dataset prompts --data.dataset_options '{{\"path\": \"{prompts}\"}}'" in line


def test_a_mistyped_trainer_class_path_is_one_short_line_with_the_trainers(tmp_path, capsys):
    line = fit_user_error(capsys, *_tiny_fit_args(tmp_path, "--model.class_path", "prefdiff.trainers.PairModul"))
    assert "--model.class_path prefdiff.trainers.PairModul is not a trainer" in line
    assert "prefdiff.trainers.PolicyGradientModule" in line and line.endswith("did you mean prefdiff.trainers.PairModule?")
    assert "Union subtypes" not in line and "NestedArg" not in line
    line = fit_user_error(capsys, *_tiny_fit_args(tmp_path, "--model.class_path", "prefdiff.rewards.Reward"))
    assert "prefdiff.rewards.Reward is not a trainer (does not correspond to a subclass of AlignmentModule)" in line
    # a bad option of a good trainer is worded alike by jsonargparse: it is not called a wrong class_path
    line = fit_user_error(capsys, *_tiny_fit_args(tmp_path, "--model.init_args.lr", "abc"))
    assert "is not a trainer" not in line and "lr" in line


def test_checkpoint_every_on_an_epochs_last_step_saves_once_and_keeps_lightnings_state_key(tmp_path, monkeypatch):
    # Every 2 steps on epochs of 2 steps: each crossing is an epoch's last batch, which the epoch's end
    # saves; no extra save on the next epoch's first step. The callback's state keeps ModelCheckpoint's
    # key, so a checkpoint written before RunCheckpoint existed restores it.
    import pytorch_lightning as pl

    from prefdiff.run_checkpoint import RunCheckpoint

    saved = []
    save = pl.Trainer.save_checkpoint

    def recording_save(trainer, filepath, *args, **kwargs):
        save(trainer, filepath, *args, **kwargs)
        saved.append((Path(filepath).name, trainer.global_step))

    monkeypatch.setattr(pl.Trainer, "save_checkpoint", recording_save)
    assert fit_here(_family_config("sft", tmp_path), tmp_path / "run", "--checkpoint_every", 2) == 0
    assert [s for s in saved if s[0] == "last.ckpt"] == [("last.ckpt", 2), ("last.ckpt", 4), ("last.ckpt", 6)], saved
    assert RunCheckpoint().state_key.startswith("ModelCheckpoint{")
