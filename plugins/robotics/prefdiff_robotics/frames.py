"""Rendered MuJoCo frames of executed trajectories: the benchmark's "before and after" film strip.

Each row is one model (base, then each aligned one), each block one held-out
layout, and each block shows the robot at a few moments of its simulated run,
rendered by MuJoCo from the scene's top camera. Rendering needs an OpenGL
backend; headless that is EGL, which the package selects by default
(``MUJOCO_GL=egl``, set when the first simulator is built) unless the variable is already set. Where no backend
works, :func:`render_film_strip` returns the reason and writes nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from prefdiff_robotics.scene import Layout, decode_trajectory

FRAME = 160
"""Side of one rendered frame in pixels."""


def film_strip_frames(sim, layout: Layout, trajectory: np.ndarray, moments: int = 4) -> list[np.ndarray]:
    """Execute ``trajectory`` ``[4, H]`` in ``sim`` and render the robot at ``moments`` evenly spaced steps."""
    positions, actions = decode_trajectory(trajectory)
    run = sim.execute(layout, positions, actions)
    picks = np.linspace(0, len(run.path) - 1, moments).round().astype(int)
    return sim.render_along(run.path, picks.tolist(), FRAME)


def render_film_strip(rows: dict[str, torch.Tensor], cond: torch.Tensor, png_path: Path, *,
                      layouts: int = 3, moments: int = 4) -> str | None:
    """One row of rendered frames per model for the first ``layouts`` conditions.

    Returns None when the PNG was written, else why rendering is unavailable.
    """
    from PIL import Image, ImageDraw

    from prefdiff_robotics.figures import distinct_conditions
    from prefdiff_robotics.sim import Simulator

    sim = Simulator()
    index = distinct_conditions(cond, layouts)
    picked = [Layout.from_vector(cond[i].cpu().numpy()) for i in index]
    label_w, gap = 70, 8
    block = moments * FRAME + gap
    sheet = Image.new("RGB", (label_w + len(picked) * block, len(rows) * (FRAME + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (name, samples) in enumerate(rows.items()):
        y = r * (FRAME + gap)
        draw.text((4, y + FRAME // 2), name, fill="black")
        for i, (row, layout) in enumerate(zip(index, picked)):
            trajectory = samples[row].detach().cpu().double().numpy()
            if not np.isfinite(trajectory).all():
                continue
            try:
                frames = film_strip_frames(sim, layout, trajectory, moments)
            except Exception as exc:  # no OpenGL backend: say why, write nothing
                return f"{type(exc).__name__}: {exc}".splitlines()[0]
            for m, frame in enumerate(frames):
                sheet.paste(Image.fromarray(frame), (label_w + i * block + m * FRAME, y))
    png_path = Path(png_path)
    sheet.save(png_path)
    return None
