"""TRL's half of ``same_step.py`` (runs in benchmarks/peers/.venv).

    python same_step_trl.py SETTINGS_JSON EPOCHS OUT_FILE             # TRL samples and trains
    python same_step_trl.py SETTINGS_JSON EPOCHS OUT_FILE BATCHES_PT  # TRL trains on prefdiff's batches

Either way EPOCHS epochs of TRL's DDPOTrainer, built as ``trl_side.py`` builds it, and the LoRA after each
epoch's one optimizer step is saved to OUT_FILE. Without BATCHES_PT TRL samples its own batches and OUT_FILE
also holds them (prompts, latents, timesteps, log-probs, rewards) and its starting LoRA, for prefdiff to
replay. With BATCHES_PT (``same_step.py --sampler prefdiff``) TRL starts from prefdiff's starting LoRA and
each epoch's sampling and scoring hand it prefdiff's batch and rewards instead; the rest of
``DDPOTrainer.step`` (text embeddings, per-prompt advantages, shuffles, log-probs, PPO loss, clipping, AdamW)
is TRL's own.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import torch
from harness import Settings, torchvision_without_ops


def main(settings_path: str, epochs: str, out_file: str, batches_file: str | None = None) -> None:
    torchvision_without_ops()
    settings = Settings.load(settings_path)
    torch.set_num_threads(settings.threads)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from trl_side import build_trainer

    given = torch.load(batches_file) if batches_file else None
    with tempfile.TemporaryDirectory() as scratch:
        trainer, _ = build_trainer(settings, "ddpo", Path(scratch))
        unet = trainer.sd_pipeline.unet
        lora = lambda: {n: p.detach().clone() for n, p in unet.named_parameters() if "lora_" in n}  # noqa: E731
        sampled = []
        if given is None:
            generate = trainer._generate_samples

            def keep_samples(*args, **kwargs):
                sampled.append(generate(*args, **kwargs))
                return sampled[-1]

            trainer._generate_samples = keep_samples
        else:
            start_from(unet, given["lora_start"])
            hand_over(trainer, settings, given["batches"])
        start, after, global_step = lora(), [], 0
        for epoch in range(int(epochs)):
            global_step = trainer.step(epoch, global_step)
            after.append(lora())
    if given is not None:
        torch.save({"lora_after": after}, out_file)
        return
    batches = []
    for (batch,), ((_, prompts, _, rewards, _),) in sampled:  # TRL's step appends [rewards, metadata] to the second
        batches.append({"prompts": list(prompts), "rewards": torch.as_tensor(rewards).float(),
                        "timesteps": batch["timesteps"][0], "log_probs": batch["log_probs"],
                        "latents": torch.cat([batch["latents"], batch["next_latents"][:, -1:]], dim=1)})
    torch.save({"lora_start": start, "lora_after": after, "batches": batches}, out_file)


def start_from(unet: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy a LoRA (peft's parameter names, as both sides name them) into TRL's UNet; the sets must match."""
    params = {n: p for n, p in unet.named_parameters() if "lora_" in n}
    if sorted(params) != sorted(state):
        raise SystemExit(f"error: the sides adapt different layers: {sorted(params)[:2]} vs {sorted(state)[:2]}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state[name])


def hand_over(trainer, settings: Settings, batches: list[dict]) -> None:
    """Make TRL's sampling and scoring return prefdiff's batches, one an epoch, in TRL's own sample layout."""
    pipe, state = trainer.sd_pipeline, {"epoch": -1}

    def generate(iterations: int, batch_size: int):
        state["epoch"] += 1
        batch = batches[state["epoch"]]
        prompts = batch["prompts"]
        if iterations != 1 or len(prompts) != batch_size:
            raise SystemExit(f"error: TRL wants {iterations} x {batch_size} samples, prefdiff's batch holds {len(prompts)}")
        pipe.scheduler.set_timesteps(settings.num_steps)  # what TRL's sampler leaves the scheduler at
        if not torch.equal(pipe.scheduler.timesteps, batch["timesteps"]):
            raise SystemExit(f"error: timesteps differ: TRL {pipe.scheduler.timesteps.tolist()}, "
                             f"prefdiff {batch['timesteps'].tolist()}")
        ids = pipe.tokenizer(prompts, return_tensors="pt", padding="max_length", truncation=True,
                             max_length=pipe.tokenizer.model_max_length).input_ids
        with torch.no_grad():
            embeds = pipe.text_encoder(ids)[0]
        latents = batch["latents"]
        sample = {"prompt_ids": ids, "prompt_embeds": embeds, "timesteps": batch["timesteps"].repeat(batch_size, 1),
                  "latents": latents[:, :-1], "next_latents": latents[:, 1:], "log_probs": batch["log_probs"],
                  "negative_prompt_embeds": trainer.neg_prompt_embed.repeat(batch_size, 1, 1)}
        return [sample], [[None, prompts, [{}] * batch_size]]

    def rewards(prompt_image_data, is_async=False):
        return [batches[state["epoch"]]["rewards"]], [{}]

    trainer._generate_samples = generate
    trainer.compute_rewards = rewards


if __name__ == "__main__":
    main(*sys.argv[1:])
