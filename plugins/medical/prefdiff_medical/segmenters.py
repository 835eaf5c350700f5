"""The segmentation networks behind the rewards: build, train on a task, save, load.

Two MONAI architectures: a residual ``UNet`` (the training reward) and a
``BasicUNet`` (the held-out judge, trained with another seed). Checkpoints
are one safetensors file with the settings as metadata; nothing is pickled.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prefdiff.api import UserError

ARCHITECTURES = ("unet", "basicunet")
FORMAT = "prefdiff-medical-segmenter/1"
TRAIN_COMMAND = "prefdiff medical train-segmenter TASK_DIR OUT.safetensors"

log = logging.getLogger("prefdiff.medical")


def build_segmenter(arch: str, num_classes: int) -> nn.Module:
    """A 2-D MONAI segmenter with ``num_classes + 1`` output channels (background first)."""
    from monai.networks.nets import BasicUNet, UNet

    if arch == "unet":
        return UNet(spatial_dims=2, in_channels=1, out_channels=num_classes + 1, channels=(16, 32, 64),
                    strides=(2, 2), num_res_units=1)
    if arch == "basicunet":
        return BasicUNet(spatial_dims=2, in_channels=1, out_channels=num_classes + 1,
                         features=(16, 16, 32, 64, 64, 16))
    raise UserError(f"--arch must be one of {', '.join(ARCHITECTURES)}, got '{arch}'")


def one_hot_mask(masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class-index masks ``[B, 1, H, W]`` -> one-hot ``[B, K+1, H, W]`` (background channel first)."""
    index = masks.round().long().clamp(0, num_classes)[:, 0]
    return torch.nn.functional.one_hot(index, num_classes + 1).permute(0, 3, 1, 2).to(torch.float32)


