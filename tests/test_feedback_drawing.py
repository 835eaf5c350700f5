"""Conditions and samples as PNG: the plugin's drawing when it has one, else the generic one."""

import io

import pytest
import torch
from PIL import Image

from prefdiff.feedback.drawing import condition_drawer, draw_condition, draw_sample, format_values


def _image(png: bytes) -> Image.Image:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(png)).convert("RGB")


def test_the_example_plugin_draws_its_class_labels():
    drawer = condition_drawer("synthetic_textures")
    assert drawer is not None and condition_drawer(None) is None
    horizontal = _image(draw_condition({"cond": torch.tensor(0)}, drawer))
    vertical = _image(draw_condition({"cond": torch.tensor(1)}, drawer))
    assert horizontal.size == vertical.size == (160, 96)
    assert horizontal.tobytes() != vertical.tobytes()


@pytest.mark.parametrize("tensor, size", [
    (torch.zeros(3, 16, 16), (384, 384)),          # an RGB image, scaled up 24x
    (torch.zeros(1, 32, 32), (384, 384)),          # a grey image
    (torch.zeros(2, 8, 8, dtype=torch.long), (384, 192)),  # a two-channel mask side by side
    (torch.rand(2, 32), (384, 384)),               # a 2-D trajectory
    (torch.tensor(3), (384, 64)),                  # a class label as text
])
def test_generic_drawing(tensor, size):
    assert _image(draw_condition({"cond": tensor})).size == size


def test_sample_pixels_follow_the_values():
    sample = torch.full((3, 4, 4), -1.0)
    sample[0] = 1.0  # pure red
    image = _image(draw_sample(sample))
    assert image.getpixel((0, 0)) == (255, 0, 0)


def test_a_dict_condition_stacks_its_parts():
    image = _image(draw_condition({"mask": torch.zeros(1, 8, 8), "goal": torch.tensor([0.5, 0.5])}))
    assert image.height > 384 + 64


def _ink(image: Image.Image) -> tuple[int, int]:
    """Width and height of the dark pixels: the drawn text's extent."""
    left, top, right, bottom = Image.eval(image.convert("L"), lambda v: 255 if v < 128 else 0).getbbox()
    return right - left, bottom - top


def test_a_class_label_reads_as_an_integer_in_large_type():
    two = draw_condition({"cond": torch.tensor(2.0)})
    assert two == draw_condition({"cond": torch.tensor(2)})
    assert two != draw_condition({"cond": torch.tensor(3)})
    width, height = _ink(_image(two))
    assert height >= 20  # a digit about 24 px tall, not 10
    assert width < height  # one glyph, "2", not "2.0"


@pytest.mark.parametrize("tensor, text", [
    (torch.tensor(2.0), "2"), (torch.tensor(7), "7"), (torch.tensor([1.0, -3.0]), "[1, -3]"),
    (torch.tensor([0.5, 0.12345]), "[0.5, 0.123]"), (torch.tensor(float("inf")), "inf"),
])
def test_values_as_text(tensor, text):
    assert format_values(tensor) == text
