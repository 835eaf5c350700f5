"""The synthetic caption-to-image world: coloured shapes on a plain background, exactly checkable.

A prompt is a dict of attributes, and its caption is written from it:

- counting: ``{"task": "counting", "colour": "red", "shape": "circle", "count": 2}``
  -> "two red circles";
- position: ``{"task": "position", "colour": "red", "shape": "circle", "relation": "left of",
  "colour2": "blue", "shape2": "square"}`` -> "a red circle left of a blue square".

:func:`parse` reads a caption back into its attributes, :func:`scene_for` draws a
random scene that satisfies a prompt, and :func:`describe` recomputes the
attributes from a scene's objects alone, so ``parse(caption) == describe(objects)``
is a real check of the generator. :func:`split_of` holds out whole combinations
(a colour-shape-count triple, or a pair of object kinds) for validation and test,
so a held-out prompt is a composition the model never saw in training.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 90, 235), "yellow": (235, 210, 40)}
SHAPES = ("circle", "square", "triangle")
KINDS: tuple[tuple[str, str], ...] = tuple(itertools.product(COLOURS, SHAPES))
"""Every (colour, shape) object kind; a recogniser has one output head per kind."""
COUNT_WORDS = ("one", "two", "three")
RELATIONS = ("left of", "right of", "above", "below")
BACKGROUND = (0, 0, 0)
MAX_COUNT = 4
"""Counts a recogniser distinguishes: 0 .. MAX_COUNT (random scenes hold up to this many)."""

# The held-out split is a property of the world, not of a data seed.
_SPLIT_SEED = 20261130
_HELD_OUT_PAIRS = {"test": 12, "val": 6}
_HELD_OUT_COUNTS = {"test": 8, "val": 4}

Prompt = dict[str, Any]
Obj = dict[str, Any]


def kind_index(colour: str, shape: str) -> int:
    """The index of an object kind in :data:`KINDS`."""
    return KINDS.index((colour, shape))


def plural(shape: str) -> str:
    """``circle`` -> ``circles``."""
    return shape + "s"


# ------------------------------------------------------------ captions ----


def caption(prompt: Prompt) -> str:
    """The caption of a prompt's attributes."""
    if prompt["task"] == "counting":
        n = prompt["count"]
        noun = prompt["shape"] if n == 1 else plural(prompt["shape"])
        return f"{COUNT_WORDS[n - 1]} {prompt['colour']} {noun}"
    return (f"a {prompt['colour']} {prompt['shape']} {prompt['relation']} "
            f"a {prompt['colour2']} {prompt['shape2']}")


def parse(text: str) -> Prompt:
    """The attributes of a caption this world writes; ``ValueError`` for any other text."""
    words = text.strip().lower().split()
    if len(words) == 3 and words[0] in COUNT_WORDS:
        n = COUNT_WORDS.index(words[0]) + 1
        colour, noun = words[1], words[2]
        shape = noun if n == 1 else (noun[:-1] if noun.endswith("s") else "")
        if colour in COLOURS and shape in SHAPES:
            return {"task": "counting", "colour": colour, "shape": shape, "count": n}
    if len(words) in (7, 8) and words[0] == "a":
        relation = " ".join(words[3:-3])
        c1, s1, a, c2, s2 = words[1], words[2], words[-3], words[-2], words[-1]
        if (relation in RELATIONS and a == "a" and c1 in COLOURS and c2 in COLOURS
                and s1 in SHAPES and s2 in SHAPES and (c1, s1) != (c2, s2)):
            return {"task": "position", "colour": c1, "shape": s1, "relation": relation,
                    "colour2": c2, "shape2": s2}
    raise ValueError(f"not a caption of the shapes world: {text!r}")


def relation_margin(dx: float, dy: float, relation: str) -> float:
    """How clearly the offset (dx, dy) of the second object from the first puts the first
    ``relation`` the second: positive when the asked direction has the right sign and
    dominates the other axis (image y grows downwards)."""
    along, across = {"left of": (dx, dy), "right of": (-dx, dy), "above": (dy, dx), "below": (-dy, dx)}[relation]
    return along - abs(across)


