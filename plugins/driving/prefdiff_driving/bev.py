"""The bird's-eye-view grid: its geometry and the rasters that live on it.

The grid is centred on the ego with the ego heading along +x (columns) and
+y to its left (rows), as the devkit's ``get_map_mask`` returns a patch rotated
by the ego's yaw. Cell ``(i, j)`` has its centre at
``x = (j + 0.5) * CELL - EXTENT / 2``, ``y = (i + 0.5) * CELL - EXTENT / 2``.

The generated sample (the agent raster) has four channels; a cell holds an agent where its
occupancy exceeds ``OCCUPIED``:

* ``VEHICLE``: 1 where a vehicle's box (grown by half a cell) covers the cell centre, else 0;
* ``PEDESTRIAN``: the same for pedestrians;
* ``VX``, ``VY``: the agent's velocity in the ego frame divided by ``SPEED_SCALE``, 0 where empty.

The condition's layout has four channels in [0, 1]: ``DRIVABLE`` (area
fraction), ``DIVIDER`` (road and lane dividers), ``WALKWAY`` (area fraction)
and ``GIVEN`` (vehicles fixed by the condition, for layout consistency). The
condition's ``traffic`` is how much traffic the scene should hold: the share
of cells holding a vehicle and a pedestrian (:func:`traffic`), read off the
real scene in the data and free for a user to set.
"""

from __future__ import annotations

import numpy as np
import torch

RESOLUTION = 32
EXTENT = 48.0
CELL = EXTENT / RESOLUTION
SPEED_SCALE = 10.0
ROUTE_POINTS = 16
ROUTE_SPACING = 2.0

VEHICLE, PEDESTRIAN, VX, VY = 0, 1, 2, 3
OCCUPIED = 0.5
"""Occupancy threshold. Empty cells are 0, not -1: the noise the sampler starts from has
mean 0, and a -1 background is a mean shift the model only sees through the noise schedule's
leaked signal (Lin et al. 2024), so samples from pure noise never reached it."""
AGENT_CHANNELS = 4
DRIVABLE, DIVIDER, WALKWAY, GIVEN = 0, 1, 2, 3
LAYOUT_CHANNELS = 4


def cell_centres(resolution: int = RESOLUTION, extent: float = EXTENT) -> np.ndarray:
    """``[R, R, 2]`` (x, y) of every cell centre in metres, ego frame."""
    c = (np.arange(resolution) + 0.5) * (extent / resolution) - extent / 2
    yy, xx = np.meshgrid(c, c, indexing="ij")
    return np.stack([xx, yy], axis=-1)


EGO_LENGTH, EGO_WIDTH = 4.5, 2.0
"""The ego's box in metres: the planner's ``ego_length``, and twice its ``ego_radius``."""


def ego_footprint(resolution: int = RESOLUTION, extent: float = EXTENT) -> np.ndarray:
    """``[R, R]`` float: 1 on the cells of the ego's own box, at the grid's centre heading along +x."""
    return box_cells((0.0, 0.0), 0.0, EGO_LENGTH, EGO_WIDTH, resolution, extent).astype(np.float32)


def box_cells(centre, yaw: float, length: float, width: float, resolution: int = RESOLUTION,
              extent: float = EXTENT) -> np.ndarray:
    """Boolean ``[R, R]``: cells whose centre lies in the box grown by half a cell on every side."""
    cell = extent / resolution
    d = cell_centres(resolution, extent) - np.asarray(centre, dtype=float)[:2]
    c, s = np.cos(yaw), np.sin(yaw)
    u = d[..., 0] * c + d[..., 1] * s
    v = -d[..., 0] * s + d[..., 1] * c
    return (np.abs(u) <= length / 2 + cell / 2) & (np.abs(v) <= width / 2 + cell / 2)


def agent_raster(boxes: list[dict], resolution: int = RESOLUTION, extent: float = EXTENT) -> np.ndarray:
    """The ``[4, R, R]`` target from boxes ``{"xy", "yaw", "size" (w, l, h), "velocity" (vx, vy), "kind"}``
    given in the ego frame; ``kind`` is ``"vehicle"`` or ``"pedestrian"``."""
    out = np.zeros((AGENT_CHANNELS, resolution, resolution), np.float32)
    for b in boxes:
        cells = box_cells(b["xy"], b["yaw"], b["size"][1], b["size"][0], resolution, extent)
        out[VEHICLE if b["kind"] == "vehicle" else PEDESTRIAN][cells] = 1.0
        v = np.nan_to_num(np.asarray(b["velocity"], dtype=float)[:2]) / SPEED_SCALE
        out[VX][cells], out[VY][cells] = np.clip(v, -1, 1)
    return out


def traffic(agents: torch.Tensor, sharpness: float | None = None) -> torch.Tensor:
    """``[B, 4, R, R]`` agent rasters -> ``[B, 2]``: share of cells holding a vehicle, a pedestrian.

    With ``sharpness`` the occupancy is a sigmoid of the raster instead of a
    threshold, so the density is differentiable (for reward backpropagation).
    """
    occ = agents[:, [VEHICLE, PEDESTRIAN]]
    occ = (occ > OCCUPIED).to(agents.dtype) if sharpness is None else torch.sigmoid(sharpness * (occ - OCCUPIED))
    return occ.mean((-2, -1))


def route_raster(route: torch.Tensor, resolution: int = RESOLUTION, extent: float = EXTENT,
                 width: float = CELL) -> torch.Tensor:
    """``[B, P, 2]`` route points (metres) -> ``[B, R, R]`` closeness to the route polyline in [0, 1]."""
    b, p, _ = route.shape
    cell = extent / resolution
    c = (torch.arange(resolution, dtype=route.dtype, device=route.device) + 0.5) * cell - extent / 2
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    q = torch.stack([xx, yy], -1).reshape(1, 1, -1, 2)                   # [1, 1, R*R, 2]
    a, e = route[:, :-1, None], route[:, 1:, None]                        # [B, P-1, 1, 2]
    ab = e - a
    t = (((q - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-9)).clamp(0, 1)
    d = (q - (a + t[..., None] * ab)).norm(dim=-1).amin(1)                # [B, R*R]
    return torch.exp(-(d / width) ** 2).reshape(b, resolution, resolution)


def ego_to_cell(xy: torch.Tensor, resolution: int = RESOLUTION, extent: float = EXTENT) -> torch.Tensor:
    """Integer ``(row, col)`` of ego-frame points ``[..., 2]``, clamped to the grid."""
    idx = torch.floor((xy + extent / 2) / (extent / resolution)).long().clamp(0, resolution - 1)
    return torch.stack([idx[..., 1], idx[..., 0]], -1)


def inside_grid(xy: torch.Tensor, extent: float = EXTENT) -> torch.Tensor:
    """Whether ego-frame points ``[..., 2]`` fall on the grid."""
    return (xy.abs() < extent / 2).all(-1)
