"""The inputs every side shares: a base pipeline that has learned its data, prompts, and Pick-a-Pic pairs.

Runs in prefdiff's venv. A Stable Diffusion pipeline with random weights (``prefdiff.testing.tiny_pipeline``)
samples noise of nearly equal JPEG size, so no method moves its reward (shared/FACTS.md). So the base is
the tiny pipeline at 64x64 whose VAE and UNet are first trained, briefly, on synthetic images: a smooth
colour gradient plus blocky noise of a random amplitude. Its samples then differ in texture, which the
JPEG-size reward sees, and which alignment can move. Its VAE is trained until its posterior is tight, as
Stable Diffusion's is, so that a side that encodes with a posterior sample and one that encodes with the
mode train on the same latents.

The pairs are the same kind of image in twos, in the Pick-a-Pic v2 parquet layout (caption, jpg_0, jpg_1,
label_0): the image with the smaller JPEG wins, so Diffusion-DPO learns what DDPO's reward asks for.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
THINGS = ["circle", "square", "cat", "house", "tree", "boat", "cloud", "flower", "car", "lamp"]
PLACES = ["on a table", "in a field", "at night", "under the sea", "in a city", "on the moon"]


def prompt_lists(seed: int = 0, train: int = 32, held_out: int = 8) -> tuple[list[str], list[str]]:
    """Distinct prompts, split into training and held-out ones."""
    rng = np.random.default_rng(seed)
    every = [f"a {c} {t} {p}" for c in COLOURS for t in THINGS for p in PLACES]
    chosen = [every[i] for i in rng.permutation(len(every))[:train + held_out]]
    return chosen[:train], chosen[train:]


def synthetic_image(rng: np.random.Generator, amplitude: float, size: int = 64) -> np.ndarray:
    """A colour gradient at a random angle plus 2x2-block noise of ``amplitude``; [3, size, size] in [-1, 1]."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * xx + np.sin(angle) * yy
    c0, c1 = rng.uniform(-0.7, 0.7, 3), rng.uniform(-0.7, 0.7, 3)
    image = c0[:, None, None] + (c1 - c0)[:, None, None] * ramp[None]
    noise = rng.uniform(-1, 1, (3, size // 2, size // 2)).repeat(2, axis=1).repeat(2, axis=2)
    return np.clip(image + amplitude * noise, -1, 1).astype(np.float32)


def _batch(rng: np.random.Generator, n: int, size: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([synthetic_image(rng, rng.uniform(0.0, 0.6), size) for _ in range(n)]))


# The posterior noise a base may keep, as a fraction of its latents' spread. The Diffusion-DPO example encodes
# with ``latent_dist.sample()``, prefdiff and the evaluator with the mode; on Stable Diffusion's VAE the two
# agree to a fraction of a percent, and the comparison is only fair on a base where they nearly do too.
MAX_POSTERIOR_STD = 0.05


def vae_loss(reconstruction: torch.Tensor, x: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
    """Latent diffusion's autoencoder objective without its perceptual and adversarial terms: the squared
    error summed over each image's pixels plus 1e-6 times the KL summed over its latents (Rombach et al.
    2022, the ``kl_weight`` of their KL-f8 configs). Per pixel the KL weighs 1e-6 / (3 * 64 * 64), so the
    posterior narrows until it is noise-free next to its means, as Stable Diffusion's is."""
    return ((reconstruction - x) ** 2).flatten(1).sum(1).mean() + 1e-6 * kl.mean()


def train_base(folder: Path, *, image_size: int, seed: int, prompts: list[str], vae_steps: int,
               unet_steps: int, batch: int = 16, log=print) -> dict[str, float]:
    """Write the tiny pipeline, train its VAE (reconstruction) and then its UNet (denoising) on synthetic
    images, and save it again in place. Hand-written loops: this is data preparation, not a side.
    Returns what the stamp records: the recipe and the VAE posterior's std against its latents' spread."""
    from diffusers import StableDiffusionPipeline
    from prefdiff.testing import tiny_pipeline

    tiny_pipeline(folder, image_size=image_size, seed=seed)
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    posterior = train_vae(pipe.vae, rng, steps=vae_steps, batch=batch, image_size=image_size, log=log)
    train_unet(pipe, rng, prompts, steps=unet_steps, batch=batch, image_size=image_size, log=log)
    pipe.save_pretrained(folder, safe_serialization=True)
    return {"image_size": image_size, "seed": seed, "vae_steps": vae_steps, "unet_steps": unet_steps, **posterior}


def train_vae(vae, rng: np.random.Generator, *, steps: int, batch: int, image_size: int, log=print) -> dict[str, float]:
    """Fit the VAE to the synthetic images, check that its posterior is tight, and set its scaling factor
    so the latents have unit variance, as Stable Diffusion's does. Returns the posterior's std and spread."""
    optimizer = torch.optim.Adam(vae.parameters(), lr=2e-3)
    for step in range(steps):
        x = _batch(rng, batch, image_size)
        posterior = vae.encode(x).latent_dist
        loss = vae_loss(vae.decode(posterior.sample()).sample, x, posterior.kl())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"  vae step {step}: loss {loss.item():.1f}")
    vae.requires_grad_(False).eval()
    with torch.no_grad():
        posterior = vae.encode(_batch(rng, 64, image_size)).latent_dist
    spread, std = posterior.mode().std().item(), posterior.std.mean().item()
    log(f"  vae posterior: std {std:.4f} against a spread of {spread:.4f} in its means")
    if std > MAX_POSTERIOR_STD * spread:
        raise RuntimeError(f"the base's VAE posterior is loose (std {std:.3f}, {std / spread:.2f} of the latents' "
                           f"spread {spread:.3f}); train it longer (vae_steps, now {steps})")
    vae.register_to_config(scaling_factor=1.0 / spread)
    return {"vae_posterior_std": std, "vae_latent_spread": spread}


def train_unet(pipe, rng: np.random.Generator, prompts: list[str], *, steps: int, batch: int, image_size: int,
               log=print) -> None:
    """Fit the UNet to denoise the VAE's (mode) latents of the synthetic images under random prompts."""
    vae, unet, text_encoder, tokenizer, scheduler = pipe.vae, pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.scheduler
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    for step in range(steps):
        x = _batch(rng, batch, image_size)
        captions = [prompts[i] for i in rng.integers(0, len(prompts), batch)]
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.mode() * vae.config.scaling_factor
            ids = tokenizer(captions, padding="max_length", truncation=True,
                            max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
            states = text_encoder(ids)[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,))
        pred = unet(scheduler.add_noise(latents, noise, t), t, states).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 200 == 0 or step == steps - 1:
            log(f"  unet step {step}: denoising loss {loss.item():.4f}")


def add_text_model_prefix(folder: Path) -> None:
    """transformers 5 saves CLIPTextModel's weights without the ``text_model.`` prefix that transformers 4
    expects (and would silently re-initialise without); transformers 5 reads either. Store them prefixed,
    so both load the same text encoder; run.py checks the embeddings agree."""
    from safetensors.torch import load_file, save_file

    path = folder / "text_encoder" / "model.safetensors"
    state = load_file(path)
    save_file({k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()}, path,
              metadata={"format": "pt"})


def add_slow_tokenizer_files(folder: Path) -> None:
    """transformers 5 saves a tokenizer as tokenizer.json alone; the peers' transformers 4 reads a
    CLIPTokenizer from vocab.json and merges.txt. Write those two from the same vocabulary (the
    character tokenizer has no merges) so both read one tokenizer; run.py checks the ids agree."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    vocab = dict(sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]))
    (folder / "tokenizer" / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")


def _jpeg(image: np.ndarray) -> bytes:
    from PIL import Image

    pixels = ((np.clip(image, -1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_pairs(folder: Path, *, train: int, validation: int, prompts: list[str], held_out: list[str],
                image_size: int, seed: int) -> Path:
    """Pick-a-Pic v2-layout shards: ``train-00000-of-00001.parquet`` and ``validation-00000-of-00001.parquet``.
    The smaller JPEG wins; no ties (the diffusers example would read a tie as a win for image 0)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed + 1)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count, captions in (("train", train, prompts), ("validation", validation, held_out)):
        rows = {"caption": [], "jpg_0": [], "jpg_1": [], "label_0": []}
        while len(rows["caption"]) < count:
            a, b = (_jpeg(synthetic_image(rng, rng.uniform(0.0, 0.6), image_size)) for _ in range(2))
            if len(a) == len(b):
                continue
            rows["caption"].append(captions[int(rng.integers(len(captions)))])
            rows["jpg_0"].append(a)
            rows["jpg_1"].append(b)
            rows["label_0"].append(1.0 if len(a) < len(b) else 0.0)
        pq.write_table(pa.table(rows), folder / f"{split}-00000-of-00001.parquet")
    return folder


def make_all(work: Path, *, image_size: int, seed: int, log=print) -> dict[str, str]:
    """Base pipeline, prompt folder and pair folder under ``work`` (reused when already there)."""
    train, held_out = prompt_lists(seed)
    prompts = work / "prompts"
    prompts.mkdir(parents=True, exist_ok=True)
    (prompts / "train.txt").write_text("\n".join(train) + "\n")
    (prompts / "val.txt").write_text("\n".join(held_out) + "\n")
    base = work / "base"
    stamp = base / "TRAINED.json"
    # 1200 VAE steps (600 until 2026-12-04): at 600 the posterior passed on the machine of the table of
    # 898a080 (0.027 of the spread) but not on a later one (0.052), where 1200 gave 0.027 (README.md, "Fairness").
    recipe = {"image_size": image_size, "seed": seed, "vae_steps": 1200, "unet_steps": 400}
    made = json.loads(stamp.read_text()) if stamp.is_file() else {}
    if {k: made.get(k) for k in recipe} != recipe:
        log(f"training the base pipeline in {base} (once; {'it was made by another recipe' if made else 'none yet'})")
        stamp.unlink(missing_ok=True)
        stamp.write_text(json.dumps(train_base(base, prompts=train, log=log, **recipe)))
    add_slow_tokenizer_files(base)  # both idempotent: one folder that transformers 4 and 5 read alike
    add_text_model_prefix(base)
    pairs = work / "pickapic"
    if not (pairs / "validation-00000-of-00001.parquet").is_file():
        write_pairs(pairs, train=256, validation=64, prompts=train, held_out=held_out, image_size=image_size,
                    seed=seed)
    return {"base": str(base), "prompts": str(prompts), "pairs": str(pairs)}
