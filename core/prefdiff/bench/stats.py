"""The benchmark's statistics: paired bootstrap intervals and the default drift measure."""

from __future__ import annotations

import torch


def paired_bootstrap_ci(diff: torch.Tensor, n_resamples: int = 2000, seed: int = 0,
                        level: float = 0.95) -> list[float]:
    """Percentile interval of the mean of paired differences (Efron 1979).

    :param diff: one difference per condition (aligned minus base on the same
        condition and noise), ``[N]``.
    :param level: coverage; 0.95 gives the 2.5% and 97.5% quantiles.
    """
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(diff), (n_resamples, len(diff)), generator=g)
    means = diff.double()[idx].mean(1)
    tail = round((1 - level) / 2, 12)  # 0.025 exactly: (1 - 0.95) / 2 is 0.025000000000000022 in floats
    return [float(torch.quantile(means, tail)), float(torch.quantile(means, 1 - tail))]


def paired_ratio_ci(ours: torch.Tensor, theirs: torch.Tensor, n_resamples: int = 10000, seed: int = 0,
                    level: float = 0.95) -> tuple[float, list[float]]:
    """Ratio of two paired samples' means, with a percentile interval from resampling the pairs (Efron 1979).

    For costs measured side by side, one pair per step: step ``i`` of both sides ran at the same time, so
    the pairs are resampled together and the noise they share cancels in the ratio.

    :param ours: one measurement per pair, ``[N]``.
    :param theirs: the other side's, ``[N]``, same order.
    :returns: ``sum(ours) / sum(theirs)`` and its interval.
    """
    if ours.shape != theirs.shape or ours.ndim != 1:
        raise ValueError(f"need two 1-D samples of one length, got {tuple(ours.shape)} and {tuple(theirs.shape)}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(ours), (n_resamples, len(ours)), generator=g)
    ratios = ours.double()[idx].sum(1) / theirs.double()[idx].sum(1)
    tail = round((1 - level) / 2, 12)
    return (float(ours.double().sum() / theirs.double().sum()),
            [float(torch.quantile(ratios, tail)), float(torch.quantile(ratios, 1 - tail))])


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: int = 256, seed: int = 0) -> float:
    """Sliced Wasserstein-1 distance between two sample sets (Rabin et al. 2011).

    Both sets are flattened; equal sizes are compared by sorting projections.
    """
    a, b = a.flatten(1).double(), b.flatten(1).double()
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(a.shape[1], projections, generator=g, dtype=torch.float64)
    directions /= directions.norm(dim=0, keepdim=True)
    pa, pb = (a @ directions).sort(0).values, (b @ directions).sort(0).values
    return float((pa - pb).abs().mean())


def summary(scores: torch.Tensor) -> dict[str, float]:
    """Mean and (population) standard deviation of a set of scores."""
    return {"reward_mean": float(scores.mean()), "reward_std": float(scores.std(correction=0))}
