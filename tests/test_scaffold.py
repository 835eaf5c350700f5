"""`prefdiff new-plugin` writes a package that installs, lists and passes its own tests."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from prefdiff.errors import UserError
from prefdiff.scaffold import new_plugin

ROOT = Path(__file__).resolve().parents[1]


def _overlay_env(root: Path) -> Path:
    """A venv of its own that sees this one's packages through a .pth file, so that what the test
    installs stays out of the venv that the other tests (run in parallel) import from. Returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", root], check=True)
    site = next(root.glob("lib/python*/site-packages"))
    shared = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (site / "shared_venv.pth").write_text("".join(f"import site; site.addsitedir({d!r})\n" for d in shared))
    return root / "bin" / "python"


def test_bad_names_and_occupied_folders(tmp_path):
    with pytest.raises(UserError, match="lower-case"):
        new_plugin("Bad-Name", tmp_path / "x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full/file").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        new_plugin("fine", tmp_path / "full")
    for taken in ("example", "medical"):  # a built-in, an installed field plugin: one of the two would not load
        with pytest.raises(UserError, match=f"plugin name '{taken}' is taken by an installed plugin"):
            new_plugin(taken, tmp_path / taken)
        assert not (tmp_path / taken).exists()


def test_generated_plugin_installs_lists_and_passes_its_tests(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    python = _overlay_env(tmp_path / "venv")
    prefdiff = [python, "-m", "prefdiff.cli"]
    # A vessel left in the shared venv (by an older version of this test) would show through the overlay.
    assert "vessel" not in subprocess.run([*prefdiff, "plugins"], env=env, capture_output=True, text=True).stdout
    target = tmp_path / "prefdiff-vessel"
    made = subprocess.run([*prefdiff, "new-plugin", "vessel", "--dir", target], env=env,
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    install = subprocess.run([*prefdiff, "plugins", "install", "-e", target], env=env,
                             capture_output=True, text=True, timeout=300)
    try:
        assert install.returncode == 0, install.stderr[-2000:]
        listed = subprocess.run([*prefdiff, "plugins"], env=env, capture_output=True, text=True)
        assert "vessel 0.1.0" in listed.stdout and "vessel_contrast" in listed.stdout, listed.stdout
        tests = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", target / "tests"],
                               env=env, capture_output=True, text=True, cwd=target, timeout=300)
        assert tests.returncode == 0, tests.stdout[-3000:]
        assert "3 passed" in tests.stdout
        # `prefdiff fit` trains with the new reward by its name alone.
        fit = subprocess.run([*prefdiff, "fit", "--config", ROOT / "configs/example_ddpo.yaml",
                              "--trainer.default_root_dir", tmp_path / "run", "--trainer.logger", "false",
                              "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
                              "--trainer.enable_progress_bar", "false", "--model.init_args.base", "null",
                              "--model.init_args.model", '{"kind": "unet2d", "sample_size": 8, '
                              '"conditioning": "class", "num_classes": 4, "block_out_channels": [8, 16]}',
                              "--model.init_args.num_steps", "3", "--model.init_args.samples_per_condition", "2",
                              "--model.init_args.reward", "vessel_contrast",
                              "--data.dataset", "vessel_blobs", "--data.dataset_options", '{"resolution": 8, "size": 16}',
                              "--data.batch_size", "4", "--data.val_size", "0"],
                             env=env, capture_output=True, text=True, timeout=300)
        assert fit.returncode == 0, fit.stderr[-3000:]
        assert list((tmp_path / "run").rglob("lora/adapter_model.safetensors"))
    finally:
        subprocess.run([*prefdiff, "plugins", "uninstall", "prefdiff-vessel"], env=env,
                       capture_output=True, text=True)
    listed = subprocess.run([*prefdiff, "plugins"], env=env, capture_output=True, text=True)
    assert "vessel" not in listed.stdout