def describe(objects: list[Obj]) -> Prompt:
    """The prompt a scene shows, recomputed from its objects alone (positions included)."""
    kinds = {(o["colour"], o["shape"]) for o in objects}
    if len(kinds) == 1 and 1 <= len(objects) <= len(COUNT_WORDS):
        colour, shape = next(iter(kinds))
        return {"task": "counting", "colour": colour, "shape": shape, "count": len(objects)}
    if len(objects) == 2 and len(kinds) == 2:
        a, b = objects
        dx, dy = b["x"] - a["x"], b["y"] - a["y"]
        found = [r for r in RELATIONS if relation_margin(dx, dy, r) > 0]
        if len(found) == 1:
            return {"task": "position", "colour": a["colour"], "shape": a["shape"], "relation": found[0],
                    "colour2": b["colour"], "shape2": b["shape"]}
    raise ValueError(f"the scene shows no prompt of this world: {objects}")


# --------------------------------------------------------------- prompts ----


def all_prompts() -> list[Prompt]:
    """Every prompt of the world: counting prompts, then position prompts."""
    counting = [{"task": "counting", "colour": c, "shape": s, "count": n}
                for c, s in KINDS for n in range(1, len(COUNT_WORDS) + 1)]
    position = [{"task": "position", "colour": c1, "shape": s1, "relation": r, "colour2": c2, "shape2": s2}
                for (c1, s1), (c2, s2) in itertools.permutations(KINDS, 2) for r in RELATIONS]
    return counting + position


def _held_out() -> dict[str, tuple[set, set]]:
    """split -> (held-out (colour, shape, count) triples, held-out unordered kind pairs)."""
    rng = random.Random(_SPLIT_SEED)
    kinds = list(KINDS)
    rng.shuffle(kinds)
    # One count per kind at most, so every kind and every count stays in training.
    triples = [(c, s, 1 + i % len(COUNT_WORDS)) for i, (c, s) in enumerate(kinds)]
    pairs = [frozenset(p) for p in itertools.combinations(KINDS, 2)]
    rng.shuffle(pairs)
    out, t, p = {}, 0, 0
    for split in ("test", "val"):
        out[split] = (set(triples[t:t + _HELD_OUT_COUNTS[split]]), set(pairs[p:p + _HELD_OUT_PAIRS[split]]))
        t, p = t + _HELD_OUT_COUNTS[split], p + _HELD_OUT_PAIRS[split]
    return out


_HELD = _held_out()


def split_of(prompt: Prompt) -> str:
    """``train``, ``val`` or ``test``: held-out combinations appear only in their split."""
    for split, (triples, pairs) in _HELD.items():
        if prompt["task"] == "counting":
            if (prompt["colour"], prompt["shape"], prompt["count"]) in triples:
                return split
        elif frozenset({(prompt["colour"], prompt["shape"]), (prompt["colour2"], prompt["shape2"])}) in pairs:
            return split
    return "train"


def prompts_of(split: str) -> list[Prompt]:
    """The prompts of one split, counting and position interleaved (so any prefix holds both)."""
    mine = [p for p in all_prompts() if split_of(p) == split]
    counting = [p for p in mine if p["task"] == "counting"]
    position = [p for p in mine if p["task"] == "position"]
    out = []
    for i in range(max(len(counting), len(position))):
        if i < len(counting):
            out.append(counting[i])
        if i < len(position):
            out.append(position[i])
    return out


# ---------------------------------------------------------------- scenes ----


def _place(rng: random.Random, size: float, resolution: int, placed: list[Obj], tries: int = 200):
    half = size / 2 + 1
    for _ in range(tries):
        x, y = rng.uniform(half, resolution - half), rng.uniform(half, resolution - half)
        if all((x - o["x"]) ** 2 + (y - o["y"]) ** 2 >= ((size + o["size"]) / 2 + 2) ** 2 for o in placed):
            return x, y
    return None


