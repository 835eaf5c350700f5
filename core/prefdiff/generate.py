"""`prefdiff sample` and `prefdiff edit`: run a saved model or a pipeline on prompts or a dataset's conditions."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from prefdiff.errors import UserError
from prefdiff.models.lora import FROZEN_DTYPES


def _check_counts(args: argparse.Namespace) -> None:
    out = Path(args.out)
    blocked = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise UserError(f"--out {out}: {blocked} is a file, not a folder; pass a new folder")
    if args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    if getattr(args, "n", 1) < 1:
        raise UserError(f"--n must be >= 1, got {args.n}")


#: --dtype -> the weights' dtype: float32, or the half precisions frozen weights may take in training.
DTYPES = {"float32": torch.float32, **FROZEN_DTYPES}


def _placement(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """The device and weight dtype ``--device`` and ``--dtype`` ask for, or one line saying why not."""
    name = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {args.device} is not a device; pass auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: this machine has no CUDA device torch can use; pass --device cpu")
    dtype = DTYPES[args.dtype]
    if dtype == torch.float16 and device.type == "cpu":
        raise UserError("--dtype float16 needs a GPU: on a CPU, torch's group norm cannot mix float16 weights with "
                        "float32 activations; pass --dtype bfloat16")
    return device, dtype


def _autocast(device: torch.device, dtype: torch.dtype):
    """The network in ``dtype`` under autocast, the sampler's arithmetic in float32 (as `--trainer.precision
    bf16-mixed` trains); nothing for float32."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def _load_model(args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    from prefdiff.models import load_lora, load_model, saved_conditioner
    from prefdiff.options import parse_options
    from prefdiff.plugins import get_manager
    from prefdiff.schedulers import load_scheduler

    # The conditioner the model was saved with, unless --conditioner names another; options given here win.
    name, options = args.conditioner, parse_options(args.conditioner_option, "--conditioner-option")
    saved = saved_conditioner(args.model)
    if saved is not None and name in (None, saved[0]):
        name, options = saved[0], {**saved[1], **options}
    if options and name is None:
        raise UserError("--conditioner-option needs --conditioner (the model records no conditioner)")
    args.conditioner = name
    conditioner = get_manager().conditioner(name, **options) if name else None
    # A pipeline is read in the dtype asked for; a prefdiff model folder is cast after loading.
    denoiser = load_model(args.model, conditioner, dtype=None if dtype == torch.float32 else dtype,
                          variant=args.variant)
    denoiser.set_negative_prompt(args.negative_prompt)
    denoiser.set_distilled_guidance(args.distilled_guidance, flag="--distilled-guidance")
    if args.lora:
        load_lora(denoiser, args.lora)
    return denoiser.to(device=device, dtype=dtype).eval(), load_scheduler(args.model)


def _dataset(args: argparse.Namespace):
    from prefdiff.options import parse_options
    from prefdiff.plugins import get_manager

    if not args.dataset:
        raise UserError("give --dataset (a registered dataset giving the conditions) or --prompt")
    options = parse_options(args.dataset_option, "--dataset-option")
    dataset = get_manager().dataset(args.dataset, split=args.split, **options)
    if len(dataset) == 0:
        raise UserError(f"dataset '{args.dataset}' split '{args.split}' is empty{_other_splits(args, options)}")
    return dataset


def _other_splits(args: argparse.Namespace, options: dict[str, Any]) -> str:
    """"; its split 'train' holds 12 items: pass --split train", for the first other split that has items
    (a prompt file of a few lines may hash none of them into the 5% test split)."""
    from prefdiff.plugins import get_manager

    for split in ("train", "val", "test"):
        if split == args.split:
            continue
        try:
            n = len(get_manager().dataset(args.dataset, split=split, **options))
        except Exception:  # noqa: BLE001 - only a hint: the empty split's error stands without it
            continue
        if n:
            return f"; its split '{split}' holds {n} items: pass --split {split}"
    return ""


def _fits(denoiser, cond: Any, args: argparse.Namespace) -> None:
    """One line naming the dataset, the conditioner and the model when the conditions do not fit the model."""
    from prefdiff.checks import check_conditions_fit

    check_conditions_fit(denoiser, cond, data=f"dataset '{args.dataset}'" if args.dataset else "the prompts",
                         model=f"in {args.model}", conditioner=args.conditioner,
                         fix="pass the dataset and --conditioner the model was trained with")


def _figure(dataset: Any, rows: dict[str, torch.Tensor], cond: Any, title: str | None = None,
            input_cond: Any = None):
    """What draws ``rows`` into a PNG: the dataset's own ``draw`` (its conditions beside the samples:
    masks, layouts, scenes), else labelled image rows (one per prompt for prompted samples) or a grid;
    ``None`` for samples that are not images. ``input_cond``: an edit's input item's own condition,
    when the edit changed it (``--cond-from``), for a ``draw`` that takes it."""
    import inspect

    from prefdiff.viz import save_grid, save_labelled_rows

    draw = getattr(dataset, "draw", None)
    if callable(draw):
        if input_cond is not None and "input_cond" in inspect.signature(draw).parameters:
            return lambda png: draw(rows, cond, png, input_cond=input_cond)
        return lambda png: draw(rows, cond, png)
    first = next(iter(rows.values()))
    if first.ndim != 4 or first.shape[1] not in (1, 3):
        return None
    if len(rows) > 1:
        return lambda png: save_labelled_rows(rows, png, title=title)
    if isinstance(cond, (list, tuple)) and cond and all(isinstance(c, str) for c in cond):
        return lambda png: save_labelled_rows(_by_prompt(first, cond), png, columns=len(cond),
                                              title="one row per prompt")
    return lambda png: save_grid(first, png)


def _by_prompt(samples: torch.Tensor, prompts: list[str], width: int = 48) -> dict[str, torch.Tensor]:
    """``samples`` grouped by their prompts, in first-seen order, each labelled by its prompt (cut to ``width``)."""
    rows: dict[str, torch.Tensor] = {}
    for prompt in dict.fromkeys(prompts):
        label = prompt if len(prompt) <= width else prompt[:width - 1] + "\u2026"
        while label in rows:  # two long prompts that begin alike
            label += "'"
        rows[label] = samples[[i for i, p in enumerate(prompts) if p == prompt]]
    return rows


def _write(samples: torch.Tensor, out: Path, name: str, figure=None) -> None:
    """``OUT/NAME.safetensors``, then ``OUT/NAME.png`` drawn by ``figure(png_path)`` when there is one."""
    from safetensors.torch import save

    from prefdiff.durable import atomic_write_bytes

    out.mkdir(parents=True, exist_ok=True)
    # Whole or not at all (prefdiff.durable): a full disk is one line, an earlier file stays as it was.
    atomic_write_bytes(out / f"{name}.safetensors", save({"samples": samples.contiguous()}))
    print(f"{name}: {out / (name + '.safetensors')}")
    png = out / f"{name}.png"
    png.unlink(missing_ok=True)  # an earlier run's figure must not pass for this one's
    if figure is not None:
        figure(png)
        print(f"figure: {png}")


@torch.no_grad()
def sample_to_folder(args: argparse.Namespace) -> int:
    """Sample ``--n`` items, one per prompt (cycled) or dataset condition, with noise fixed by ``--seed``."""
    from prefdiff.data import collate
    from prefdiff.sampling import sample

    from lightning_fabric.utilities.apply_func import move_data_to_device

    _check_counts(args)
    device, dtype = _placement(args)
    denoiser, scheduler = _load_model(args, device, dtype)
    dataset = None
    if args.prompt:
        cond, n = [args.prompt[i % len(args.prompt)] for i in range(args.n)], args.n
    else:
        dataset = _dataset(args)
        n = min(args.n, len(dataset))
        if n < args.n:
            print(f"split '{args.split}' of dataset '{args.dataset}' holds {n} conditions: sampling {n}, not {args.n}")
        cond = collate([dataset[i] for i in range(n)])["cond"]
    here = move_data_to_device(cond, device)
    _fits(denoiser, here, args)
    noise = torch.randn((n, *denoiser.sample_shape), generator=torch.Generator().manual_seed(args.seed))
    uncond = denoiser.null_condition(here) if args.guidance_scale != 1 else None
    with _autocast(device, dtype):
        out = sample(denoiser, scheduler, noise.to(device), here, num_steps=args.steps, eta=0.0,
                     guidance_scale=args.guidance_scale, uncond=uncond, **denoiser.pinned(here))
        samples = denoiser.decode(out.samples).float().cpu()
    _write(samples, Path(args.out), "samples", _figure(dataset, {"samples": samples}, cond))
    return 0


def _made(denoiser) -> torch.Tensor:
    """One decoded sample of zeros, on the CPU in float32: the shape of what ``denoiser`` makes."""
    param = next(denoiser.parameters())
    with _autocast(param.device, param.dtype):
        return denoiser.decode(torch.zeros(1, *denoiser.sample_shape, device=param.device)).float().cpu()


def _read_image(path: str, like: torch.Tensor) -> torch.Tensor:
    """An image file as one sample shaped like ``like`` (``[1, C, H, W]``, C 1 or 3) in [-1, 1], resized."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    if like.ndim != 4 or like.shape[1] not in (1, 3):
        raise UserError(f"--image edits images, and this model makes samples of shape {tuple(like.shape[1:])}; "
                        f"edit a dataset item with --index instead")
    try:
        mode = "L" if like.shape[1] == 1 else "RGB"
        image = Image.open(path).convert(mode).resize((like.shape[-1], like.shape[-2]), Image.BICUBIC)
    except (OSError, UnidentifiedImageError) as exc:
        raise UserError(f"--image {path} is not a readable image ({exc}); pass a PNG or JPEG") from None
    pixels = torch.from_numpy(np.asarray(image).copy()).float()
    pixels = pixels[None] if pixels.ndim == 2 else pixels.permute(2, 0, 1)
    return pixels[None] / 127.5 - 1


def _read_keep(path: str, like: torch.Tensor) -> torch.Tensor:
    """A keep mask (1 keeps the input) from a safetensors ``keep`` tensor or an image (white keeps)."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError
    from safetensors.torch import load_file

    try:
        if path.endswith(".safetensors"):
            keep = load_file(path)["keep"].to(like)
        else:
            mask = Image.open(path).convert("L").resize(like.shape[-2:][::-1], Image.NEAREST)
            return (torch.from_numpy(np.asarray(mask).copy()) > 127).to(like)[None, None]
    except Exception as exc:
        raise UserError(f"--mask {path} must be a safetensors file with a 'keep' tensor or an image "
                        f"(white keeps): {exc}") from None
    wanted = (1, 1, *like.shape[2:])
    try:
        fits = torch.broadcast_shapes(keep.shape, like.shape) == like.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise UserError(f"--mask {path}: its 'keep' tensor has shape {tuple(keep.shape)}, which does not fit the "
                        f"sample's {tuple(like.shape)}; save it as {wanted}")
    if not (torch.isfinite(keep).all() and keep.min() >= 0 and keep.max() <= 1):
        raise UserError(f"--mask {path}: 'keep' must hold values in [0, 1] (1 keeps the input), got values from "
                        f"{float(keep.min()):g} to {float(keep.max()):g}; divide by 255 or threshold it")
    return keep


@torch.no_grad()
def edit(args: argparse.Namespace) -> int:
    """SDEdit an image under a new condition, or inpaint outside a keep mask."""
    from prefdiff.data import collate
    from prefdiff.editing import edit_samples

    from lightning_fabric.utilities.apply_func import move_data_to_device

    _check_counts(args)
    if not 0 < args.strength <= 1:
        raise UserError(f"--strength must be in (0, 1], got {args.strength}")
    device, dtype = _placement(args)
    denoiser, scheduler = _load_model(args, device, dtype)
    dataset, input_cond = None, None
    if args.image:
        x0, cond = _read_image(args.image, _made(denoiser)), None
        if args.dataset and not args.prompt:  # a class or mask model: the condition is a dataset item's
            dataset = _dataset(args)
            index = args.cond_from if args.cond_from is not None else args.index
            if not 0 <= index < len(dataset):
                raise UserError(f"--cond-from {index} is outside the dataset (0..{len(dataset) - 1})")
            cond = collate([dataset[index]])["cond"]
    else:
        dataset = _dataset(args)
        for flag, index in (("--index", args.index), ("--cond-from", args.cond_from)):
            if index is not None and not 0 <= index < len(dataset):
                raise UserError(f"{flag} {index} is outside the dataset (0..{len(dataset) - 1})")
        item = collate([dataset[args.index]])
        if "x0" not in item:
            raise UserError(f"dataset '{args.dataset}' has no samples (x0) to edit")
        x0, cond = item["x0"], item["cond"]
        input_cond = cond  # the input item's own condition, drawn beside it when --cond-from changes it
        made = tuple(_made(denoiser).shape[1:])
        if tuple(x0.shape[1:]) != made:
            raise UserError(f"dataset '{args.dataset}' gives samples of shape {tuple(x0.shape[1:])}, but the model "
                            f"in {args.model} makes {made}; pass the --dataset-option values it was trained with")
        if args.cond_from is not None:
            cond = collate([dataset[args.cond_from]])["cond"]
    if args.prompt:
        cond = args.prompt[:1]
    if cond is None:
        raise UserError("--image needs the condition to edit the image towards: --prompt (text-to-image), or "
                        "--dataset with --cond-from N (a dataset item's condition: a class, a mask)")
    here = move_data_to_device(cond, device)
    _fits(denoiser, here, args)
    generator = torch.Generator().manual_seed(args.seed)
    keep = _read_keep(args.mask, x0) if args.mask else None
    with _autocast(device, dtype):
        edited = edit_samples(denoiser, scheduler, x0.to(device), here,
                              strength=1.0 if keep is not None else args.strength,
                              keep=None if keep is None else keep.to(device), num_steps=args.steps,
                              generator=generator, guidance_scale=args.guidance_scale).float().cpu()
    towards = f"edited towards '{cond[0]}'" if args.prompt else None
    figure = _figure(dataset, {"input": x0, "edited": edited}, cond, title=towards,
                     input_cond=input_cond if args.cond_from is not None else None)
    _write(torch.cat([x0, edited]), Path(args.out), "edit", figure)
    return 0
