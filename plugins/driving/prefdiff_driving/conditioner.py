"""The conditioner: map layout and ego route become channels beside the noisy agent raster."""

from __future__ import annotations

import torch
from torch import nn

from prefdiff.errors import UserError
from prefdiff_driving import bev

CHANNELS_OUT = bev.LAYOUT_CHANNELS + 2


class LayoutRoute(nn.Module):
    """``{"layout" [B, 4, R, R], "route" [B, P, 2], "speed" [B, 1]}`` -> ``[B, 6, R, R]``.

    The four layout channels (drivable area, dividers, walkways, given
    vehicles) pass through; the route is drawn as closeness to its polyline
    (a Gaussian of the distance, one cell wide), and the ego's speed over
    ``bev.SPEED_SCALE`` fills the last channel, so the model can place traffic
    that the ego will meet at that speed. No parameters: the core's ``concat``
    conditioning feeds these channels to the UNet.
    """

    def forward(self, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        if not isinstance(cond, dict) or not {"layout", "route", "speed"} <= set(cond):
            got = sorted(cond) if isinstance(cond, dict) else type(cond).__name__
            raise UserError(f"conditioner 'layout_route' takes {{'layout', 'route', 'speed'}} conditions, got "
                            f"{got}; use the nuscenes_bev dataset")
        layout = cond["layout"]
        if layout.ndim != 4 or layout.shape[1] != bev.LAYOUT_CHANNELS:
            raise UserError(f"conditioner 'layout_route' takes layouts [B, {bev.LAYOUT_CHANNELS}, R, R], got "
                            f"{list(layout.shape)}")
        r = layout.shape[-1]
        route = bev.route_raster(cond["route"].to(layout), resolution=r)
        speed = (cond["speed"].to(layout).reshape(-1, 1, 1, 1) / bev.SPEED_SCALE).expand(-1, 1, r, r)
        return torch.cat([layout, route[:, None], speed], dim=1)
