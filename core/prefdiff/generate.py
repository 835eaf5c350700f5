"""`prefdiff sample` and `prefdiff edit`: run a saved model on a dataset's conditions."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from prefdiff.errors import UserError


def _load(args: argparse.Namespace):
    from prefdiff.models import load_lora, load_model
    from prefdiff.options import parse_options
    from prefdiff.plugins import get_manager
    from prefdiff.schedulers import load_scheduler

    manager = get_manager()
    conditioner = manager.conditioner(args.conditioner) if args.conditioner else None
    denoiser = load_model(args.model, conditioner)
    if args.lora:
        load_lora(denoiser, args.lora)
    denoiser.eval()
    dataset = manager.dataset(args.dataset, split=args.split, **parse_options(args.dataset_option, "--dataset-option"))
    if len(dataset) == 0:
        raise UserError(f"dataset '{args.dataset}' split '{args.split}' is empty")
    return denoiser, load_scheduler(args.model), dataset


def _write(samples: torch.Tensor, out: Path, name: str) -> None:
    from safetensors.torch import save_file

    from prefdiff.viz import save_grid

    out.mkdir(parents=True, exist_ok=True)
    save_file({"samples": samples.contiguous()}, str(out / f"{name}.safetensors"))
    if samples.ndim == 4 and samples.shape[1] in (1, 3):
        save_grid(samples, out / f"{name}.png")
    print(f"{name}: {out / (name + '.safetensors')}")


@torch.no_grad()
def sample_to_folder(args: argparse.Namespace) -> int:
    """Sample ``--n`` items, one per dataset condition, with noise fixed by ``--seed``."""
    from prefdiff.data import collate, infer_sample_shape
    from prefdiff.sampling import sample

    denoiser, scheduler, dataset = _load(args)
    n = min(args.n, len(dataset))
    batch = collate([dataset[i] for i in range(n)])
    noise = torch.randn((n, *infer_sample_shape(denoiser)), generator=torch.Generator().manual_seed(args.seed))
    out = sample(denoiser, scheduler, noise, batch["cond"], num_steps=args.steps, eta=0.0)
    _write(out.samples, Path(args.out), "samples")
    return 0


@torch.no_grad()
def edit(args: argparse.Namespace) -> int:
    """SDEdit a dataset item under a new condition, or inpaint outside a keep mask."""
    from safetensors.torch import load_file

    from prefdiff.data import collate
    from prefdiff.sampling import inpaint, sdedit

    if not 0 < args.strength <= 1:
        raise UserError(f"--strength must be in (0, 1], got {args.strength}")
    denoiser, scheduler, dataset = _load(args)
    for index in (args.index, args.cond_from):
        if index is not None and not 0 <= index < len(dataset):
            raise UserError(f"--index/--cond-from {index} is outside the dataset (0..{len(dataset) - 1})")
    item = collate([dataset[args.index]])
    if "x0" not in item:
        raise UserError(f"dataset '{args.dataset}' has no samples (x0) to edit")
    cond = collate([dataset[args.cond_from]])["cond"] if args.cond_from is not None else item["cond"]
    generator = torch.Generator().manual_seed(args.seed)
    if args.mask:
        try:
            keep = load_file(args.mask)["keep"].to(item["x0"])
        except Exception as exc:
            raise UserError(f"--mask {args.mask} must be a safetensors file with a 'keep' tensor: {exc}") from None
        edited = inpaint(denoiser, scheduler, item["x0"], keep, cond, num_steps=args.steps, generator=generator)
    else:
        edited = sdedit(denoiser, scheduler, item["x0"], cond, args.strength, num_steps=args.steps,
                        generator=generator)
    _write(torch.cat([item["x0"], edited]), Path(args.out), "edit")
    return 0
