"""How much signal is in one DDPO step here? The policy gradient's signal-to-noise ratio at the start.

    .venv/bin/python benchmarks/peers/gradient_snr.py [--batches 24] [--seed N] [--work DIR] [--out FILE]

Runs in prefdiff's venv, after run.py has made the shared inputs (work/settings.json). prefdiff's DDPO
module and prompts data module, built from the config run.py gives `prefdiff fit`, train ``--batches``
steps under Lightning, each step's gradient taken away before the optimizer steps, so the LoRA never leaves
its start (checked) and every step draws a fresh
batch (its prompts from the data module, its noise from the step's generator) from the same policy. Each
step's gradient of the DDPO loss (before clipping) is kept; the batches are independent draws of the
one-step gradient estimate g_i, whose mean is the true gradient g.

With K batches, mean m and per-batch noise s^2 = sum_i |g_i - m|^2 / (K - 1), the squared norm of the true
gradient is estimated without bias by |m|^2 - s^2 / K, and the signal-to-noise ratio of one step's
estimate (a batch of the settings' prompts x samples) is |g|^2 / s^2. A batch n times as large has n times
the ratio, so ``samples_for_snr_1`` = batch / ratio is the batch at which one step's estimate holds as much
signal as noise. The 95% interval is the jackknife's (leave one batch out; the estimate, unlike a
bootstrap's resamples, never sees a batch twice, which would count as signal). Adam normalises each
coordinate, so the ratio does not give the update's direction exactly; it says how far a step's direction
is from chance.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def batch_gradients(settings, batches: int, scratch: Path):
    """``[batches, D]``: the DDPO loss's gradient over the LoRA's tensors, one row a training batch."""
    import pytorch_lightning as pl
    import torch
    import yaml
    from prefdiff.datamodule import PrefDataModule
    from prefdiff.trainers import PolicyGradientModule
    from run import prefdiff_config
    from same_step import trainer

    config = yaml.safe_load(prefdiff_config(settings, "ddpo", scratch, snapshot_every=1).read_text())
    pl.seed_everything(config["seed_everything"])
    module = PolicyGradientModule(**config["model"]["init_args"])
    lora = {n: p for n, p in module.denoiser.net.named_parameters() if "lora_" in n}
    start = {n: p.detach().clone() for n, p in lora.items()}
    rows = []

    def record_and_drop(optimizer):
        rows.append(torch.cat([torch.zeros(p.numel()) if p.grad is None else p.grad.detach().reshape(-1).clone()
                               for p in lora.values()]))
        optimizer.zero_grad(set_to_none=True)
        optimizer.step()  # nothing to update; Lightning counts the step, so the next batch is the next step's

    module.clip_and_step = record_and_drop
    trainer(batches, scratch, pl.Callback()).fit(module, datamodule=PrefDataModule(**config["data"]))
    moved = max((p.detach() - start[n]).abs().max().item() for n, p in lora.items())
    if moved != 0.0:
        raise SystemExit(f"error: the LoRA moved by {moved}; the batches are not from one policy")
    return torch.stack(rows).double()


def signal_to_noise(grads) -> dict:
    """|g|^2, the per-batch noise s^2 and their ratio from the rows of ``grads`` (see the module docstring)."""
    k = grads.shape[0]
    mean = grads.mean(0)
    noise = ((grads - mean) ** 2).sum() / (k - 1)
    signal = mean.pow(2).sum() - noise / k
    return {"signal": signal.item(), "noise": noise.item(), "snr": (signal / noise).item()}


def pairwise_cosine(grads) -> float:
    """Mean cosine between the gradients of two different batches."""
    unit = grads / grads.norm(dim=1, keepdim=True)
    cos = unit @ unit.T
    k = grads.shape[0]
    return ((cos.sum() - cos.diagonal().sum()) / (k * (k - 1))).item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0, help="the settings' seed (LoRA start, data order, noise)")
    parser.add_argument("--work", default=str(HERE / "work"), help="run.py's scratch folder (its settings.json)")
    parser.add_argument("--out", default=str(HERE / "gradient_snr.json"))
    args = parser.parse_args(argv)
    if args.batches < 3:
        parser.error("--batches must be at least 3")
    import dataclasses

    import torch
    from harness import Settings
    from run import describe_environment

    settings_path = Path(args.work, "settings.json")
    if not settings_path.is_file():
        raise SystemExit(f"error: no {settings_path}; run benchmarks/peers/run.py (or --quick) first")
    settings = dataclasses.replace(Settings.load(settings_path), seed=args.seed)
    torch.set_num_threads(settings.threads)
    with tempfile.TemporaryDirectory() as scratch:
        grads = batch_gradients(settings, args.batches, Path(scratch))
    batch = settings.ddpo["prompts_per_batch"] * settings.ddpo["samples_per_prompt"]
    estimate = signal_to_noise(grads)
    k = len(grads)
    left_out = torch.tensor([signal_to_noise(torch.cat([grads[:i], grads[i + 1:]]))["snr"] for i in range(k)])
    half_width = 1.96 * ((k - 1) / k * (left_out - left_out.mean()).pow(2).sum()).sqrt().item()
    low, high = estimate["snr"] - half_width, estimate["snr"] + half_width
    result = {
        "batches": args.batches, "batch_samples": batch, "seed": settings.seed,
        "settings": {k: getattr(settings, k) for k in ("num_steps", "eta", "guidance_scale", "lora_rank")},
        "ddpo": settings.ddpo, **estimate, "snr_interval95": [low, high],
        "samples_for_snr_1": batch / estimate["snr"] if estimate["snr"] > 0 else None,
        "samples_for_snr_1_at_least": batch / high if high > 0 else None,
        "mean_pairwise_cosine": pairwise_cosine(grads),
        "gradient_norm_median": grads.norm(dim=1).median().item(),
        "environment": describe_environment({}, None),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.batches} batches of {batch}: |g|^2 {estimate['signal']:.3g}, noise {estimate['noise']:.3g}, "
          f"SNR of one step {estimate['snr']:.3g} [{low:.3g}, {high:.3g}], mean cosine between batches "
          f"{result['mean_pairwise_cosine']:.3g}; samples a step for SNR 1: {result['samples_for_snr_1']} "
          f"(at least {result['samples_for_snr_1_at_least']})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
