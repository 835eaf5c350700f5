"""Rendered MuJoCo frames of an executed trajectory (skipped only where libEGL is missing)."""

import ctypes.util
import os

import numpy as np
import pytest
import torch
from PIL import Image

from prefdiff_robotics.frames import FRAME, film_strip_frames, render_film_strip
from prefdiff_robotics.scene import CHANNELS, DT, HORIZON, VMAX, Layout, encode_trajectory
from prefdiff_robotics.sim import Simulator

LAYOUT = Layout(np.array([-0.6, -0.6]), np.array([0.6, 0.6]), np.array([[0.0, 0.6, 0.15]]))


def straight_line() -> torch.Tensor:
    """A clean straight run from start to goal as a ``[4, H]`` trajectory."""
    positions = LAYOUT.start + np.linspace(0, 1, HORIZON)[:, None] * (LAYOUT.goal - LAYOUT.start)
    actions = np.zeros_like(positions)
    actions[:-1] = np.diff(positions, axis=0) / DT / VMAX
    return torch.from_numpy(encode_trajectory(positions, actions)).float()


def test_film_strip_shows_the_robot_moving(tmp_path):
    trajectory = straight_line()
    assert trajectory.shape == (CHANNELS, HORIZON)
    if os.environ.get("MUJOCO_GL", "egl") == "egl" and ctypes.util.find_library("EGL") is None:
        pytest.skip("the system library libEGL is missing (Debian: apt-get install libegl1); MuJoCo needs it "
                    "to render headless")
    frames = film_strip_frames(Simulator(), LAYOUT, trajectory.double().numpy(), moments=3)
    assert [f.shape for f in frames] == [(FRAME, FRAME, 3)] * 3
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).sum() > 0  # the robot moved
    cond = torch.from_numpy(LAYOUT.to_vector()).float()[None]
    why = render_film_strip({"a": trajectory[None], "b": trajectory[None]}, cond, tmp_path / "f.png", moments=3)
    assert why is None
    assert Image.open(tmp_path / "f.png").size[1] >= 2 * FRAME


def test_figures_show_distinct_layouts_not_repeated_draws():
    from prefdiff.data import repeat_condition
    from prefdiff_robotics.figures import distinct_conditions

    cond = torch.arange(12.0).view(3, 4)
    assert distinct_conditions(repeat_condition(cond, 4), 2) == [0, 4]
    assert distinct_conditions(cond, 5) == [0, 1, 2]
