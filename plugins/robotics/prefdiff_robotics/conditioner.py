"""The conditioner: a layout vector becomes per-time-step channels for the temporal UNet."""

from __future__ import annotations

import torch
from torch import nn

from prefdiff.errors import UserError
from prefdiff_robotics.scene import COND_DIM, HORIZON

CHANNELS_OUT = COND_DIM + 2


class LayoutTimeline(nn.Module):
    """``[B, 20]`` layouts -> ``[B, 22, H]``: the straight line from start to goal, then the layout.

    The line gives every time step a first guess of where the robot should be, so
    the network learns the detour around the obstacles rather than the whole
    path; it is also what keeps start and goal in place when sampling without
    inpainting. The layout itself is repeated at every step, as the core's
    ``concat`` conditioning does for a vector. No parameters.

    :param horizon: trajectory length H.
    """

    def __init__(self, horizon: int = HORIZON) -> None:
        super().__init__()
        self.horizon = horizon

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        if cond.ndim != 2 or cond.shape[1] != COND_DIM:
            raise UserError(f"conditioner 'layout_timeline' takes layouts of shape [B, {COND_DIM}], "
                            f"got {list(cond.shape)}; use the robot_demos dataset")
        tau = torch.linspace(0, 1, self.horizon, device=cond.device, dtype=cond.dtype)
        start, goal = cond[:, 0:2, None], cond[:, 2:4, None]
        line = start + (goal - start) * tau
        return torch.cat([line, cond[:, :, None].expand(-1, -1, self.horizon)], dim=1)
