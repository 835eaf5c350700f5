"""TRL 0.23.1's DDPOTrainer or AlignPropTrainer on the shared settings (runs in benchmarks/peers/.venv).

    python trl_side.py SETTINGS_JSON {ddpo,alignprop} OUT_DIR

The trainer is built as TRL's own examples/scripts/ddpo.py and alignprop.py build it (the default
pipeline class, LoRA on, their ``project_kwargs``), with the shared settings in its config. The loop
is ``trainer.train()``'s own (``step(epoch, global_step)`` once an epoch), written out so each epoch
can be timed and its LoRA weights copied outside the timing.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import torch
from harness import (
    Recorder,
    Settings,
    jpeg_compressibility,
    smoothness,
    torchvision_without_ops,
)


def prompt_function(prompts: list[str], per_prompt: int, seed: int):
    """TRL draws one prompt per call: hand out each prompt ``per_prompt`` times in a row, the list shuffled
    each pass, so a batch holds whole groups, as prefdiff's DDPO batches (conditions x samples) do."""
    generator = torch.Generator().manual_seed(seed)
    state = {"order": [], "i": 0}

    def next_prompt():
        if state["i"] == len(state["order"]):
            state["order"] = [prompts[j] for j in torch.randperm(len(prompts), generator=generator).tolist()
                              for _ in range(per_prompt)]
            state["i"] = 0
        state["i"] += 1
        return state["order"][state["i"] - 1], {}

    return next_prompt


def main(settings_path: str, method: str, out: str) -> None:
    torchvision_without_ops()
    settings = Settings.load(settings_path)
    torch.set_num_threads(settings.threads)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    out = Path(out)
    trainer, epochs = build_trainer(settings, method, out)
    unet = trainer.sd_pipeline.unet
    recorder = Recorder(out, "trl", method, snapshot_every=int(os.environ.get("PEERS_SNAPSHOT_EVERY", "2")))
    recorder.start(unet)
    global_step = 0
    for epoch in range(trainer.first_epoch, epochs):
        global_step = trainer.step(epoch, global_step)
        recorder.epoch_done(unet)
    recorder.finish(unet, lora_tensors=sum(p.numel() for n, p in unet.named_parameters() if "lora_" in n))


def build_trainer(settings: Settings, method: str, out: Path):
    """TRL's trainer for ``method`` on the shared settings, checkpointing under ``out``: ``(trainer, epochs)``."""
    from trl import (
        AlignPropConfig,
        AlignPropTrainer,
        DDPOConfig,
        DDPOTrainer,
        DefaultDDPOStableDiffusionPipeline,
    )

    prompts = Path(settings.prompts, "train.txt").read_text().split("\n")
    prompts = [p for p in prompts if p.strip()]
    # As TRL's example scripts: checkpoints under the run's folder, five kept.
    project_kwargs = {"logging_dir": str(out / "logs"), "automatic_checkpoint_naming": True, "total_limit": 5,
                      "project_dir": str(out / "save")}
    # save_freq: TRL saves its full state (LoRA, optimizer, RNG) every epoch by default; prefdiff's Lightning
    # checkpoint is written once a pass over the prompts (len(train prompts) / batch steps). Both sides
    # checkpoint at that one cadence, inside the timed steps.
    steps_per_pass = {"ddpo": settings.ddpo["prompts_per_batch"], "alignprop": settings.alignprop["batch"]}[method]
    common = dict(save_freq=max(1, len(prompts) // steps_per_pass),
                  seed=settings.seed, mixed_precision="no", sample_num_steps=settings.num_steps,
                  sample_eta=settings.eta, sample_guidance_scale=settings.guidance_scale,
                  train_adam_weight_decay=0.0, project_kwargs=project_kwargs)
    if method == "ddpo":
        o = settings.ddpo
        batch = o["prompts_per_batch"] * o["samples_per_prompt"]
        epochs = o["epochs"]
        # One sampled batch and one optimizer step an epoch, the step over every timestep: prefdiff's
        # DDPO step. Per-prompt stat tracking over exactly the k samples of a prompt in this batch is
        # prefdiff's per-condition advantage normalisation.
        config = DDPOConfig(**common, num_epochs=epochs, sample_batch_size=batch, sample_num_batches_per_epoch=1,
                            train_batch_size=batch, train_gradient_accumulation_steps=1,
                            train_learning_rate=o["lr"], train_clip_range=o["clip_range"],
                            train_adv_clip_max=o["adv_clip_max"], train_timestep_fraction=1.0,
                            train_num_inner_epochs=1, train_cfg=settings.guidance_scale > 1,
                            per_prompt_stat_tracking=True, per_prompt_stat_tracking_buffer_size=o["samples_per_prompt"],
                            per_prompt_stat_tracking_min_count=o["samples_per_prompt"])
        per_prompt = o["samples_per_prompt"]

        def reward_function(images, prompts, metadata):  # images in [0, 1]
            return jpeg_compressibility(images * 2 - 1), {}

        trainer_class = DDPOTrainer
    elif method == "alignprop":
        o = settings.alignprop
        epochs = o["epochs"]
        # AlignProp's randomised truncation over the whole chain. TRL draws r = randint(lo, hi) (both ends
        # included) afresh at every step i and detaches step i's UNet output when i < r, so step i keeps its
        # gradient with probability (i + 1 - lo) / (hi - lo + 1). With (0, num_steps - 1) that is (i + 1) / n:
        # the last step always keeps it and on average (n + 1) / 2 steps backpropagate, which is what
        # prefdiff's alignprop does (K uniform in 1..k, k = num_steps, the last K steps). TRL's default
        # (0, 50) for 50 steps would add a 1/(n + 1) chance of no gradient at all.
        config = AlignPropConfig(**common, num_epochs=epochs, train_batch_size=o["batch"],
                                 train_gradient_accumulation_steps=1, train_learning_rate=o["lr"],
                                 truncated_backprop_rand=True,
                                 truncated_rand_backprop_minmax=(0, settings.num_steps - 1))
        per_prompt = 1

        def reward_function(images, prompts, metadata):  # images in [0, 1], with gradients
            return smoothness(images * 2 - 1), {}

        trainer_class = AlignPropTrainer
    else:
        raise SystemExit(f"method must be ddpo or alignprop, got {method}")

    from accelerate import PartialState

    PartialState()  # the pipeline warns through accelerate's logger (no LoRA file in the base) before any Accelerator
    pipeline = DefaultDDPOStableDiffusionPipeline(settings.base, use_lora=True)
    trainer = trainer_class(config, reward_function, prompt_function(prompts, per_prompt, settings.seed), pipeline)
    return trainer, epochs


if __name__ == "__main__":
    main(*sys.argv[1:])
