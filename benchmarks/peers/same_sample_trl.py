"""TRL's half of ``same_sample.py`` (runs in benchmarks/peers/.venv).

    python same_sample_trl.py SETTINGS_JSON PREFDIFF_BATCH_PT OUT_FILE

Samples prefdiff's prompts with TRL's DDPO pipeline, built as ``trl_side.py`` builds it, carrying prefdiff's
LoRA, as ``DDPOTrainer._generate_samples`` calls it (prompt embeddings, the empty prompt's as the negative,
the settings' steps, guidance and eta), from a generator seeded as prefdiff's was. TRL's
``ddim_step_with_logprob`` draws its noise with ``randn_tensor`` and no generator (torch's global RNG); here
that draw takes the pipeline's generator, so the start and every step's noise come from one stream in the
order prefdiff draws them. Saves the latents, step log-probs, images (in [-1, 1]) and rewards to OUT_FILE.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import torch
from harness import Settings, jpeg_compressibility, torchvision_without_ops


def main(settings_path: str, batch_file: str, out_file: str) -> None:
    torchvision_without_ops()
    settings = Settings.load(settings_path)
    torch.set_num_threads(settings.threads)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import trl.models.modeling_sd_base as sd_base
    from same_step_trl import start_from
    from trl_side import build_trainer

    given = torch.load(batch_file)
    generator = torch.Generator().manual_seed(given["noise_seed"])
    sd_base.randn_tensor = lambda shape, generator=None, device=None, dtype=None, _g=generator: torch.randn(
        shape, generator=_g, dtype=dtype)
    with tempfile.TemporaryDirectory() as scratch:
        trainer, _ = build_trainer(settings, "ddpo", Path(scratch))
        pipe = trainer.sd_pipeline
        start_from(pipe.unet, given["lora"])
        prompts = given["prompts"]
        ids = pipe.tokenizer(prompts, return_tensors="pt", padding="max_length", truncation=True,
                             max_length=pipe.tokenizer.model_max_length).input_ids
        with torch.no_grad():
            embeds = pipe.text_encoder(ids)[0]
            out = pipe(prompt_embeds=embeds, negative_prompt_embeds=trainer.neg_prompt_embed.repeat(len(prompts), 1, 1),
                       num_inference_steps=settings.num_steps, guidance_scale=settings.guidance_scale,
                       eta=settings.eta, output_type="pt", generator=generator)
    images = out.images * 2 - 1  # TRL hands its reward images in [0, 1]
    torch.save({"latents": torch.stack(out.latents, dim=1), "log_probs": torch.stack(out.log_probs, dim=1),
                "images": images, "rewards": jpeg_compressibility(images)}, out_file)


if __name__ == "__main__":
    main(*sys.argv[1:])
