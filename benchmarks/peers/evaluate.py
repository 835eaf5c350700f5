"""Held-out scores of LoRA snapshots, the same code for every side (runs in prefdiff's venv, on diffusers).

Neither prefdiff's sampler nor TRL's is used here: diffusers' own ``StableDiffusionPipeline`` samples
from the shared base with each snapshot's LoRA weights (peft, the targets of ``harness.ATTENTION_TARGETS``),
so a difference between sides can only come from the weights they trained.

- ``sample_rewards``: held-out prompts, the training sampler (DDIM, the settings' eta and steps) from one
  fixed generator, so every snapshot sees the same initial and step noise; images scored by
  ``harness.jpeg_compressibility`` and ``harness.smoothness``.
- ``implicit_accuracy``: held-out Pick-a-Pic pairs, fixed timesteps and noise; the fraction of
  (pair, draw) where the model's DPO logit ``(ref_w - ref_l) - (model_w - model_l)`` is positive
  (Wallace et al. 2023, eq. 14's implicit reward margin), ties counting one half as in the example.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from harness import ATTENTION_TARGETS, Settings, jpeg_compressibility, smoothness


class Evaluator:
    """Loads the base pipeline once and scores snapshots of LoRA weights."""

    def __init__(self, settings: Settings, samples_per_prompt: int = 4, draws_per_pair: int = 2) -> None:
        from diffusers import DDIMScheduler, StableDiffusionPipeline
        from peft import LoraConfig

        self.settings = settings
        pipe = StableDiffusionPipeline.from_pretrained(settings.base, local_files_only=True)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        pipe.unet.add_adapter(LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_rank,
                                         target_modules=ATTENTION_TARGETS))
        self.pipe = pipe
        self.keys = {n.replace(".default", "") for n, _ in pipe.unet.named_parameters() if "lora_" in n}
        held_out = [p for p in Path(settings.prompts, "val.txt").read_text().splitlines() if p.strip()]
        self.prompts = [p for p in held_out for _ in range(samples_per_prompt)]
        self.draws_per_pair = draws_per_pair
        self._pairs = None

    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Put a snapshot's LoRA weights in the UNet; the key sets must match exactly."""
        if set(state) != self.keys:
            missing, extra = sorted(self.keys - set(state)), sorted(set(state) - self.keys)
            raise ValueError(f"snapshot does not fit the evaluator's adapter: missing {missing[:3]}, extra {extra[:3]}")
        params = dict(self.pipe.unet.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                target = name.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default.")
                params[target].copy_(value)

    @torch.no_grad()
    def sample_rewards(self) -> dict[str, float]:
        s = self.settings
        generator = torch.Generator().manual_seed(12345)  # the same held-out noise whatever the training seed
        images = self.pipe(self.prompts, num_inference_steps=s.num_steps, guidance_scale=s.guidance_scale,
                           eta=s.eta, generator=generator, output_type="pt").images * 2 - 1
        return {"jpeg_compressibility": float(jpeg_compressibility(images).mean()),
                "smoothness": float(smoothness(images).mean())}

    def _held_out_pairs(self):
        """Validation pairs as (winner latents, loser latents, text states, timesteps, noise), made once."""
        if self._pairs is None:
            import pyarrow.parquet as pq
            from PIL import Image

            pipe = self.pipe
            table = pq.read_table(Path(self.settings.pairs, "validation-00000-of-00001.parquet")).to_pydict()

            def pixels(data: bytes) -> torch.Tensor:
                image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32)
                return torch.from_numpy(image / 127.5 - 1).permute(2, 0, 1)

            first = torch.tensor(table["label_0"]) == 1
            x0 = torch.stack([pixels(b) for b in table["jpg_0"]])
            x1 = torch.stack([pixels(b) for b in table["jpg_1"]])
            winners = torch.where(first[:, None, None, None], x0, x1)
            losers = torch.where(first[:, None, None, None], x1, x0)
            with torch.no_grad():
                scale = pipe.vae.config.scaling_factor
                z_w = pipe.vae.encode(winners).latent_dist.mode() * scale
                z_l = pipe.vae.encode(losers).latent_dist.mode() * scale
                ids = pipe.tokenizer(table["caption"], padding="max_length", truncation=True,
                                     max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
                states = pipe.text_encoder(ids)[0]
            k = self.draws_per_pair
            generator = torch.Generator().manual_seed(777)
            z_w, z_l, states = (v.repeat_interleave(k, 0) for v in (z_w, z_l, states))
            t = torch.randint(0, pipe.scheduler.config.num_train_timesteps, (z_w.shape[0],), generator=generator)
            noise = torch.randn(z_w.shape, generator=generator)
            self._pairs = (z_w, z_l, states, t, noise)
        return self._pairs

    @torch.no_grad()
    def implicit_accuracy(self) -> float:
        z_w, z_l, states, t, noise = self._held_out_pairs()
        unet, scheduler = self.pipe.unet, self.pipe.scheduler

        def errors() -> tuple[torch.Tensor, torch.Tensor]:
            out = []
            for z in (z_w, z_l):
                pred = unet(scheduler.add_noise(z, noise, t), t, states).sample
                out.append((pred - noise).pow(2).flatten(1).mean(1))
            return out[0], out[1]

        model_w, model_l = errors()
        unet.disable_adapters()
        try:
            ref_w, ref_l = errors()
        finally:
            unet.enable_adapters()
        logits = (ref_w - ref_l) - (model_w - model_l)
        return float((logits > 0).float().mean() + 0.5 * (logits == 0).float().mean())
