"""The layout_route conditioner: the layout, route, speed and traffic channels, and the ego's footprint."""

import numpy as np
import torch

from prefdiff_driving import bev
from prefdiff_driving.conditioner import CHANNELS_OUT, LayoutRoute


def test_the_last_channel_is_the_egos_box_at_the_grid_centre_in_every_scene(test_split):
    cond = test_split.conditions()
    out = LayoutRoute()({k: v[:3] for k, v in cond.items()})
    assert out.shape == (3, CHANNELS_OUT, bev.RESOLUTION, bev.RESOLUTION)
    ego = out[:, -1]
    assert torch.equal(ego[0], ego[1]) and torch.equal(ego[0], ego[2])
    rows, cols = np.nonzero(ego[0].numpy())
    cell = bev.EXTENT / bev.RESOLUTION
    centres = bev.cell_centres()[rows, cols]
    # the box, heading along +x: longer than wide, centred on the ego, within half a cell of its size
    assert np.allclose(centres.mean(0), 0.0)
    assert np.abs(centres[:, 0]).max() <= bev.EGO_LENGTH / 2 + cell / 2
    assert np.abs(centres[:, 1]).max() <= bev.EGO_WIDTH / 2 + cell / 2
    assert np.ptp(centres[:, 0]) > np.ptp(centres[:, 1])
    # the channels before it are unchanged: the layout passes through first
    torch.testing.assert_close(out[:, :bev.LAYOUT_CHANNELS], cond["layout"][:3].to(out))
