"""The field's own numbers: per-attribute accuracy by the judge, and the colour drift against real images."""

from __future__ import annotations

from typing import Any

import torch

from prefdiff.api import paired_bootstrap_ci, sliced_wasserstein

from prefdiff_t2i import faithfulness

DRIFT_NOTE = ("colour drift: sliced Wasserstein-1 distance between the RGB colours of the pixels of "
              "generated images and of real held-out images (in [-1, 1] units; 0: the same colour "
              "histogram). It grows when a model changes the palette, saturation or background, or "
              "paints textures the world never has, as reward hacking does")


def colour_drift(samples: torch.Tensor, real: torch.Tensor, pixels: int = 65536) -> float:
    """Sliced W1 between the pixel colours of ``samples`` and ``real`` (``[B, 3, H, W]`` each)."""
    def colours(x: torch.Tensor) -> torch.Tensor:
        flat = x.detach().float().cpu().clamp(-1, 1).permute(0, 2, 3, 1).reshape(-1, 3)
        stride = max(1, len(flat) // pixels)
        return flat[::stride][:pixels]

    n = min(len(samples), len(real))
    return sliced_wasserstein(colours(samples[:n]), colours(real[:n]))


@torch.no_grad()
def judge_checks(images: torch.Tensor, prompts: list[str], checkpoint: str) -> list[dict[str, bool]]:
    """The judge's attribute checks of every image (:func:`~prefdiff_t2i.faithfulness.caption_checks`)."""
    from prefdiff_t2i import recognisers

    net = recognisers.load(checkpoint)
    out = []
    for s in range(0, len(images), 256):
        logits, centres = net(images[s:s + 256].float())
        out.extend(faithfulness.caption_checks(logits, centres, prompts[s:s + 256]))
    return out


def attribute_accuracy(checks: list[dict[str, bool]]) -> dict[str, float]:
    """Accuracy of each attribute over the images that have it, and the exact-match rates."""
    out: dict[str, float] = {}
    for task, names in faithfulness.ATTRIBUTES.items():
        mine = [c for c in checks if set(c) == set(names)]
        for name in names:
            if mine:
                out[name] = sum(c[name] for c in mine) / len(mine)
        if mine:
            out[f"{task}_exact"] = sum(all(c.values()) for c in mine) / len(mine)
    out["exact"] = sum(all(c.values()) for c in checks) / max(1, len(checks))
    return out


def field_metrics(rows: dict[str, torch.Tensor], cond: Any, checkpoint: str) -> dict[str, dict[str, Any]]:
    """Per-attribute accuracy of each row by the judge, and each method's exact-match gain over the
    base with its paired bootstrap interval (over every sample; the same noise for every model)."""
    prompts = [cond] if isinstance(cond, str) else list(cond)
    exact: dict[str, torch.Tensor] = {}
    out: dict[str, dict[str, Any]] = {}
    for name, images in rows.items():
        checks = judge_checks(images, prompts, checkpoint)
        out[name] = attribute_accuracy(checks)
        exact[name] = torch.tensor([float(all(c.values())) for c in checks])
    for name in rows:
        if name != "base" and "base" in exact:
            diff = exact[name] - exact["base"]
            out[name]["exact_gain"] = float(diff.mean())
            out[name]["exact_gain_ci95"] = paired_bootstrap_ci(diff)
    return out
