"""A reward model learned from pairwise preferences (Bradley-Terry).

Bradley & Terry (1952) model the chance that ``a`` is preferred to ``b`` as
``P(a > b) = sigmoid(r(a) - r(b))``; fitting ``r`` by maximum likelihood on
human comparisons is how RLHF learns its reward (Christiano et al. 2017,
eq. 1; Ouyang et al. 2022, eq. 1). Here ``r`` is a small CNN on the sample,
conditioned on the condition when that is a class label (an embedding) or a
map of the sample's size (extra input channels). Ties count as half a win
for each side.

A trained model is a folder (``config.json`` + ``model.safetensors``); the
built-in plugin registers it as the reward ``preference_model`` with the
option ``path=DIR``, so any trainer uses it like a field's own reward.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prefdiff.errors import UserError


def bradley_terry_loss(r_a: Tensor, r_b: Tensor, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Negative log-likelihood of the Bradley-Terry model (Bradley & Terry 1952).

    :param r_a: rewards of the first samples, ``[B]``.
    :param r_b: rewards of the second samples, ``[B]``.
    :param target: 1 where ``a`` won, 0 where ``b`` won, 0.5 for a tie.
    :returns: the mean loss and metrics: ``accuracy`` over decided pairs (the side
        with the higher reward is the winner) and the mean ``margin`` ``r_a - r_b``.
    """
    margin = r_a - r_b
    loss = F.binary_cross_entropy_with_logits(margin, target.to(margin.dtype))
    decided = target != 0.5
    correct = ((margin > 0) == (target > 0.5)).float()
    accuracy = correct[decided].mean() if decided.any() else torch.tensor(float("nan"))
    return loss, {"loss": loss.detach(), "accuracy": accuracy.detach(), "margin": margin.detach().mean()}


@dataclass
class RewardModelConfig:
    """What the network looks like; saved beside its weights."""

    sample_shape: list[int]
    """Shape of one sample, ``[C, H, W]`` or ``[C, T]``."""
    condition: str = "none"
    """How the condition enters: ``none``, ``class`` (an integer label) or ``concat`` (a map)."""
    condition_channels: int = 0
    """Channels of a ``concat`` condition."""
    num_classes: int = 0
    """Embedding rows for a ``class`` condition (labels at or above it share the last row)."""
    width: int = 32
    """Channels of the first convolution; doubled once."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """Held-out accuracy and the rest of the training report."""


class PreferenceNet(nn.Module):
    """A small CNN mapping a sample (and its condition) to one scalar reward."""

    def __init__(self, config: RewardModelConfig) -> None:
        super().__init__()
        self.config = config
        channels, spatial = config.sample_shape[0], len(config.sample_shape) - 1
        if spatial not in (1, 2):
            raise UserError(f"the preference model handles samples of shape [C, H, W] or [C, T], "
                            f"got {config.sample_shape}")
        conv = nn.Conv2d if spatial == 2 else nn.Conv1d
        w = config.width
        extra = config.condition_channels if config.condition == "concat" else 0
        self.features = nn.Sequential(
            conv(channels + extra, w, 3, padding=1), nn.SiLU(),
            conv(w, 2 * w, 3, padding=1, stride=2), nn.SiLU(),
            conv(2 * w, 2 * w, 3, padding=1), nn.SiLU())
        self.embed = nn.Embedding(max(config.num_classes, 1), 2 * w) if config.condition == "class" else None
        # Mean and max pooling: global statistics (brightness, contrast) and local evidence (an artefact).
        self.head = nn.Sequential(nn.Linear(4 * w, w), nn.SiLU(), nn.Linear(w, 1))

    def forward(self, x: Tensor, cond: Any = None) -> Tensor:
        if self.config.condition == "concat":
            x = torch.cat([x, cond.to(x)], dim=1)
        h = self.features(x)
        if self.embed is not None:
            labels = cond.long().clamp(0, self.embed.num_embeddings - 1).to(x.device)
            h = h + self.embed(labels).view(h.shape[0], -1, *([1] * (h.ndim - 2)))
        pooled = torch.cat([h.flatten(2).mean(-1), h.flatten(2).amax(-1)], dim=1)
        return self.head(pooled).squeeze(-1)


def condition_mode(cond: Any, sample_shape: tuple[int, ...]) -> tuple[str, int]:
    """How a (single, unbatched) condition can enter the network: (mode, channels)."""
    if isinstance(cond, Tensor):
        if cond.ndim == 0 and not cond.is_floating_point():
            return "class", 0
        if cond.ndim == len(sample_shape) and tuple(cond.shape[1:]) == tuple(sample_shape[1:]):
            return "concat", int(cond.shape[0])
    return "none", 0  # other conditions (dicts, vectors) are not seen by the model


def save_reward_model(net: PreferenceNet, out: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` to ``out``."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(net.config), indent=2) + "\n")
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(out / "model.safetensors"))
    return out


def load_reward_model(path: str | Path) -> PreferenceNet:
    """A saved preference model, in eval mode with frozen weights."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise UserError(f"{path} is not a preference model folder (config.json, model.safetensors); "
                        f"train one with `prefdiff reward-model train PAIRS --out {path}`")
    net = PreferenceNet(RewardModelConfig(**json.loads((path / "config.json").read_text())))
    net.load_state_dict(load_file(str(path / "model.safetensors")))
    net.eval().requires_grad_(False)
    return net


def preference_model(path: str):
    """Reward factory: the Bradley-Terry reward model saved in ``path``."""
    net = load_reward_model(path)

    def reward(samples: Tensor, conditions: Any = None):
        model = net.to(samples.device)
        cond = conditions if net.config.condition != "none" else None
        scores = model(samples.float(), cond)
        return scores.to(samples.dtype if samples.is_floating_point() else torch.float32), {}

    return reward
