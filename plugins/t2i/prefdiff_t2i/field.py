"""The shapes field's registrations: its dataset, its training rewards and its held-out judge.

Every reward takes ``(images [B, 3, H, W] in [-1, 1], prompts)`` and reads the
images with a recogniser checkpoint (:mod:`prefdiff_t2i.recognisers`) trained
by the benchmark's prepare step:

- ``shapes_faithfulness``: the reward recogniser's probability that the image
  shows its caption (:func:`~prefdiff_t2i.faithfulness.caption_probability`);
- ``shapes_faithfulness_soft``: the same with gradients to the images, for
  DRaFT, AlignProp and ReFL (optionally its logarithm);
- ``shapes_judge``: the fraction of the caption's attributes the judge
  recogniser (another architecture, seed and training set) recognises; ``info``
  holds ``exact``, GenEval's all-attributes-right rate.
"""

from __future__ import annotations

from typing import Any

import torch

from prefdiff_t2i import faithfulness


def _read(checkpoint: str, samples: torch.Tensor):
    from prefdiff_t2i import recognisers

    net = recognisers.load(checkpoint)
    return net.to(samples.device)


def shapes_faithfulness(checkpoint: str, temperature: float = 0.03):
    """The reward recogniser's probability of the caption's attributes (no gradients).

    :param checkpoint: the recogniser (.safetensors) prepare trained.
    :param temperature: width of the relation's sigmoid, in image widths.
    """

    def reward(samples: torch.Tensor, conditions: Any):
        prompts = faithfulness.as_prompts(conditions, samples.shape[0])
        with torch.no_grad():
            logits, centres = _read(checkpoint, samples)(samples.float())
            scores = faithfulness.caption_probability(logits, centres, prompts, temperature)
        return scores.to(samples.dtype), {}

    return reward


def shapes_faithfulness_soft(checkpoint: str, temperature: float = 0.03, log: bool = False, floor: float = 0.01):
    """:func:`shapes_faithfulness` with gradients to the images (reward backpropagation).

    :param log: return ``log(p + floor)``: its gradient does not vanish where the
        probability is near zero.
    :param floor: added to the probability before the logarithm.
    """

    def reward(samples: torch.Tensor, conditions: Any):
        prompts = faithfulness.as_prompts(conditions, samples.shape[0])
        logits, centres = _read(checkpoint, samples)(samples.float())
        p = faithfulness.caption_probability(logits, centres, prompts, temperature)
        scores = torch.log(p + floor) if log else p
        return scores.to(samples.dtype), {}

    return reward


def shapes_judge(checkpoint: str):
    """The held-out judge: the fraction of the caption's attributes its recogniser sees
    (counting: colour, shape, exact count; position: each object, and their relation).

    :param checkpoint: the judge recogniser (.safetensors), never used in training.
    """

    def reward(samples: torch.Tensor, conditions: Any):
        prompts = faithfulness.as_prompts(conditions, samples.shape[0])
        with torch.no_grad():
            logits, centres = _read(checkpoint, samples)(samples.float())
        checks = faithfulness.caption_checks(logits, centres, prompts)
        scores = torch.tensor([faithfulness.attribute_score(c) for c in checks], device=samples.device)
        exact = sum(all(c.values()) for c in checks) / max(1, len(checks))
        return scores.to(samples.dtype if samples.is_floating_point() else torch.float32), {"exact": exact}

    return reward


def register_rewards(register) -> None:
    """Register the field's rewards and its judge (called by the plugin's rewards hook)."""
    register("shapes_faithfulness", shapes_faithfulness)
    register("shapes_faithfulness_soft", shapes_faithfulness_soft, differentiable=True)
    register("shapes_judge", shapes_judge)


def register_datasets(register) -> None:
    """Register the world's imagefolder reader as ``t2i_shapes``."""
    from prefdiff_t2i.data import ShapesCaptions

    register("t2i_shapes", ShapesCaptions)
