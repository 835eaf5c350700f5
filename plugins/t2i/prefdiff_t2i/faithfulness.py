"""Prompt faithfulness from a recogniser's reading of an image: soft probabilities and hard checks.

A caption is parsed into its attributes (:func:`prefdiff_t2i.world.parse`) and
compared with what a recogniser says about the image (counts and centres of
every object kind):

- :func:`caption_probability` (the training reward, differentiable): the mean
  of the recogniser's probabilities of the caption's attributes. For "two red
  circles": some red object, some circle, exactly two red circles. For "a red
  circle left of a blue square": a red circle, a blue square, and both with the
  first clearly left of the second (a sigmoid of the offset along the asked
  axis minus the offset across it, :func:`~prefdiff_t2i.world.relation_margin`).
- :func:`caption_checks` (the judge, GenEval-style, Ghosh et al. 2023): the
  recogniser's most likely counts decide each attribute: the caption's colour is
  present, its shape is present and the count is exact (counting); each object
  is present and their centres stand in the asked relation (position).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch

from prefdiff_t2i import world

ATTRIBUTES = {"counting": ("colour", "shape", "count"), "position": ("object", "object2", "position")}
"""The attributes the judge checks per task; its score is the fraction it recognises."""


@lru_cache(maxsize=4096)
def parsed(caption: str) -> dict:
    """:func:`prefdiff_t2i.world.parse`, once per caption; a clear error for a foreign prompt."""
    from prefdiff.api import UserError

    try:
        return world.parse(caption)
    except ValueError:
        raise UserError(f"the shapes recognisers score captions of the t2i shapes world (e.g. 'two red circles', "
                        f"'a red circle left of a blue square'), got {caption!r}") from None


def as_prompts(conditions, n: int) -> list[str]:
    """The batch's prompts as a list of ``n`` strings."""
    prompts = [conditions] if isinstance(conditions, str) else list(conditions)
    if len(prompts) != n:
        raise ValueError(f"got {len(prompts)} prompts for {n} images")
    return prompts


def _kinds(p: dict) -> tuple[int, int | None]:
    k1 = world.kind_index(p["colour"], p["shape"])
    k2 = world.kind_index(p["colour2"], p["shape2"]) if p["task"] == "position" else None
    return k1, k2


def attribute_probabilities(logits: torch.Tensor, centres: torch.Tensor, prompts: Sequence[str],
                            temperature: float = 0.03) -> torch.Tensor:
    """``[B, 3]`` the recogniser's probability of each of the caption's attributes (:data:`ATTRIBUTES`),
    differentiable in its outputs.

    Counting: some object has the colour, some object has the shape, the kind's count is exact.
    Position: the first object is there, the second is there, and both are there with the
    first in the asked relation (a sigmoid of :func:`~prefdiff_t2i.world.relation_margin`).

    :param logits: count logits ``[B, K, MAX_COUNT + 1]``.
    :param centres: centres ``[B, K, 2]`` in [0, 1].
    :param temperature: width of the relation's sigmoid, in image widths.
    """
    none = logits.float().softmax(-1)
    out = []
    for i, caption in enumerate(prompts):
        p = parsed(caption)
        k1, k2 = _kinds(p)
        absent = none[i, :, 0]
        if k2 is None:
            colour = [world.kind_index(p["colour"], s) for s in world.SHAPES]
            shape = [world.kind_index(c, p["shape"]) for c in world.COLOURS]
            out.append(torch.stack([1 - absent[colour].prod(), 1 - absent[shape].prod(), none[i, k1, p["count"]]]))
            continue
        first, second = 1 - absent[k1], 1 - absent[k2]
        d = centres[i, k2].float() - centres[i, k1].float()
        placed = torch.sigmoid(world.relation_margin(d[0], d[1], p["relation"]) / temperature)
        out.append(torch.stack([first, second, first * second * placed]))
    return torch.stack(out)


def caption_probability(logits: torch.Tensor, centres: torch.Tensor, prompts: Sequence[str],
                        temperature: float = 0.03) -> torch.Tensor:
    """``[B]`` the soft counterpart of the judge's score: the mean of :func:`attribute_probabilities`."""
    return attribute_probabilities(logits, centres, prompts, temperature).mean(-1)


def caption_checks(logits: torch.Tensor, centres: torch.Tensor, prompts: Sequence[str]) -> list[dict[str, bool]]:
    """Each image's attribute checks (:data:`ATTRIBUTES`), from the recogniser's most likely counts."""
    counts = logits.argmax(-1)
    out = []
    for i, caption in enumerate(prompts):
        p = parsed(caption)
        k1, k2 = _kinds(p)
        if k2 is None:
            colour = [world.kind_index(p["colour"], s) for s in world.SHAPES]
            shape = [world.kind_index(c, p["shape"]) for c in world.COLOURS]
            out.append({"colour": bool(counts[i, colour].sum() > 0), "shape": bool(counts[i, shape].sum() > 0),
                        "count": bool(counts[i, k1] == p["count"])})
            continue
        first, second = bool(counts[i, k1] > 0), bool(counts[i, k2] > 0)
        d = centres[i, k2] - centres[i, k1]
        placed = first and second and float(world.relation_margin(float(d[0]), float(d[1]), p["relation"])) > 0
        out.append({"object": first, "object2": second, "position": placed})
    return out


def attribute_score(checks: dict[str, bool]) -> float:
    """The fraction of a caption's attributes recognised."""
    return sum(checks.values()) / len(checks)
