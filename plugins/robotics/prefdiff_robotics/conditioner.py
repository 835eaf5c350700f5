"""The conditioner: a layout vector becomes per-time-step channels for the temporal UNet."""

from __future__ import annotations

import torch
from torch import nn

from prefdiff.api import UserError
from prefdiff_robotics.scene import CHANNELS, COND_DIM, HORIZON, MAX_OBSTACLES, ROBOT_RADIUS, ROOM

CHANNELS_OUT = 2 + 3 * MAX_OBSTACLES + COND_DIM
FAR = 2.0
"""Clearance given to an empty obstacle slot (more than the room's width)."""


class LayoutTimeline(nn.Module):
    """``[B, 20]`` layouts -> ``[B, 34, H]`` channels over the horizon.

    Per time step: the point of the straight line from start to goal at that
    step (2); for each obstacle slot, the offset from the obstacle's centre to
    that point and the point's clearance from the obstacle's surface (3 x 4;
    empty slots get zero offset and a clearance of ``FAR``); then the layout
    itself, repeated as the core's ``concat`` conditioning does for a vector.

    The line is a first guess at where the robot should be at each step, and
    the offsets say which way is out of an obstacle the guess runs into, so
    the temporal convolutions learn the detour locally instead of decoding
    coordinates from constants. It also keeps start and goal in place when
    sampling without inpainting. No parameters.

    :param horizon: trajectory length H.
    :param pin_endpoints: every sample keeps the first position at the start and the last at
        the goal (:meth:`pinned`; the sampler inpaints them, as Janner et al. 2022's Diffuser
        conditions on start and goal), instead of reaching them only through the channels.
    """

    def __init__(self, horizon: int = HORIZON, pin_endpoints: bool = False) -> None:
        super().__init__()
        self.horizon = horizon
        self.pin_endpoints = pin_endpoints

    def pinned(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(values, keep_mask)`` of shape ``[B, 4, H]``: the start and goal positions, where
        :attr:`pin_endpoints` is set; else None (see :meth:`prefdiff.models.Denoiser.pinned`)."""
        if not self.pin_endpoints:
            return None
        self._check(cond)
        values = cond.new_zeros(cond.shape[0], CHANNELS, self.horizon)
        mask = torch.zeros_like(values)
        values[:, 0:2, 0], values[:, 0:2, -1] = cond[:, 0:2], cond[:, 2:4]
        mask[:, 0:2, 0] = mask[:, 0:2, -1] = 1.0
        return values, mask

    def _check(self, cond: torch.Tensor) -> None:
        if cond.ndim != 2 or cond.shape[1] != COND_DIM:
            raise UserError(f"conditioner 'layout_timeline' takes layouts of shape [B, {COND_DIM}], "
                            f"got {list(cond.shape)}; use the robot_demos dataset")

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        self._check(cond)
        tau = torch.linspace(0, 1, self.horizon, device=cond.device, dtype=cond.dtype)
        start, goal = cond[:, 0:2, None], cond[:, 2:4, None]
        line = start + (goal - start) * tau                                   # [B, 2, H]
        slots = cond[:, 4:].view(-1, MAX_OBSTACLES, 4)
        present = (slots[..., 3:4] > 0.5).to(cond.dtype)                       # [B, K, 1]
        offset = (line[:, None] - slots[..., :2, None]) * present[..., None]    # [B, K, 2, H]
        clearance = offset.norm(dim=2) - slots[..., 2:3] - ROBOT_RADIUS / ROOM  # [B, K, H]
        clearance = present * clearance + (1 - present) * FAR
        return torch.cat([line, offset.flatten(1, 2), clearance,
                          cond[:, :, None].expand(-1, -1, self.horizon)], dim=1)
