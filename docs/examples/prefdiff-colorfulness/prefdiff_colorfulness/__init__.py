"""A colorfulness reward (Hasler & Süsstrunk 2003) for RGB samples in [-1, 1].

The finished plugin of docs/plugins.md's tutorial.
"""

from __future__ import annotations

from typing import Any

import torch

from prefdiff.api import hookimpl


def colorfulness(eps: float = 1e-6):
    """M = sqrt(σ_rg² + σ_yb²) + 0.3·sqrt(μ_rg² + μ_yb²) with rg = R−G, yb = (R+G)/2 − B,
    on pixel values in [0, 255] and divided by 100 so typical images score 0 to 1.5
    (Hasler & Süsstrunk 2003, eq. 3). Differentiable in the samples."""

    def reward(samples: torch.Tensor, conditions: Any = None):
        rgb = (samples.clamp(-1, 1) + 1) * 127.5
        r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
        rg, yb = (r - g).flatten(1), (0.5 * (r + g) - b).flatten(1)
        spread = (rg.var(dim=1, correction=0) + yb.var(dim=1, correction=0) + eps).sqrt()
        mean = (rg.mean(dim=1) ** 2 + yb.mean(dim=1) ** 2 + eps).sqrt()
        scores = (spread + 0.3 * mean) / 100.0
        return scores, {"colorfulness": scores.detach().mean().item()}

    return reward


@hookimpl
def prefdiff_register_rewards(register):
    register("colorfulness", colorfulness, differentiable=True)
