"""Same batches, same start, same updates? prefdiff's DDPO training against TRL's, each on the other's batches.

    .venv/bin/python benchmarks/peers/same_step.py [--sampler {trl,prefdiff}] [--epochs N] [--work DIR] [--out FILE]

Runs in prefdiff's venv, after run.py has made the shared inputs (work/settings.json); TRL's half is
same_step_trl.py, in the peers' venv. One side samples and trains N epochs, saving each epoch's batch
(prompts, latents, timesteps, log-probs, rewards), its starting LoRA and its LoRA after each epoch's one
optimizer step. The other side starts from that LoRA and trains N steps on those batches, one a step, with
its sampling and scoring replaced by them and everything downstream its own: log-probs of the stored steps,
per-prompt advantages, PPO-clip loss, gradient clipping, AdamW. After every step the two LoRAs are compared.

- ``--sampler trl`` (same_step.json): TRL's DDPOTrainer samples; prefdiff's module, built from the config
  run.py gives `prefdiff fit`, replays with `prefdiff fit`'s trainer.
- ``--sampler prefdiff`` (same_step_prefdiff.json): prefdiff's module samples and trains with its own
  prompts data module, as `prefdiff fit` runs it; TRL's ``DDPOTrainer.step`` replays.

Every replayed batch was sampled by a model the replaying side's equals (while the updates agree). So when
both directions agree, each library trains on the other's batches as the other does, and whatever separates
their curves in results.json lies upstream: in the distribution of the batches or in the random draws
(prompts, noise, LoRA start).
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


def replay(settings, saved: dict, scratch: Path) -> list[dict]:
    """prefdiff's LoRA after each `prefdiff fit` training step on TRL's batches, from TRL's starting LoRA."""
    import torch
    import yaml
    from prefdiff.sampling.common import SampleOutput
    from prefdiff.sampling.ddim import ddim_timesteps
    from prefdiff.trainers import PolicyGradientModule
    from run import prefdiff_config

    config = yaml.safe_load(prefdiff_config(settings, "ddpo", scratch, snapshot_every=1).read_text())
    module = PolicyGradientModule(**config["model"]["init_args"])
    lora = {n: p for n, p in module.denoiser.net.named_parameters() if "lora_" in n}
    if sorted(lora) != sorted(saved["lora_start"]):
        raise SystemExit(f"error: the sides adapt different layers: {sorted(lora)[:2]} vs {sorted(saved['lora_start'])[:2]}")
    with torch.no_grad():
        for name, p in lora.items():
            p.copy_(saved["lora_start"][name])
    k, batches = settings.ddpo["samples_per_prompt"], saved["batches"]
    conditions = []
    for batch in batches:
        groups = batch["prompts"][::k]
        if [p for p in groups for _ in range(k)] != batch["prompts"]:
            raise SystemExit(f"error: a TRL batch is not whole groups of {k} samples a prompt: {batch['prompts']}")
        conditions.append({"cond": groups})

    def trl_batch(cond, n, generator, group=1, **kwargs):
        batch = batches[module.global_step]
        assert list(cond) == batch["prompts"] and n == len(cond), (cond, n)
        # What prefdiff's sampler does first: set the scheduler to the sampling steps.
        assert torch.equal(ddim_timesteps(module.noise_scheduler, settings.num_steps), batch["timesteps"])
        latents = batch["latents"]
        out = SampleOutput(samples=latents[:, -1], timesteps=batch["timesteps"], latents=latents,
                           log_probs=batch["log_probs"], stochastic=torch.ones(len(batch["timesteps"]), dtype=torch.bool))
        return out, batch["rewards"]

    module.sample_and_score = trl_batch
    after = after_each_step(lora)
    trainer(len(batches), scratch, after).fit(module, train_dataloaders=torch.utils.data.DataLoader(conditions, batch_size=None))
    return after.states


def sample_and_train(settings, epochs: int, scratch: Path) -> dict:
    """prefdiff's DDPO as `prefdiff fit` runs it (its own prompts, sampler and rewards) for ``epochs`` steps:
    its starting LoRA, each step's batch, and its LoRA after each step, in same_step_trl.py's layout."""
    import pytorch_lightning as pl
    import torch
    import yaml
    from prefdiff.datamodule import PrefDataModule
    from prefdiff.trainers import PolicyGradientModule
    from run import prefdiff_config

    config = yaml.safe_load(prefdiff_config(settings, "ddpo", scratch, snapshot_every=1).read_text())
    pl.seed_everything(config["seed_everything"])
    module = PolicyGradientModule(**config["model"]["init_args"])
    lora = {n: p for n, p in module.denoiser.net.named_parameters() if "lora_" in n}
    saved = {"lora_start": {n: p.detach().clone() for n, p in lora.items()}, "batches": []}
    own = module.sample_and_score

    def keep(cond, n, generator, group=1, **kwargs):
        out, rewards = own(cond, n, generator, group, **kwargs)
        saved["batches"].append({"prompts": list(cond), "rewards": rewards.detach().float().clone(),
                                 "timesteps": out.timesteps.detach().cpu().clone(),
                                 "log_probs": out.log_probs.detach().clone(), "latents": out.latents.detach().clone()})
        return out, rewards

    module.sample_and_score = keep
    after = after_each_step(lora)
    trainer(epochs, scratch, after).fit(module, datamodule=PrefDataModule(**config["data"]))
    saved["lora_after"] = after.states
    return saved


