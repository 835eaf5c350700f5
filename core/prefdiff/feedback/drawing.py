"""Conditions and samples as PNG for the labeling page.

A field plugin draws its own conditions by registering its dataset with a
``draw_condition`` callable: ``register("masks", MaskDataset,
draw_condition=fn)`` where ``fn(condition)`` returns a PIL image or an
``[H, W, 3]`` uint8 array. Anything else gets the generic drawing below:
images through :func:`prefdiff.viz.to_uint8`, 1-D signals as a path or as
lines, small tensors (a class label, a goal) as text large enough to read
at a glance, integer values without a trailing ``.0``.
"""

from __future__ import annotations

import io
from typing import Any, Callable

import numpy as np
import torch

SIZE = 384  # pixels on the page's longer side: room to judge fine detail
TEXT_PX = 32  # font size of a condition drawn as text
CAPTION_PX = 18  # font size of the key above each part of a dict condition


def png_bytes(image) -> bytes:
    """A PIL image as PNG bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _fit(image):
    from PIL import Image

    scale = max(1, SIZE // max(image.size))
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)


def _font(px: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=px)  # Pillow >= 10.1: a scalable font
    except TypeError:
        return ImageFont.load_default()


def _text(text: str, px: int = TEXT_PX):
    """``text`` in black on white, at least SIZE wide (wider when the text needs it)."""
    from PIL import Image, ImageDraw

    font, pad = _font(px), px // 2
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    image = Image.new("RGB", (max(SIZE, right - left + 2 * pad), px + 2 * pad), "white")
    ImageDraw.Draw(image).text((pad - left, pad), text, fill="black", font=font)
    return image


def format_values(t: torch.Tensor) -> str:
    """A small tensor as text: ``2`` for a class label stored as 2.0, else values to 3 decimals."""
    t = t.detach().cpu()
    if not t.is_floating_point():
        return str(t.tolist())
    if bool(torch.isfinite(t).all()) and bool((t == t.round()).all()):
        return str(t.long().tolist())
    return str(np.round(t.double().numpy(), 3).tolist())  # double: 0.123, not 0.12300000339746475


def _curves(t: torch.Tensor):
    """[C, T]: two channels as an x-y path (a trajectory), otherwise one line per channel."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (SIZE, SIZE), "white")
    draw = ImageDraw.Draw(image)
    t = t.float()

    def to_px(v: torch.Tensor) -> torch.Tensor:
        lo, hi = float(v.min()), float(v.max())
        return 8 + (v - lo) / max(hi - lo, 1e-6) * (SIZE - 16)

    if t.shape[0] == 2:
        xs, ys = to_px(t[0]), SIZE - to_px(t[1])
        draw.line(list(zip(xs.tolist(), ys.tolist())), fill="black", width=3)
        draw.ellipse([xs[0] - 6, ys[0] - 6, xs[0] + 6, ys[0] + 6], fill="green")
        draw.ellipse([xs[-1] - 6, ys[-1] - 6, xs[-1] + 6, ys[-1] + 6], fill="red")
        return image
    xs = torch.linspace(8, SIZE - 8, t.shape[1])
    colours = ["black", "red", "blue", "green", "orange", "purple"]
    for c in range(t.shape[0]):
        draw.line(list(zip(xs.tolist(), (SIZE - to_px(t[c])).tolist())), fill=colours[c % 6], width=2)
    return image


def draw_tensor(t: torch.Tensor):
    """The generic drawing of one sample or condition tensor (no batch axis)."""
    from PIL import Image

    from prefdiff.viz import to_uint8

    t = t.detach().cpu()
    if t.ndim == 3 and t.shape[0] in (1, 3) and t.is_floating_point():
        pixels = to_uint8(t[None])[0].numpy()
        return _fit(Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels))
    if t.ndim == 3:  # a label map or many channels: show each channel side by side, scaled to 0..255
        planes = t.float()
        lo, hi = planes.amin(dim=(1, 2), keepdim=True), planes.amax(dim=(1, 2), keepdim=True)
        planes = ((planes - lo) / (hi - lo).clamp_min(1e-6) * 255).round().to(torch.uint8)
        return _fit(Image.fromarray(torch.cat(list(planes), dim=1).numpy()))
    if t.ndim == 2 and t.shape[1] > 8:
        return _curves(t)
    return _text(format_values(t))


def draw_condition(tensors: dict[str, torch.Tensor], drawer: Callable[[Any], Any] | None = None) -> bytes:
    """A condition's PNG: the plugin's ``drawer`` if it has one, else the generic drawing."""
    from PIL import Image

    from prefdiff.data import tensors_condition

    if drawer is not None:
        drawn = drawer(tensors_condition(tensors))
        image = drawn if isinstance(drawn, Image.Image) else Image.fromarray(np.asarray(drawn, dtype=np.uint8))
        return png_bytes(image.convert("RGB"))
    parts = [(key, draw_tensor(value)) for key, value in sorted(tensors.items())]
    if len(parts) == 1:
        return png_bytes(parts[0][1])
    stacked = [image for key, part in parts for image in (_text(key, CAPTION_PX), part)]
    canvas = Image.new("RGB", (max(p.width for p in stacked), sum(p.height for p in stacked)), "white")
    y = 0
    for image in stacked:
        canvas.paste(image, (0, y))
        y += image.height
    return png_bytes(canvas)


def draw_sample(tensor: torch.Tensor) -> bytes:
    """A sample's PNG."""
    return png_bytes(draw_tensor(tensor))


def condition_drawer(dataset: str | None) -> Callable[[Any], Any] | None:
    """The ``draw_condition`` a plugin registered with ``dataset``, if any."""
    if dataset is None:
        return None
    from prefdiff.plugins import get_manager

    return get_manager().entry("datasets", dataset).meta.get("draw_condition")
