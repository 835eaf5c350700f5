"""The diffusers Diffusion-DPO example on the shared settings (runs in benchmarks/peers/.venv).

    python dpo_side.py SETTINGS_JSON OUT_DIR SCRIPT

SCRIPT is diffusers' examples/research_projects/diffusion_dpo/train_diffusion_dpo.py, which is not on
PyPI and is not in this repository: run.py finds it in a diffusers checkout (see README.md). It runs
unmodified, as ``python train_diffusion_dpo.py ARGS`` would, through runpy; two wrappers watch it:
``accelerate.Accelerator.prepare`` hands over the UNet it prepares (to snapshot its LoRA weights), and the
learning-rate scheduler's ``step``, called once after every optimizer step, marks the step boundary.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import torch
from harness import Recorder, Settings, torchvision_without_ops


def main(settings_path: str, out: str, script: str) -> None:
    torchvision_without_ops()
    settings = Settings.load(settings_path)
    torch.set_num_threads(settings.threads)
    if not Path(script).is_file():
        raise SystemExit(f"the Diffusion-DPO example script {script} does not exist")
    import accelerate
    import diffusers.optimization

    out = Path(out)
    recorder = Recorder(out, "diffusers", "dpo", snapshot_every=int(os.environ.get("PEERS_SNAPSHOT_EVERY", "2")))
    watched = {}

    class WatchedAccelerator(accelerate.Accelerator):
        def prepare(self, *args, **kwargs):
            prepared = super().prepare(*args, **kwargs)
            for thing in prepared if isinstance(prepared, tuple) else (prepared,):
                if isinstance(thing, torch.nn.Module) and "unet" not in watched:
                    watched["unet"] = self.unwrap_model(thing)
                    recorder.start(watched["unet"])
            return prepared

    make_scheduler = diffusers.optimization.get_scheduler

    def watched_scheduler(*args, **kwargs):
        scheduler = make_scheduler(*args, **kwargs)
        step = scheduler.step

        def step_and_mark(*a, **k):
            result = step(*a, **k)
            recorder.epoch_done(watched["unet"])
            return result

        scheduler.step = step_and_mark
        return scheduler

    accelerate.Accelerator = WatchedAccelerator
    diffusers.optimization.get_scheduler = watched_scheduler
    o = settings.dpo
    # beta: the example's loss is -logsigmoid(beta_dpo * (ref_diff - model_diff)); the Diffusion-DPO authors'
    # code, and prefdiff's --model.beta, put -0.5 * beta in front of (model_diff - ref_diff). The settings hold
    # beta in the authors' (prefdiff's) convention, so the example gets half of it: the same loss.
    sys.argv = [script, "--pretrained_model_name_or_path", settings.base, "--dataset_name", settings.pairs,
                "--dataset_split_name", "train", "--cache_dir", str(out / "hf-cache"), "--output_dir", str(out / "run"),
                "--seed", str(settings.seed), "--resolution", str(settings.image_size), "--no_hflip",
                "--train_batch_size", str(o["batch"]), "--max_train_steps", str(o["steps"]),
                "--learning_rate", str(o["lr"]), "--lr_scheduler", "constant", "--lr_warmup_steps", "0",
                "--adam_weight_decay", "0", "--beta_dpo", f"{o['beta'] / 2:g}", "--rank", str(settings.lora_rank)]
    runpy.run_path(script, run_name="__main__")
    unet = watched["unet"]
    recorder.finish(unet, lora_tensors=sum(p.numel() for n, p in unet.named_parameters() if "lora_" in n))


if __name__ == "__main__":
    main(*sys.argv[1:])
