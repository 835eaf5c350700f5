"""Same noise, same samples? prefdiff's DDPO sampler against TRL's, from one noise stream.

    .venv/bin/python benchmarks/peers/same_sample.py [--work DIR] [--out FILE]

Runs in prefdiff's venv, after run.py has made the shared inputs (work/settings.json); TRL's half is
same_sample_trl.py, in the peers' venv. prefdiff's DDPO module, built from the config run.py gives
`prefdiff fit`, gets a LoRA with every tensor drawn at random (so the adapter changes the samples), and
samples a batch as its training step does: two training prompts, four samples each, the settings' steps,
eta and guidance, every draw from one seeded generator. It decodes and scores the samples with the DDPO
reward. TRL's ``DefaultDDPOStableDiffusionPipeline`` gets the same LoRA and samples the same prompts with a
generator seeded alike; its DDIM step draws its noise from torch's global RNG, so the harness hands that
step the pipeline's generator instead. Both samplers then draw the start and each step's noise from one
stream in the same order, and their trajectories, step log-probs, decoded images and rewards are compared.
same_step.py shows that the two update alike on either side's batches; this shows that they sample alike,
so that the batches each side draws differ only by which noise and prompts it draws.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

NOISE_SEED = 4321


def prefdiff_batch(settings) -> dict:
    """A DDPO training batch sampled by prefdiff with a random LoRA: prompts, LoRA, latents, log-probs, rewards."""
    import torch
    import yaml
    from prefdiff.trainers import PolicyGradientModule
    from run import prefdiff_config

    with tempfile.TemporaryDirectory() as scratch:
        config = yaml.safe_load(prefdiff_config(settings, "ddpo", Path(scratch), snapshot_every=1).read_text())
    module = PolicyGradientModule(**config["model"]["init_args"])
    draw = torch.Generator().manual_seed(0)
    lora = {n: p for n, p in module.denoiser.net.named_parameters() if "lora_" in n}
    with torch.no_grad():
        for p in lora.values():
            p.copy_(torch.randn(p.shape, generator=draw) * 0.1)
    k = settings.ddpo["samples_per_prompt"]
    prompts = Path(settings.prompts, "train.txt").read_text().splitlines()[:settings.ddpo["prompts_per_batch"]]
    prompts = [p for p in prompts for _ in range(k)]
    with torch.no_grad():
        out = module.run_sampler(prompts, len(prompts), torch.Generator().manual_seed(NOISE_SEED),
                                 return_trajectory=True)
        images = module.denoiser.decode(out.samples)
        rewards = module.score(images, prompts)[0]
    return {"prompts": prompts, "lora": {n: p.detach().clone() for n, p in lora.items()}, "latents": out.latents,
            "log_probs": out.log_probs, "images": images, "rewards": rewards.float(), "noise_seed": NOISE_SEED}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default=str(HERE / "work"), help="run.py's scratch folder (its settings.json)")
    parser.add_argument("--out", default=str(HERE / "same_sample.json"))
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest absolute difference of a latent, log-prob or pixel (in [-1, 1]) that counts as the same")
    args = parser.parse_args(argv)
    import torch
    from harness import Settings
    from run import PEERS_PYTHON, describe_environment

    settings_path = Path(args.work, "settings.json")
    if not settings_path.is_file():
        raise SystemExit(f"error: no {settings_path}; run benchmarks/peers/run.py (or --quick) first")
    settings = Settings.load(settings_path)
    torch.set_num_threads(settings.threads)
    environment = describe_environment({}, None)
    ours = prefdiff_batch(settings)
    with tempfile.TemporaryDirectory() as scratch:
        given, answer = Path(scratch, "prefdiff.pt"), Path(scratch, "trl.pt")
        torch.save(ours, given)
        subprocess.run([str(PEERS_PYTHON), str(HERE / "same_sample_trl.py"), str(settings_path), str(given),
                        str(answer)], check=True, cwd=HERE)
        theirs = torch.load(answer)
    latents = [(theirs["latents"][:, j] - ours["latents"][:, j]).abs().max().item()
               for j in range(ours["latents"].shape[1])]
    log_probs = (theirs["log_probs"] - ours["log_probs"]).abs().max().item()
    # TRL's pipeline clamps its images to the pixel range; prefdiff's decode leaves that to the reward.
    pixels = (theirs["images"] - ours["images"].clamp(-1, 1)).abs().max().item()
    # Not gated: a pixel a rounding step apart on the uint8 grid changes a JPEG's size by a byte or so.
    rewards = (theirs["rewards"] - ours["rewards"]).abs().max().item()
    worst = max(*latents, log_probs, pixels)
    result = {"prompts": sorted(set(ours["prompts"])), "samples": len(ours["prompts"]),
              "settings": {k: getattr(settings, k) for k in ("num_steps", "eta", "guidance_scale", "lora_rank")},
              "max_abs_difference": {"latents_per_step": latents, "log_probs": log_probs, "pixels": pixels,
                                     "rewards_kb": rewards},
              "latent_std": ours["latents"][:, -1].std().item(), "rewards": ours["rewards"].tolist(),
              "tolerance": args.tolerance, "same": worst <= args.tolerance, "run": environment}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"largest difference: latents {max(latents):.1e} (over {len(latents)} steps), log-probs {log_probs:.1e}, "
          f"pixels {pixels:.1e}, rewards {rewards * 1000:.0f} bytes; same: {result['same']} (tolerance {args.tolerance:.0e}); written to {args.out}")
    return 0 if result["same"] else 1


if __name__ == "__main__":
    sys.exit(main())
