"""TRL's half of ``same_step.py`` (runs in benchmarks/peers/.venv).

    python same_step_trl.py SETTINGS_JSON EPOCHS OUT_FILE

EPOCHS epochs of TRL's DDPOTrainer, built as ``trl_side.py`` builds it, with each epoch's sampled batch and
rewards, the LoRA at the start and the LoRA after each epoch's one optimizer step saved to OUT_FILE for
prefdiff to replay.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import torch
from harness import Settings, torchvision_without_ops


def main(settings_path: str, epochs: str, out_file: str) -> None:
    torchvision_without_ops()
    settings = Settings.load(settings_path)
    torch.set_num_threads(settings.threads)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from trl_side import build_trainer

    with tempfile.TemporaryDirectory() as scratch:
        trainer, _ = build_trainer(settings, "ddpo", Path(scratch))
        unet = trainer.sd_pipeline.unet
        lora = lambda: {n: p.detach().clone() for n, p in unet.named_parameters() if "lora_" in n}  # noqa: E731
        sampled = []
        generate = trainer._generate_samples

        def keep_samples(*args, **kwargs):
            sampled.append(generate(*args, **kwargs))
            return sampled[-1]

        trainer._generate_samples = keep_samples
        start, after, global_step = lora(), [], 0
        for epoch in range(int(epochs)):
            global_step = trainer.step(epoch, global_step)
            after.append(lora())
    batches = []
    for (batch,), ((_, prompts, _, rewards, _),) in sampled:  # TRL's step appends [rewards, metadata] to the second
        batches.append({"prompts": list(prompts), "rewards": torch.as_tensor(rewards).float(),
                        "timesteps": batch["timesteps"][0], "log_probs": batch["log_probs"],
                        "latents": torch.cat([batch["latents"], batch["next_latents"][:, -1:]], dim=1)})
    torch.save({"lora_start": start, "lora_after": after, "batches": batches}, out_file)


if __name__ == "__main__":
    main(*sys.argv[1:])