def _size(rng: random.Random, resolution: int) -> float:
    return rng.uniform(0.24, 0.32) * resolution


def scene_for(prompt: Prompt, rng: random.Random, resolution: int = 32) -> list[Obj]:
    """A random scene that shows ``prompt``: objects with colour, shape, centre (x, y) and size in pixels."""
    while True:
        objects: list[Obj] = []
        if prompt["task"] == "counting":
            for _ in range(prompt["count"]):
                size = _size(rng, resolution)
                where = _place(rng, size, resolution, objects)
                if where is None:
                    break
                objects.append({"colour": prompt["colour"], "shape": prompt["shape"], "x": where[0],
                                "y": where[1], "size": size})
            if len(objects) != prompt["count"]:
                continue
        else:
            s1, s2 = _size(rng, resolution), _size(rng, resolution)
            along = rng.uniform(0.36, 0.6) * resolution  # clearly apart along the asked axis
            across = rng.uniform(-0.1, 0.1) * resolution  # and roughly aligned on the other
            ux, uy = {"left of": (1, 0), "right of": (-1, 0), "above": (0, 1), "below": (0, -1)}[prompt["relation"]]
            dx, dy = ux * along + uy * across, uy * along + ux * across
            margin = max(s1, s2) / 2 + 1
            lo_x, hi_x = margin - min(0, dx), resolution - margin - max(0, dx)
            lo_y, hi_y = margin - min(0, dy), resolution - margin - max(0, dy)
            if lo_x > hi_x or lo_y > hi_y:
                continue
            x, y = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
            objects = [{"colour": prompt["colour"], "shape": prompt["shape"], "x": x, "y": y, "size": s1},
                       {"colour": prompt["colour2"], "shape": prompt["shape2"], "x": x + dx, "y": y + dy,
                        "size": s2}]
        for o in objects:
            o.update(x=round(o["x"], 2), y=round(o["y"], 2), size=round(o["size"], 2))
        return objects


def random_scene(rng: random.Random, resolution: int = 32) -> list[Obj]:
    """0 to :data:`MAX_COUNT` objects of random kinds, not overlapping (recogniser training)."""
    objects: list[Obj] = []
    for _ in range(rng.randint(0, MAX_COUNT)):
        size = _size(rng, resolution)
        where = _place(rng, size, resolution, objects)
        if where is not None:
            colour, shape = rng.choice(KINDS)
            objects.append({"colour": colour, "shape": shape, "x": round(where[0], 2), "y": round(where[1], 2),
                            "size": round(size, 2)})
    return objects


SUPERSAMPLE = 4


def draw(objects: list[Obj], resolution: int = 32) -> np.ndarray:
    """The scene as ``uint8 [H, W, 3]``, drawn at 4x and box-filtered down (anti-aliased edges)."""
    from PIL import Image, ImageDraw

    k = SUPERSAMPLE
    image = Image.new("RGB", (resolution * k, resolution * k), BACKGROUND)
    pen = ImageDraw.Draw(image)
    for o in objects:
        x, y, r = o["x"] * k, o["y"] * k, o["size"] * k / 2
        fill = COLOURS[o["colour"]]
        if o["shape"] == "circle":
            pen.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        elif o["shape"] == "square":
            s = r * 0.89  # the same area as the circle, about
            pen.rectangle([x - s, y - s, x + s, y + s], fill=fill)
        else:  # an upward triangle centred on its centroid
            pen.polygon([(x, y - 1.25 * r), (x - 1.1 * r, y + 0.75 * r), (x + 1.1 * r, y + 0.75 * r)], fill=fill)
    return np.asarray(image.resize((resolution, resolution), Image.BOX))


def to_tensor(pixels: np.ndarray):
    """``uint8 [H, W, 3]`` -> float ``[3, H, W]`` in [-1, 1]."""
    import torch

    return torch.from_numpy(np.array(pixels)).permute(2, 0, 1).float() / 127.5 - 1.0
