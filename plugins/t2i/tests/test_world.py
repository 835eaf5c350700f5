"""The world: captions match scenes, the held-out split holds whole combinations out."""

import random

import pytest

from prefdiff_t2i import world
from prefdiff_t2i.pipeline import vocabulary, word_tokenizer


def test_every_caption_parses_back_to_the_scene_it_was_drawn_for():
    rng = random.Random(0)
    for prompt in world.all_prompts():
        objects = world.scene_for(prompt, rng)
        text = world.caption(prompt)
        assert world.parse(text) == world.describe(objects) == prompt, (text, objects)
        pixels = world.draw(objects)
        assert pixels.shape == (32, 32, 3) and pixels.max() > 150  # the objects are drawn


@pytest.mark.parametrize("shape", world.SHAPES)
def test_each_shape_is_drawn_as_itself(shape):
    """A red object of size 16 centred in the 32 px image: pixels at least half covered are lit."""
    lit = world.draw([{"colour": "red", "shape": shape, "x": 16.0, "y": 16.0, "size": 16.0}])[..., 0] > 130
    widths = lit.sum(axis=1)
    corner = lit[22, 22]  # 6-7 px from the centre on both axes: outside the circle (radius 8), inside the square
    if shape == "triangle":
        assert widths[9] + 6 <= widths[20] and not lit[4].any()  # narrow near the apex, wide near the base
    else:
        assert abs(int(widths[10]) - int(widths[21])) <= 1  # as wide above the centre as below it
        assert corner == (shape == "square")


def test_describe_reads_positions_not_the_template():
    a = {"colour": "red", "shape": "circle", "x": 8.0, "y": 16.0, "size": 8.0}
    b = {"colour": "blue", "shape": "square", "x": 24.0, "y": 17.0, "size": 8.0}
    assert world.describe([a, b])["relation"] == "left of"
    assert world.describe([b, a])["relation"] == "right of"
    below = dict(b, x=9.0, y=28.0)
    assert world.describe([a, below])["relation"] == "above"
    with pytest.raises(ValueError):  # diagonal: no single relation holds
        world.describe([a, dict(b, x=20.0, y=28.0)])


@pytest.mark.parametrize("text", ["four red circles", "two red", "a red circle left of a red circle",
                                  "a purple circle above a red square", "hello"])
def test_foreign_text_does_not_parse(text):
    with pytest.raises(ValueError, match="not a caption"):
        world.parse(text)


def test_held_out_combinations_never_reach_training():
    splits = {s: world.prompts_of(s) for s in ("train", "val", "test")}
    assert sum(map(len, splits.values())) == len(world.all_prompts())
    captions = {s: {world.caption(p) for p in ps} for s, ps in splits.items()}
    assert not captions["train"] & captions["test"] and not captions["train"] & captions["val"]
    assert not captions["val"] & captions["test"]
    pairs = {s: {frozenset({(p["colour"], p["shape"]), (p["colour2"], p["shape2"])})
                 for p in ps if p["task"] == "position"} for s, ps in splits.items()}
    assert not pairs["train"] & pairs["test"] and len(pairs["test"]) == 12
    # Every kind, count and relation still appears in training: the test asks for new compositions.
    train = splits["train"]
    assert {(p["colour"], p["shape"]) for p in train} == set(world.KINDS)
    assert {p["count"] for p in train if p["task"] == "counting"} == {1, 2, 3}
    assert {p["relation"] for p in train if p["task"] == "position"} == set(world.RELATIONS)
    assert {p["task"] for p in splits["test"][:2]} == {"counting", "position"}
    # The split is a pure function of its seed: computed again, it is the one every process uses.
    assert world._held_out() == world._HELD


def test_a_counting_scene_always_shows_its_count():
    """When an object finds no room (about once in a thousand three-object scenes) the scene starts over."""
    rng = random.Random(0)
    three = next(p for p in world.all_prompts() if p["task"] == "counting" and p["count"] == 3)
    for _ in range(3000):
        objects = world.scene_for(three, rng)
        assert objects is not None and len(objects) == 3 and world.describe(objects) == three


def test_random_scenes_hold_zero_to_max_count_separate_objects():
    """The recogniser's training scenes: every count from none to MAX_COUNT, kinds of the world, no overlaps."""
    from itertools import combinations

    rng = random.Random(0)
    scenes = [world.random_scene(rng) for _ in range(300)]
    assert {len(objects) for objects in scenes} == set(range(world.MAX_COUNT + 1))
    for objects in scenes:
        assert all((o["colour"], o["shape"]) in world.KINDS for o in objects)
        for a, b in combinations(objects, 2):  # centres rounded to 0.01 px
            gap = ((a["x"] - b["x"]) ** 2 + (a["y"] - b["y"]) ** 2) ** 0.5
            assert gap >= (a["size"] + b["size"]) / 2 + 2 - 0.02


def test_the_tokenizer_makes_each_caption_word_one_token():
    tokenizer = word_tokenizer()
    for word in vocabulary():
        assert len(tokenizer(word).input_ids) == 3, word  # begin, the word, end
    ids = tokenizer("a yellow triangle right of a blue square").input_ids
    assert len(ids) == 10
    assert len(word_tokenizer(48, words=False)("red").input_ids) == 5  # characters without merges
