"""Same batch, same start, same update? prefdiff's DDPO step against TRL's, on one batch TRL sampled.

    .venv/bin/python benchmarks/peers/same_step.py [--work DIR] [--out FILE]

Runs in prefdiff's venv, after run.py has made the shared inputs (work/settings.json). TRL's half
(same_step_trl.py, in the peers' venv) runs one epoch of its DDPOTrainer and saves its sampled batch
(prompts, latents, timesteps, log-probs, rewards) and its LoRA before and after the epoch's optimizer step.
This half builds prefdiff's DDPO module from the config run.py gives `prefdiff fit`, starts it from TRL's
LoRA, and runs one training step of `prefdiff fit`'s trainer with the sampler replaced by TRL's batch.
Everything downstream of sampling is then prefdiff's own: its log-probs of the stored steps, its per-prompt
advantages, its PPO-clip loss, gradient clipping and AdamW step. The LoRA after the step is compared with
TRL's. If they agree, the two libraries make the same DDPO update, and whatever separates their curves is
the random draws (prompts, noise, LoRA start), not the update rule.
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


def replay(settings, batch: dict, scratch: Path) -> dict:
    """prefdiff's LoRA after one `prefdiff fit` training step on TRL's ``batch``, from TRL's starting LoRA."""
    import pytorch_lightning as pl
    import torch
    import yaml
    from prefdiff.sampling.common import SampleOutput
    from prefdiff.sampling.ddim import ddim_timesteps
    from prefdiff.trainers import PolicyGradientModule
    from run import prefdiff_config

    config = yaml.safe_load(prefdiff_config(settings, "ddpo", scratch, snapshot_every=1).read_text())
    module = PolicyGradientModule(**config["model"]["init_args"])
    lora = {n: p for n, p in module.denoiser.net.named_parameters() if "lora_" in n}
    if sorted(lora) != sorted(batch["lora_before"]):
        raise SystemExit(f"error: the two sides adapt different layers: {sorted(lora)[:2]} vs {sorted(batch['lora_before'])[:2]}")
    with torch.no_grad():
        for name, p in lora.items():
            p.copy_(batch["lora_before"][name])
    prompts, k = batch["prompts"], settings.ddpo["samples_per_prompt"]
    groups = prompts[::k]
    if [p for p in groups for _ in range(k)] != prompts:
        raise SystemExit(f"error: TRL's batch is not whole groups of {k} samples a prompt: {prompts}")
    latents = batch["latents"]
    out = SampleOutput(samples=latents[:, -1], timesteps=batch["timesteps"], latents=latents,
                       log_probs=batch["log_probs"], stochastic=torch.ones(len(batch["timesteps"]), dtype=torch.bool))

    def trl_batch(cond, n, generator, group=1, **kwargs):
        assert list(cond) == prompts and n == len(prompts), (cond, n)
        # What prefdiff's sampler does first: set the scheduler to the sampling steps.
        assert torch.equal(ddim_timesteps(module.noise_scheduler, settings.num_steps), batch["timesteps"])
        return out, batch["rewards"]

    module.sample_and_score = trl_batch
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(scratch))
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([{"cond": groups}], batch_size=None))
    return {n: p.detach().clone() for n, p in lora.items()}


def compare(ours: dict, batch: dict) -> dict:
    """How far prefdiff's LoRA after the step is from TRL's, against the size of TRL's update."""
    import torch

    names = sorted(ours)
    before = torch.cat([batch["lora_before"][n].flatten() for n in names])
    theirs = torch.cat([batch["lora_after"][n].flatten() for n in names])
    mine = torch.cat([ours[n].flatten() for n in names])
    update, diff = (theirs - before), (mine - theirs)
    return {"tensors": len(names), "trl_update_norm": update.norm().item(),
            "prefdiff_update_norm": (mine - before).norm().item(),
            "difference_norm": diff.norm().item(), "relative_difference": (diff.norm() / update.norm()).item(),
            "max_abs_difference": diff.abs().max().item(),
            "update_cosine": torch.nn.functional.cosine_similarity(mine - before, update, dim=0).item()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default=str(HERE / "work"), help="run.py's scratch folder (its settings.json)")
    parser.add_argument("--out", default=str(HERE / "same_step.json"))
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest relative difference of the updates that counts as the same")
    args = parser.parse_args(argv)
    import torch
    from harness import Settings
    from run import PEERS_PYTHON, describe_environment

    settings_path = Path(args.work, "settings.json")
    if not settings_path.is_file():
        raise SystemExit(f"error: no {settings_path}; run benchmarks/peers/run.py (or --quick) first")
    settings = Settings.load(settings_path)
    torch.set_num_threads(settings.threads)
    with tempfile.TemporaryDirectory() as scratch:
        saved = Path(scratch, "trl_step.pt")
        subprocess.run([str(PEERS_PYTHON), str(HERE / "same_step_trl.py"), str(settings_path), str(saved)],
                       check=True, cwd=HERE)
        batch = torch.load(saved)
        result = compare(replay(settings, batch, Path(scratch)), batch)
    result.update(prompts=sorted(set(batch["prompts"])), rewards=batch["rewards"].tolist(),
                  same=result["relative_difference"] <= args.tolerance, tolerance=args.tolerance,
                  run=describe_environment({}, None))
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "run"}, indent=2))
    return 0 if result["same"] else 1


if __name__ == "__main__":
    sys.exit(main())
