"""FSDP2 through Lightning's ModelParallelStrategy (prefdiff.trainers.sharding): two CPU processes over gloo
train what one process trains with the same global batch, and resume exactly after both are SIGKILLed."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from prefdiff.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
# 16 and 32 channels, as in tests/test_cli.py's DDP test: with 8 channels in 8 GroupNorm groups some
# gradients are rounding noise that Adam turns into steps of up to lr.
TINY = {"kind": "unet2d", "sample_size": 8, "conditioning": "class", "num_classes": 4, "block_out_channels": [16, 32]}
FSDP = {"class_path": "pytorch_lightning.strategies.ModelParallelStrategy",
        "init_args": {"data_parallel_size": 2, "tensor_parallel_size": 1, "save_distributed_checkpoint": False}}


def sft_config(folder: Path) -> Path:
    """Full fine-tuning (SFT, LoRA off) of a tiny UNet: 2 steps of a global batch of 4 per epoch."""
    config = {"seed_everything": 0,
              "trainer": {"accelerator": "cpu", "max_epochs": 2, "logger": False, "enable_progress_bar": False,
                          "enable_model_summary": False, "limit_val_batches": 0},
              "model": {"class_path": "prefdiff.trainers.SFTModule",
                        "init_args": {"model": TINY, "conditioner": "class_label", "lr": 0.01, "lora_rank": 0}},
              "data": {"dataset": "synthetic_textures", "dataset_options": {"resolution": 8, "size": 8},
                       "batch_size": 4, "val_size": 0}}
    path = folder / "sft.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def fit(*args, timeout=300):
    """`prefdiff fit` in a process of its own (Lightning starts the second rank from its command line)."""
    command = [sys.executable, "-m", "prefdiff.cli", "fit", *map(str, args)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def one_process(config: Path, root: Path, epochs: int) -> dict[str, torch.Tensor]:
    """The network's weights after ``epochs`` epochs in this process, with the whole global batch."""
    from prefdiff.cli import main

    assert main(["fit", "--config", str(config), "--trainer.default_root_dir", str(root),
                 "--trainer.max_epochs", str(epochs)]) == 0
    return load_file(str(next(root.rglob("model/net/*.safetensors"))))


def assert_same_training(two: dict[str, torch.Tensor], one: dict[str, torch.Tensor], steps: int) -> None:
    """The same weights but where Adam turned a rounding-noise gradient into a step: at most 1 in 1000
    weights may differ by more than 5e-4, none by more than lr (0.01) a step (on an AMD EPYC one weight
    of 13824 moved 1.1e-3 apart after 2 steps; sharding the batch wrongly moves most of them)."""
    assert two.keys() == one.keys()
    diff = torch.cat([(two[key] - one[key]).abs().flatten() for key in one])
    assert float((diff > 5e-4).float().mean()) <= 1e-3, f"{int((diff > 5e-4).sum())} of {diff.numel()} weights differ"
    assert float(diff.max()) <= 0.01 * steps


def test_two_fsdp_processes_train_and_resume_as_one_process_after_a_kill(tmp_path):
    config = sft_config(tmp_path)
    fsdp = ["--trainer.devices", "2", "--trainer.strategy", yaml.safe_dump(FSDP, default_flow_style=True).strip(),
            "--data.batch_size", "2"]  # per process: the same global batch of 4
    kill = tmp_path / "kill.yaml"
    kill.write_text(yaml.safe_dump({"trainer": {"callbacks": [{
        "class_path": "prefdiff.reliability.callbacks.KillInEpoch", "init_args": {"epoch": 1}}]}}))
    # Two ranks, both SIGKILLed one step into the second epoch (the first epoch's last.ckpt written),
    # then resumed from that checkpoint for the second.
    first = fit("--config", config, "--config", kill, "--trainer.default_root_dir", tmp_path / "two", *fsdp)
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    assert not list((tmp_path / "two").rglob("model/net/*.safetensors")), "the run finished before the kill"
    ckpt = next((tmp_path / "two").rglob("last.ckpt"))
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (0, 2)
    state = checkpoint["state_dict"]
    assert all(type(v) is torch.Tensor for v in state.values())  # one whole checkpoint, not shards
    after_one = one_process(config, tmp_path / "one-epoch", 1)
    assert_same_training({k.removeprefix("denoiser.net."): v for k, v in state.items()
                          if k.startswith("denoiser.net.")}, after_one, steps=2)

    resumed = fit("--config", config, "--trainer.default_root_dir", tmp_path / "two", *fsdp, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    two = load_file(str(next((tmp_path / "two").rglob("model/net/*.safetensors"))))  # gathered and exported
    after_two = one_process(config, tmp_path / "two-epochs", 2)
    assert max(float((after_two[k] - after_one[k]).abs().max()) for k in after_one) > 1e-2  # epoch 2 trained
    assert_same_training(two, after_two, steps=4)


class FakeMesh:
    """A device mesh of 2 devices, all tensor-parallel (a real one needs a process group)."""

    def size(self) -> int:
        return 2

    def __getitem__(self, name: str):
        return FakeMesh() if name == "tensor_parallel" else None


def test_only_data_parallel_sharding_is_accepted():
    """ModelParallelStrategy's default sizes make each machine's devices tensor-parallel ranks: refused, with the fix."""
    from types import SimpleNamespace

    from pytorch_lightning.strategies import ModelParallelStrategy

    from prefdiff.trainers import SFTModule

    module = SFTModule(model=TINY, conditioner="class_label", lora_rank=0)
    module.configure_model()  # outside a Trainer: nothing to shard
    module._trainer, module._device_mesh = SimpleNamespace(strategy=ModelParallelStrategy()), FakeMesh()
    with pytest.raises(UserError, match="data_parallel_size 2 and --trainer.strategy.init_args.tensor_parallel_size 1"):
        module.configure_model()
