"""Downstream utility: is the generated data worth anything to a segmentation model?

The measure of MAISI (Guo et al. 2024, "MAISI: Medical AI for Synthetic Imaging")
and MedSegFactory (Mao et al. 2025): train a segmenter on synthetic (mask, image)
pairs and test it on real scans. Here the held-out conditions of a benchmark run
split in two halves by position (the test split lists its slices volume by
volume, so the halves share at most one volume). For every row of the run (the
real scans, the base, each aligned method) a MONAI SegResNet (Myronenko 2018),
an architecture neither the training reward (UNet) nor the judge (BasicUNet)
uses, is trained from one seed on the first half's masks with that row's
images, one image per mask, so every row trains on N pairs for the same N
masks. Each is then scored by hard Dice on the second half's real scans.

Reported per row: the downstream Dice; per generated row, its ratio to the
real row's (a 95% paired bootstrap interval over the test scans of the ratio of
means), and per aligned method, its Dice gain over the base's.
"""

from __future__ import annotations

import torch

from prefdiff.api import paired_bootstrap_ci

STEPS = 300
BATCH = 16


def build_downstream(num_classes: int) -> torch.nn.Module:
    """The third architecture: a small 2-D SegResNet with ``num_classes + 1`` outputs."""
    from monai.networks.nets import SegResNet

    return SegResNet(spatial_dims=2, init_filters=8, in_channels=1, out_channels=num_classes + 1,
                     blocks_down=(1, 2, 2), blocks_up=(1, 1))


def train_downstream(images: torch.Tensor, masks: torch.Tensor, num_classes: int, *, steps: int = STEPS,
                     seed: int = 0, lr: float = 3e-3) -> torch.nn.Module:
    """A SegResNet trained on ``images [N, 1, H, W]`` with class-index ``masks [N, 1, H, W]``;
    the same seed gives every row the same initial weights and the same batches."""
    from monai.losses import DiceCELoss

    from prefdiff_medical.segmenters import augment

    torch.manual_seed(seed)
    net = build_downstream(num_classes)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    net.train()
    with torch.enable_grad():
        for _ in range(steps):
            idx = torch.randint(len(images), (min(BATCH, len(images)),), generator=g)
            x, y = augment(images[idx].float(), masks[idx].float(), g)
            loss = loss_fn(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return net.eval().requires_grad_(False)


def ratio_ci(numerator: torch.Tensor, denominator: torch.Tensor, n_resamples: int = 2000, seed: int = 0,
             level: float = 0.95) -> list[float]:
    """Percentile interval of mean(numerator) / mean(denominator), resampling the paired items together."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(numerator), (n_resamples, len(numerator)), generator=g)
    ratios = numerator.double()[idx].mean(1) / denominator.double()[idx].mean(1).clamp(min=1e-12)
    tail = round((1 - level) / 2, 12)
    return [float(torch.quantile(ratios, tail)), float(torch.quantile(ratios, 1 - tail))]


def downstream_metrics(rows: dict[str, torch.Tensor], cond: torch.Tensor, *, num_classes: int,
                       steps: int = STEPS, seed: int = 0) -> dict[str, dict[str, float | list[float]]]:
    """Each row's downstream Dice on real test scans, and the ratios and gains described above.

    ``rows`` holds ``real`` (needed: it is both the reference and the test scans), ``base`` and
    the methods, each ``[n * k, 1, H, W]`` lined up with the class-index masks ``cond``.
    """
    from prefdiff_medical.segmenters import hard_dice

    if "real" not in rows:
        return {}
    real = rows["real"]
    # One sample per condition: the rows repeat each condition's k samples consecutively and the
    # real row repeats its one scan, so taking every k-th keeps one of each.
    k = _copies(real)
    first = slice(None, None, k)
    masks, scans = cond[first], real[first]
    half = len(masks) // 2
    test_scans, test_masks = scans[half:], masks[half:]
    dice = {}
    for name, samples in rows.items():
        net = train_downstream(samples[first][:half], masks[:half], num_classes, steps=steps, seed=seed)
        with torch.no_grad():
            dice[name] = hard_dice(net(test_scans.float()), test_masks, num_classes).double()
    out: dict[str, dict[str, float | list[float]]] = {}
    for name, d in dice.items():
        entry: dict[str, float | list[float]] = {"downstream_dice": float(d.mean()), "downstream_n": float(half)}
        if name != "real":
            entry["downstream_ratio_to_real"] = float(d.mean() / dice["real"].mean().clamp(min=1e-12))
            entry["downstream_ratio_to_real_ci95"] = ratio_ci(d, dice["real"], seed=seed)
        if name not in ("real", "base") and "base" in dice:
            gain = d - dice["base"]
            entry["downstream_gain_over_base"] = float(gain.mean())
            entry["downstream_gain_over_base_ci95"] = paired_bootstrap_ci(gain, seed=seed)
        out[name] = entry
    return out


def _copies(real: torch.Tensor) -> int:
    """How many consecutive copies of each scan the real row holds (the run's samples per
    condition): the largest group size whose groups are each one scan repeated."""
    n = len(real)
    for k in range(n // 2, 1, -1):
        if n % k == 0:
            groups = real.reshape(n // k, k, -1)
            if torch.equal(groups, groups[:, :1].expand_as(groups)):
                return k
    return 1