def trainer(steps: int, scratch: Path, callback):
    """A Lightning Trainer for ``steps`` steps on the CPU, without logger, checkpoints or progress bar."""
    import pytorch_lightning as pl

    return pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(scratch),
                      callbacks=[callback])


def after_each_step(lora):
    import pytorch_lightning as pl

    class AfterEachStep(pl.Callback):
        """Copies the LoRA after every training step."""

        def __init__(self):
            self.states = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.states.append({n: p.detach().clone() for n, p in lora.items()})

    return AfterEachStep()


def compare(ours: dict, theirs: dict, start: dict) -> dict:
    """How far prefdiff's LoRA is from TRL's, against how far TRL's has moved from the start."""
    import torch

    names = sorted(ours)
    flat = lambda state: torch.cat([state[n].flatten() for n in names])  # noqa: E731
    mine, their, begin = flat(ours), flat(theirs), flat(start)
    moved, diff = their - begin, mine - their
    return {"trl_moved": moved.norm().item(), "prefdiff_moved": (mine - begin).norm().item(),
            "difference": diff.norm().item(), "relative_difference": (diff.norm() / moved.norm()).item(),
            "max_abs_difference": diff.abs().max().item(),
            "cosine": torch.nn.functional.cosine_similarity(mine - begin, moved, dim=0).item()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20, help="epochs TRL trains and prefdiff replays")
    parser.add_argument("--work", default=str(HERE / "work"), help="run.py's scratch folder (its settings.json)")
    parser.add_argument("--sampler", choices=("trl", "prefdiff"), default="trl",
                        help="whose sampled batches both sides train on: TRL's, replayed by prefdiff (same_step.json), "
                             "or prefdiff's own, replayed by TRL (same_step_prefdiff.json)")
    parser.add_argument("--out", help="the result file (default: by --sampler, above)")
    parser.add_argument("--tolerance", type=float, default=1e-3,
                        help="largest difference of the LoRAs, relative to how far TRL's moved, that counts as the same")
    args = parser.parse_args(argv)
    args.out = args.out or str(HERE / ("same_step.json" if args.sampler == "trl" else "same_step_prefdiff.json"))
    import torch
    from harness import Settings
    from run import PEERS_PYTHON, describe_environment

    settings_path = Path(args.work, "settings.json")
    if not settings_path.is_file():
        raise SystemExit(f"error: no {settings_path}; run benchmarks/peers/run.py (or --quick) first")
    settings = Settings.load(settings_path)
    torch.set_num_threads(settings.threads)
    environment = describe_environment({}, None)  # before the run, as the code and tree it starts from
    trl_half = [str(PEERS_PYTHON), str(HERE / "same_step_trl.py"), str(settings_path), str(args.epochs)]
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch, "trl_steps.pt")
        if args.sampler == "trl":
            subprocess.run([*trl_half, str(path)], check=True, cwd=HERE)
            saved = torch.load(path)
            ours, theirs = replay(settings, saved, Path(scratch)), saved["lora_after"]
        else:
            saved = sample_and_train(settings, args.epochs, Path(scratch))
            torch.save(saved, Path(scratch, "prefdiff_steps.pt"))
            subprocess.run([*trl_half, str(path), str(Path(scratch, "prefdiff_steps.pt"))], check=True, cwd=HERE)
            ours, theirs = saved["lora_after"], torch.load(path)["lora_after"]
    steps = [{"epoch": i + 1, **compare(mine, their, saved["lora_start"]),
              "prompts": sorted(set(batch["prompts"])), "mean_reward": batch["rewards"].mean().item()}
             for i, (mine, their, batch) in enumerate(zip(ours, theirs, saved["batches"]))]
    worst = max(step["relative_difference"] for step in steps)
    result = {"sampler": args.sampler, "epochs": args.epochs, "settings": {k: getattr(settings, k) for k in ("seed", "lora_rank", "num_steps")},
              "ddpo": settings.ddpo, "worst_relative_difference": worst, "tolerance": args.tolerance,
              "same": worst <= args.tolerance, "steps": steps, "run": environment}
    Path(args.out).write_text(json.dumps(result, indent=2))
    for step in steps:
        print(f"epoch {step['epoch']:2d}: TRL's LoRA moved {step['trl_moved']:.4f}, prefdiff's {step['prefdiff_moved']:.4f}, "
              f"apart {step['difference']:.2e} ({step['relative_difference']:.1e} of TRL's move), cosine {step['cosine']:.6f}")
    print(f"same: {result['same']} (worst {worst:.1e}, tolerance {args.tolerance:.0e}); written to {args.out}")
    return 0 if result["same"] else 1


if __name__ == "__main__":
    sys.exit(main())
