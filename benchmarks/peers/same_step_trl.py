"""TRL's half of ``same_step.py`` (runs in benchmarks/peers/.venv).

    python same_step_trl.py SETTINGS_JSON OUT_FILE

One epoch of TRL's DDPOTrainer, built as ``trl_side.py`` builds it, with its sampled batch, rewards and the
LoRA before and after the epoch's one optimizer step saved to OUT_FILE for prefdiff to replay.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import torch
from harness import Settings, torchvision_without_ops


def main(settings_path: str, out_file: str) -> None:
    torchvision_without_ops()
    settings = Settings.load(settings_path)
    torch.set_num_threads(settings.threads)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from trl_side import build_trainer

    with tempfile.TemporaryDirectory() as scratch:
        trainer, _ = build_trainer(settings, "ddpo", Path(scratch))
        unet = trainer.sd_pipeline.unet
        lora = lambda: {n: p.detach().clone() for n, p in unet.named_parameters() if "lora_" in n}  # noqa: E731
        seen = {}
        generate = trainer._generate_samples

        def keep_samples(*args, **kwargs):
            seen["samples"], seen["images"] = generate(*args, **kwargs)
            return seen["samples"], seen["images"]

        trainer._generate_samples = keep_samples
        before = lora()
        trainer.step(0, 0)
        after = lora()
    # One sampled batch: [images, prompts, metadata], to which TRL's step appends [rewards, reward metadata].
    (batch,), ((_, prompts, _, rewards, _),) = seen["samples"], seen["images"]
    torch.save({"lora_before": before, "lora_after": after, "prompts": list(prompts),
                "rewards": torch.as_tensor(rewards).float(), "timesteps": batch["timesteps"][0],
                "latents": torch.cat([batch["latents"], batch["next_latents"][:, -1:]], dim=1),
                "log_probs": batch["log_probs"]}, out_file)


if __name__ == "__main__":
    main(*sys.argv[1:])
