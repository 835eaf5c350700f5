"""Conditions and samples as PNG for the labeling page.

A field plugin draws its own conditions by registering its dataset with a
``draw_condition`` callable: ``register("masks", MaskDataset,
draw_condition=fn)`` where ``fn(condition)`` returns a PIL image or an
``[H, W, 3]`` uint8 array. Anything else gets the generic drawing below:
images through :func:`prefdiff.viz.to_uint8`, 1-D signals as a path or as
lines, small tensors (a class label, a goal) as text.
"""

from __future__ import annotations

import io
from typing import Any, Callable

import numpy as np
import torch

SIZE = 192  # pixels on the page's longer side


def png_bytes(image) -> bytes:
    """A PIL image as PNG bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _fit(image):
    from PIL import Image

    scale = max(1, SIZE // max(image.size))
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)


def _text(text: str):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (SIZE, 48), "white")
    ImageDraw.Draw(image).text((8, 16), text, fill="black")
    return image


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
        draw.line(list(zip(xs.tolist(), ys.tolist())), fill="black", width=2)
        draw.ellipse([xs[0] - 4, ys[0] - 4, xs[0] + 4, ys[0] + 4], fill="green")
        draw.ellipse([xs[-1] - 4, ys[-1] - 4, xs[-1] + 4, ys[-1] + 4], fill="red")
        return image
    xs = torch.linspace(8, SIZE - 8, t.shape[1])
    colours = ["black", "red", "blue", "green", "orange", "purple"]
    for c in range(t.shape[0]):
        draw.line(list(zip(xs.tolist(), (SIZE - to_px(t[c])).tolist())), fill=colours[c % 6], width=1)
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
    values = np.round(t.float().numpy(), 3).tolist()
    return _text(str(values))


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
    width = max(p.width for _, p in parts)
    canvas = Image.new("RGB", (width, sum(p.height + 16 for _, p in parts)), "white")
    y = 0
    for key, part in parts:
        canvas.paste(_text(key).crop((0, 12, width, 28)), (0, y))
        canvas.paste(part, (0, y + 16))
        y += part.height + 16
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