def hard_dice(logits: torch.Tensor, masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-image mean Dice over the foreground classes of the argmax prediction (MONAI DiceMetric).

    Classes absent from both prediction and mask are left out of the mean; a
    class predicted but absent from the mask (or missed) counts as 0, so both
    hallucinated and missing structures lower the score. An image with no
    foreground in either scores 1.
    """
    from monai.metrics import DiceMetric

    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=False)
    pred = one_hot_mask(logits.argmax(1, keepdim=True).float(), num_classes)
    target = one_hot_mask(masks, num_classes).to(pred.device)
    dice = metric(pred, target).nan_to_num(0.0)
    metric.reset()
    seen = ((pred[:, 1:] + target[:, 1:]).flatten(2).sum(-1) > 0).float()
    return torch.where(seen.sum(1) > 0, (dice * seen).sum(1) / seen.sum(1).clamp(min=1), torch.ones_like(dice[:, 0]))


def soft_dice(logits: torch.Tensor, masks: torch.Tensor, num_classes: int, smooth: float = 1.0,
              sharpness: float = 3.0) -> torch.Tensor:
    """Per-image differentiable Dice of the softmax prediction: the smooth form of :func:`hard_dice`.

    Per class (2 sum p g + s) / (sum p + sum g + s) as in V-Net (Milletari et al.
    2016). Classes in the mask weigh 1; a class absent from the mask weighs by
    how much of it is predicted, m / (m + 1) with m = sum p, so hallucinated
    structures pull the score down as in the hard form, and absent ones drop out.
    The logits are multiplied by ``sharpness`` first: a segmenter's softmax spreads
    a little mass over every pixel, which at 1 sums to phantom structures and
    puts the soft score far below the hard one (0.50 against 0.74 on real images
    in our test; 0.82 at 3).
    """
    probs = (logits.float() * sharpness).softmax(1)[:, 1:]
    target = one_hot_mask(masks, num_classes).to(probs.device)[:, 1:]
    inter = (probs * target).flatten(2).sum(-1)
    mass, area = probs.flatten(2).sum(-1), target.flatten(2).sum(-1)
    dice = (2 * inter + smooth) / (mass + area + smooth)
    weight = torch.where(area > 0, torch.ones_like(mass), mass / (mass + 1))
    # The 1e-6 in both sums makes an image with nothing in the mask and nothing predicted
    # score 1, as hard_dice does, where a clamp of the weight sum scored it 0.
    return ((weight * dice).sum(1) + 1e-6) / (weight.sum(1) + 1e-6)


# ------------------------------------------------------------- training ----


def augment(x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    # Flips, a little contrast/brightness change and extra noise: a segmenter that
    # tolerates them scores generated images by their structure, not their exact texture.
    b = x.shape[0]
    if torch.rand((), generator=g) < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    if torch.rand((), generator=g) < 0.5:
        x, y = x.flip(-2), y.flip(-2)
    scale = 1 + 0.2 * (torch.rand(b, 1, 1, 1, generator=g) - 0.5)
    shift = 0.2 * (torch.rand(b, 1, 1, 1, generator=g) - 0.5)
    noise = 0.1 * torch.rand(b, 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g)
    return x * scale + shift + noise, y


def train_segmenter(root: str | Path, out: str | Path, *, arch: str = "unet", steps: int = 300,
                    batch_size: int = 32, lr: float = 3e-3, seed: int = 0, **data_options: Any) -> Path:
    """Train a segmenter on the task's training split and write it to ``out`` (atomically).

    ``data_options`` go to :class:`~prefdiff_medical.data.DecathlonSlices`
    (``resolution``, ``percentiles``, ...); use the ones the images to score are made with.
    Returns the checkpoint path; its metadata records the validation Dice.
    """
    from monai.losses import DiceCELoss
    from safetensors.torch import save

    from prefdiff_medical.data import DecathlonSlices

    if steps < 1 or batch_size < 1 or lr <= 0:
        raise UserError(f"--steps, --batch-size and --lr must be > 0, got {steps}, {batch_size}, {lr}")
    train = DecathlonSlices(root, split="train", **data_options)
    val = DecathlonSlices(root, split="val", **data_options)
    k = train.num_classes
    x_all = torch.stack([train[i]["x0"] for i in range(len(train))])
    y_all = torch.stack([train[i]["cond"] for i in range(len(train))])
    torch.manual_seed(seed)
    net = build_segmenter(arch, k)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    net.train()
    for step in range(steps):
        idx = torch.randint(len(x_all), (min(batch_size, len(x_all)),), generator=g)
        x, y = augment(x_all[idx], y_all[idx], g)
        loss = loss_fn(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    net.eval()
    with torch.no_grad():
        xv = torch.stack([val[i]["x0"] for i in range(len(val))])
        yv = torch.stack([val[i]["cond"] for i in range(len(val))])
        val_dice = float(hard_dice(net(xv), yv, k).mean())
    wall = time.perf_counter() - start
    log.info(f"segmenter {arch} (seed {seed}): {steps} steps in {wall:.0f} s, validation Dice {val_dice:.3f}")
    meta = {"format": FORMAT, "arch": arch, "num_classes": k, "resolution": train.resolution, "seed": seed,
            "steps": steps, "val_dice": val_dice, "train_wall_s": wall, "task": str(Path(root).resolve())}
    out = Path(out)
    _write_whole(out, save({k_: v.contiguous() for k_, v in net.state_dict().items()},
                           metadata={"prefdiff_medical": json.dumps(meta)}))
    return out


def _write_whole(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: temporary file, fsync, rename, fsync the folder (the rule of
    ``prefdiff.durable``): a crash or a full disk leaves the old checkpoint or the new one."""
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"could not write the segmenter checkpoint {path}: {exc.strerror or exc}; the file is as "
                        f"it was before this write; free disk space and retry") from None


def load_segmenter(path: str | Path | None) -> tuple[nn.Module, dict[str, Any]]:
    """A segmenter written by :func:`train_segmenter`, in eval mode and frozen, with its metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if path is None:
        raise UserError(f"this reward needs checkpoint=PATH of a trained segmenter; train one with "
                        f"`{TRAIN_COMMAND}` (`prefdiff bench medical` does it itself)")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"segmenter checkpoint {path} does not exist; train one with `{TRAIN_COMMAND}`")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["prefdiff_medical"])
        state = load_file(str(path))
    except Exception as exc:
        raise UserError(f"{path} is not a prefdiff-medical segmenter checkpoint ({type(exc).__name__}); "
                        f"re-create it with `{TRAIN_COMMAND}`") from None
    net = build_segmenter(meta["arch"], int(meta["num_classes"]))
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"the weights in {path} do not fit a {meta['arch']} segmenter; re-create it with "
                        f"`{TRAIN_COMMAND}`") from exc
    net.eval().requires_grad_(False)
    return net, meta
