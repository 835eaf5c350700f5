"""The field's initial latent pipeline: a VAE trained on the world, a frozen text encoder, a random UNet.

:func:`build_pipeline` trains an ``AutoencoderKL`` on the world's training
images (reconstruction plus a small KL, Kingma & Welling 2014), sets its
``scaling_factor`` so the latents have unit variance (as Stable Diffusion's
0.18215), and writes a diffusers ``StableDiffusionPipeline`` folder with a
tiny frozen ``CLIPTextModel`` (random weights: it is deterministic and never
trains), a word-level tokenizer and a ``UNet2DConditionModel`` with random
weights. ``prefdiff bench`` then pretrains the UNet by SFT from that folder.

The tokenizer is a real ``CLIPTokenizer`` whose BPE merges join each word of
the world's vocabulary into one token: a prompt reaches the UNet as one
embedding per word, not per character.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from prefdiff_t2i import world

log = logging.getLogger("prefdiff.t2i")

MAX_TOKENS = 12
"""Tokens per prompt (begin, up to 8 words, end, padding): the longest caption has 8 words."""
MAX_CHARS = 48
"""Tokens per prompt with the character tokenizer (the longest caption has 42 characters)."""


@dataclass
class PipelineSpec:
    """The sizes of the initial pipeline and of the VAE's training."""

    resolution: int = 32
    """Image side in pixels."""
    vae_channels: tuple[int, ...] = (16, 32, 32)
    """VAE block widths; the latent side is resolution / 2 ** (len - 1)."""
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (64, 128)
    """UNet block widths; every block has cross-attention to the prompt."""
    unet_layers: int = 1
    attention_heads: int = 2
    """Attention heads per block (diffusers calls it ``attention_head_dim``)."""
    text_width: int = 64
    """Hidden size of the text encoder (= the UNet's cross_attention_dim)."""
    text_layers: int = 2
    vae_steps: int = 500
    vae_batch: int = 32
    vae_lr: float = 3e-3
    kl_weight: float = 1e-5
    object_weight: float = 4.0
    """Extra weight of object pixels in the reconstruction loss."""
    seed: int = 0
    tokenizer: str = "word"
    """``word`` (one token per caption word) or ``char`` (one per character)."""

    def tag(self) -> str:
        """A short hash of these settings (the pipeline folder's name)."""
        import hashlib

        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


# ----------------------------------------------------------- tokenizer ----


def vocabulary() -> list[str]:
    """Every word a caption of the world uses."""
    words = {"a", *world.COLOURS, *world.SHAPES, *map(world.plural, world.SHAPES), *world.COUNT_WORDS}
    for relation in world.RELATIONS:
        words.update(relation.split())
    return sorted(words)


def word_tokenizer(max_length: int = MAX_TOKENS, words: bool = True):
    """A ``CLIPTokenizer`` built offline: GPT-2's byte alphabet plus merges that make each word of
    :func:`vocabulary` one token (other text falls back to characters); ``words=False`` leaves
    the merges out (one token per character)."""
    from transformers import CLIPTokenizer

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    chars = [chr(c) for c in printable] + [chr(256 + i) for i in range(len(extra))]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    merges: list[tuple[str, str]] = []
    # Longer words' merges rank first, so a short word's merge (say "r e" of "red") never
    # splits a longer word ("squares") before its own chain joins it.
    for word in sorted(vocabulary(), key=len, reverse=True) if words else []:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        joined = pieces[0]
        for piece in pieces[1:]:
            merge = (joined, piece)
            joined += piece
            if merge not in merges:
                merges.append(merge)
            vocab.setdefault(joined, len(vocab))
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def text_encoder(spec: PipelineSpec, tokenizer):
    """A tiny ``CLIPTextModel`` with random weights (seeded), sized to the tokenizer."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(spec.seed + 11)
    config = CLIPTextConfig(hidden_size=spec.text_width, intermediate_size=2 * spec.text_width,
                            num_attention_heads=4, num_hidden_layers=spec.text_layers,
                            vocab_size=len(tokenizer), max_position_embeddings=tokenizer.model_max_length,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, projection_dim=spec.text_width)
    return CLIPTextModel(config).eval()


# ----------------------------------------------------------------- VAE ----


def build_vae(spec: PipelineSpec):
    """A fresh ``AutoencoderKL`` of the spec's widths (seeded)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(spec.seed + 13)
    n = len(spec.vae_channels)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(spec.vae_channels),
                         layers_per_block=1, latent_channels=spec.latent_channels, norm_num_groups=16,
                         sample_size=spec.resolution)


