"""The `prefdiff` command end to end, in subprocesses as a user runs it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
PREFDIFF = str(Path(sys.executable).parent / "prefdiff")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def run(*args, cwd=ROOT, timeout=300, **kw):
    return subprocess.run([PREFDIFF, *map(str, args)], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout, **kw)


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
def test_every_shipped_config_parses(config):
    result = run("fit", "--config", config, "--print_config")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "class_path: prefdiff.trainers." in result.stdout


def test_malformed_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args: [unclosed\n")
    assert_user_error(run("fit", "--config", bad), "bad.yaml", "not valid YAML", "line")


def test_unknown_names(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text((ROOT / "configs/example_ddpo.yaml").read_text()
                      .replace("reward: jpeg_compressibility", "reward: jpeg_compresibility")
                      .replace("base: runs/example-pretrain/csv/version_0/model", "base: null")
                      + "\n")
    result = run("fit", "--config", config, "--model.init_args.model", '{"kind": "unet2d", "sample_size": 16, '
                 '"conditioning": "class", "num_classes": 4, "block_out_channels": [16, 32]}')
    assert_user_error(result, "unknown reward 'jpeg_compresibility'", "jpeg_compressibility")
    assert_user_error(run("bench", "example", "--method", "ppo", "--cache", tmp_path), "unknown method 'ppo'", "ddpo")
    assert_user_error(run("bench", "nowhere"), "unknown benchmark 'nowhere'", "example")


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


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    # Enough epochs that the kill lands long before the end on an idle machine too.
    epochs = ("--trainer.max_epochs", "40")
    straight = run(*_tiny_fit_args(tmp_path / "straight", *epochs))
    assert straight.returncode == 0, straight.stderr[-3000:]
    expected = _adapter(tmp_path / "straight")

    killed = tmp_path / "killed"
    proc = subprocess.Popen([PREFDIFF, *map(str, _tiny_fit_args(killed, *epochs))],
                            cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not list(killed.rglob("last*.ckpt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(killed.rglob("last*.ckpt")), "no checkpoint was written before the kill"
    assert not list(killed.rglob("lora/adapter_model.safetensors")), "the run finished before the kill"
    resumed = run(*_tiny_fit_args(killed, *epochs, "--ckpt_path", "last"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = _adapter(killed)
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)


def test_bad_checkpoints(tmp_path):
    done = run(*_tiny_fit_args(tmp_path / "a", "--trainer.max_epochs", "1"))
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = next((tmp_path / "a").rglob("last*.ckpt"))
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[:2000])
    assert_user_error(run(*_tiny_fit_args(tmp_path / "b", "--ckpt_path", truncated)), "truncated.ckpt", "truncated")
    other = _tiny_fit_args(tmp_path / "c", "--ckpt_path", ckpt)
    other[other.index("--model.init_args.model") + 1] = other[other.index("--model.init_args.model") + 1].replace(
        "[8, 16]", "[16, 32]")
    assert_user_error(run(*other), "from another model")


def test_ddp_with_two_processes(tmp_path):
    result = run(*_tiny_fit_args(tmp_path, "--trainer.strategy", "ddp", "--trainer.devices", "2",
                                 "--trainer.max_epochs", "1", "--data.dataset_options",
                                 '{"resolution": 8, "size": 32}'), timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(tmp_path.rglob("lora/adapter_model.safetensors"))) == 1


def test_empty_dataset(tmp_path):
    args = _tiny_fit_args(tmp_path)
    args[args.index("--data.dataset_options") + 1] = '{"resolution": 8, "size": 0}'
    assert_user_error(run(*args), "size must be > 0")


def test_sample_and_edit(tmp_path):
    from prefdiff.models import build_denoiser, save_model

    torch.manual_seed(0)
    save_model(build_denoiser({"kind": "unet2d", "sample_size": 8, "conditioning": "class", "num_classes": 4,
                               "block_out_channels": [8, 16]}), tmp_path / "model")
    common = ["--model", tmp_path / "model", "--dataset", "synthetic_textures", "--dataset-option", "resolution=8",
              "--conditioner", "class_label", "--steps", "3"]
    result = run("sample", *common, "--n", "4", "--out", tmp_path / "s")
    assert result.returncode == 0, result.stderr[-2000:]
    assert load_file(str(tmp_path / "s/samples.safetensors"))["samples"].shape == (4, 3, 8, 8)
    assert (tmp_path / "s/samples.png").is_file()
    result = run("edit", *common, "--index", "1", "--cond-from", "2", "--strength", "0.5", "--out", tmp_path / "e")
    assert result.returncode == 0, result.stderr[-2000:]
    edited = load_file(str(tmp_path / "e/edit.safetensors"))["samples"]
    assert edited.shape == (2, 3, 8, 8) and not torch.equal(edited[0], edited[1])
    keep = torch.ones(1, 1, 8, 8)
    keep[..., 2:6, 2:6] = 0
    from safetensors.torch import save_file

    save_file({"keep": keep}, str(tmp_path / "mask.safetensors"))
    result = run("edit", *common, "--index", "1", "--mask", tmp_path / "mask.safetensors", "--out", tmp_path / "i")
    assert result.returncode == 0, result.stderr[-2000:]
    original, inpainted = load_file(str(tmp_path / "i/edit.safetensors"))["samples"]
    torch.testing.assert_close(inpainted * keep[0], original * keep[0])
    assert_user_error(run("edit", *common, "--strength", "1.5", "--out", tmp_path / "x"), "--strength")
    assert_user_error(run("sample", "--model", tmp_path, "--dataset", "synthetic_textures", "--out", tmp_path / "y"),
                      "not a prefdiff model folder")
