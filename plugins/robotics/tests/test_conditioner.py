"""The layout_timeline conditioner."""

import pytest
import torch

from prefdiff.errors import UserError
from prefdiff.plugins import get_manager
from prefdiff_robotics.conditioner import CHANNELS_OUT, FAR
from prefdiff_robotics.scene import Layout


def test_channels_hold_the_line_and_the_clearances():
    layout = Layout(start=[-0.8, 0.0], goal=[0.8, 0.0], obstacles=[[0.0, 0.1, 0.2], [0.5, 0.5, 0.1]])
    cond = torch.from_numpy(layout.to_vector())[None]
    out = get_manager().conditioner("layout_timeline", horizon=9)(cond)
    assert out.shape == (1, CHANNELS_OUT, 9)
    torch.testing.assert_close(out[0, 0:2, 0], cond[0, 0:2])   # the line starts at the start
    torch.testing.assert_close(out[0, 0:2, -1], cond[0, 2:4])  # and ends at the goal
    offsets, clearance = out[0, 2:10].view(4, 2, 9), out[0, 10:14]
    torch.testing.assert_close(offsets[0, :, 4], torch.tensor([0.0, -0.1]))  # midpoint minus the first centre
    assert clearance[0, 4] < 0 < clearance[0, 0]  # the line runs into the first obstacle
    assert (clearance[2:] == FAR).all() and (offsets[2:] == 0).all()  # empty slots
    torch.testing.assert_close(out[0, 14:, 3], cond[0])  # the layout, at every step


def test_wrong_condition_shape_is_a_clear_error():
    with pytest.raises(UserError, match=r"layouts of shape \[B, 20\]"):
        get_manager().conditioner("layout_timeline")(torch.zeros(2, 7))
