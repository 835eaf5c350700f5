"""The conditioner: map layout and ego route become channels beside the noisy agent raster."""

from __future__ import annotations

import torch
from torch import nn

from prefdiff.api import UserError
from prefdiff_driving import bev

CHANNELS_OUT = bev.LAYOUT_CHANNELS + 5
TRAFFIC_SCALE = 10.0
"""Densities are a few percent of the cells: scaled so the channel is of order 0.1 to 1."""
CONDITION_KEYS = {"layout", "route", "speed", "traffic"}


class LayoutRoute(nn.Module):
    """``{"layout" [B, 4, R, R], "route" [B, P, 2], "speed" [B, 1], "traffic" [B, 2]}`` -> ``[B, 9, R, R]``.

    The four layout channels (drivable area, dividers, walkways, given
    vehicles) pass through; the route is drawn as closeness to its polyline
    (a Gaussian of the distance, one cell wide), and the ego's speed over
    ``bev.SPEED_SCALE`` fills the next, so the model can place traffic that the
    ego will meet at that speed, and the asked vehicle and pedestrian densities
    (``bev.traffic``, times ``TRAFFIC_SCALE``) the last two, so how much
    traffic the scene holds is the user's to ask, not the model's to drop. The
    last channel is the ego's own footprint (``bev.ego_footprint``): every scene
    is in the ego's frame, so it is the same in all of them, but a convolution
    cannot otherwise tell where the ego stands except from the route's start,
    and the base put phantom vehicles on it (benchmarks/results/driving/NOTES.md).
    No parameters: the core's ``concat`` conditioning feeds these channels to the UNet.
    """

    def forward(self, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        if not isinstance(cond, dict) or not CONDITION_KEYS <= set(cond):
            got = sorted(cond) if isinstance(cond, dict) else type(cond).__name__
            raise UserError(f"conditioner 'layout_route' takes {sorted(CONDITION_KEYS)} conditions, got "
                            f"{got}; use the nuscenes_bev dataset")
        layout = cond["layout"]
        if layout.ndim != 4 or layout.shape[1] != bev.LAYOUT_CHANNELS:
            raise UserError(f"conditioner 'layout_route' takes layouts [B, {bev.LAYOUT_CHANNELS}, R, R], got "
                            f"{list(layout.shape)}")
        r = layout.shape[-1]
        route = bev.route_raster(cond["route"].to(layout), resolution=r)
        speed = (cond["speed"].to(layout).reshape(-1, 1, 1, 1) / bev.SPEED_SCALE).expand(-1, 1, r, r)
        traffic = cond["traffic"].to(layout).reshape(-1, 2, 1, 1) * TRAFFIC_SCALE
        ego = torch.as_tensor(bev.ego_footprint(r), dtype=layout.dtype, device=layout.device)
        return torch.cat([layout, route[:, None], speed, traffic.expand(-1, 2, r, r),
                          ego.expand(layout.shape[0], 1, r, r)], dim=1)