def train_vae(spec: PipelineSpec, images: torch.Tensor) -> tuple[torch.nn.Module, dict[str, float]]:
    """Train the VAE on ``images`` ``[N, 3, H, W]`` in [-1, 1]; returns it (frozen, with its
    ``scaling_factor`` set) and its held-back reconstruction error."""
    vae = build_vae(spec)
    g = torch.Generator().manual_seed(spec.seed + 17)
    n_held = min(64, len(images) // 8)
    held, train = images[len(images) - n_held:], images[:len(images) - n_held]
    optimizer = torch.optim.AdamW(vae.parameters(), lr=spec.vae_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=spec.vae_lr, total_steps=spec.vae_steps,
                                                   pct_start=0.1)
    start = time.perf_counter()
    vae.train()
    for step in range(spec.vae_steps):
        x = train[torch.randint(len(train), (spec.vae_batch,), generator=g)]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g)
        recon = vae.decode(z).sample
        # Objects cover a small part of the image: weight their pixels up, or the VAE learns a
        # black background first and colours last. Squared error keeps the edges (shapes) sharper.
        weight = 1.0 + spec.object_weight * (x > -0.9).any(1, keepdim=True).float()
        loss = ((recon - x) ** 2 * weight).mean() + spec.kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        latents = torch.cat([vae.encode(train[i:i + 256]).latent_dist.mode() for i in range(0, min(len(train), 2048), 256)])
        scale = float(1.0 / latents.std())
        recon = vae.decode(vae.encode(held).latent_dist.mode()).sample
    vae.register_to_config(scaling_factor=scale)
    stats = {"vae_l1": float((recon - held).abs().mean()), "scaling_factor": scale,
             "vae_wall_s": time.perf_counter() - start}
    log.info(f"VAE: {spec.vae_steps} steps in {stats['vae_wall_s']:.0f} s, held-back L1 {stats['vae_l1']:.4f}")
    return vae, stats


# ---------------------------------------------------------------- UNet ----


def build_unet(spec: PipelineSpec):
    """A ``UNet2DConditionModel`` with random weights (seeded) on the VAE's latents."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(spec.seed + 19)
    n = len(spec.unet_channels)
    latent_side = spec.resolution // 2 ** (len(spec.vae_channels) - 1)
    return UNet2DConditionModel(sample_size=latent_side, in_channels=spec.latent_channels,
                                out_channels=spec.latent_channels, layers_per_block=spec.unet_layers,
                                block_out_channels=tuple(spec.unet_channels), norm_num_groups=16,
                                attention_head_dim=spec.attention_heads, cross_attention_dim=spec.text_width,
                                down_block_types=("CrossAttnDownBlock2D",) * n,
                                up_block_types=("CrossAttnUpBlock2D",) * n)


def noise_scheduler():
    """Stable Diffusion's DDIM schedule (scaled-linear betas, epsilon prediction)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


def build_pipeline(spec: PipelineSpec, images: torch.Tensor, directory: Path) -> dict[str, float]:
    """Train the VAE on ``images`` and write the initial pipeline folder; returns the VAE's numbers."""
    import os
    import shutil

    from diffusers import StableDiffusionPipeline

    vae, stats = train_vae(spec, images)
    if spec.tokenizer not in ("word", "char"):
        raise ValueError(f"tokenizer must be 'word' or 'char', got {spec.tokenizer!r}")
    tokenizer = word_tokenizer() if spec.tokenizer == "word" else word_tokenizer(MAX_CHARS, words=False)
    pipe = StableDiffusionPipeline(unet=build_unet(spec), vae=vae, text_encoder=text_encoder(spec, tokenizer),
                                   tokenizer=tokenizer, scheduler=noise_scheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    directory = Path(directory)
    tmp = directory.parent / f".{directory.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    (tmp / "vae_stats.json").write_text(json.dumps(stats, indent=2))
    os.replace(tmp, directory)
    return stats
