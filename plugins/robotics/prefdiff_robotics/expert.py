"""The scripted demonstrator behind `prefdiff robotics make-data`.

The expert plans with A* on an occupancy grid of the obstacles inflated by the
robot's radius and a margin, shortcuts the grid path to a few straight
segments, times it with a trapezoidal speed profile at a cruise speed that
varies per demonstration, and then drives the simulated robot along it with
the tracking controller. What is recorded is what the simulator did.

So that the data looks like teleoperation (mostly good, not all), some
demonstrations are perturbed (a wobbling hand: smoothed noise on the commands)
and a few fail (cutting straight through an obstacle, or stopping short).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from prefdiff_robotics.scene import (DT, HORIZON, JOINT_LIMIT, VMAX, Layout, random_layout)

GRID = 0.04
"""Cell size (m) of the planning grid."""
MARGIN = 0.06
"""Extra clearance (m) the expert keeps from obstacles."""
ACCEL = 3.0
"""Acceleration (m/s^2) of the speed profile."""
KINDS = ("expert", "perturbed", "failing")


def _free(layout: Layout, points: np.ndarray, margin: float = MARGIN) -> np.ndarray:
    inside = (np.abs(points) <= JOINT_LIMIT - 0.02).all(axis=-1)
    return inside & (layout.clearance(points.reshape(-1, 2)).reshape(points.shape[:-1]) > margin)


def astar(layout: Layout, margin: float = MARGIN) -> np.ndarray | None:
    """Shortest 8-connected grid path from start to goal, as ``[N, 2]`` points; None if blocked."""
    ticks = np.arange(-JOINT_LIMIT, JOINT_LIMIT + 1e-9, GRID)
    n = len(ticks)
    xx, yy = np.meshgrid(ticks, ticks, indexing="ij")
    free = _free(layout, np.stack([xx, yy], axis=-1), margin)
    cell = lambda p: tuple(np.clip(np.round((p + JOINT_LIMIT) / GRID).astype(int), 0, n - 1))  # noqa: E731
    start, goal = cell(layout.start), cell(layout.goal)
    free[start] = free[goal] = True
    moves = [(dx, dy, float(np.hypot(dx, dy))) for dx in (-1, 0, 1) for dy in (-1, 0, 1) if dx or dy]
    g = {start: 0.0}
    parent = {start: None}
    heap = [(0.0, start)]
    done = set()
    while heap:
        _, cur = heapq.heappop(heap)
        if cur == goal:
            break
        if cur in done:
            continue
        done.add(cur)
        for dx, dy, cost in moves:
            nxt = (cur[0] + dx, cur[1] + dy)
            if not (0 <= nxt[0] < n and 0 <= nxt[1] < n) or not free[nxt]:
                continue
            new = g[cur] + cost
            if new < g.get(nxt, np.inf):
                g[nxt], parent[nxt] = new, cur
                heapq.heappush(heap, (new + np.hypot(goal[0] - nxt[0], goal[1] - nxt[1]), nxt))
    if goal not in parent:
        return None
    cells, cur = [], goal
    while cur is not None:
        cells.append(cur)
        cur = parent[cur]
    points = ticks[np.array(cells[::-1])]
    points[0], points[-1] = layout.start, layout.goal
    return points


def shortcut(layout: Layout, points: np.ndarray, margin: float = MARGIN) -> np.ndarray:
    """Replace the grid path by straight segments: from each corner, jump to the farthest visible point."""
    out, i = [points[0]], 0
    while i < len(points) - 1:
        j = len(points) - 1
        while j > i + 1 and not _segment_free(layout, points[i], points[j], margin):
            j -= 1
        out.append(points[j])
        i = j
    return np.stack(out)


def _segment_free(layout: Layout, a: np.ndarray, b: np.ndarray, margin: float) -> bool:
    steps = max(2, int(np.linalg.norm(b - a) / 0.01))
    return bool(_free(layout, a + np.linspace(0, 1, steps)[:, None] * (b - a), margin * 0.8).all())


def time_path(polyline: np.ndarray, speed: float, horizon: int = HORIZON) -> np.ndarray | None:
    """Positions at each step along ``polyline`` with a trapezoidal speed profile; None if too long.

    The robot accelerates at ``ACCEL`` to ``speed``, cruises, brakes to a stop at
    the goal, and waits there for the rest of the horizon.
    """
    seg = np.linalg.norm(np.diff(polyline, axis=0), axis=1)
    length = float(seg.sum())
    ramp = speed / ACCEL
    if length < speed * ramp:  # too short to reach cruise speed: a triangular profile
        speed = np.sqrt(length * ACCEL)
        ramp = speed / ACCEL
    duration = length / speed + ramp
    if duration > (horizon - 2) * DT:
        return None
    t = np.arange(horizon) * DT
    s = np.where(t < ramp, 0.5 * ACCEL * t**2,
                 np.where(t < duration - ramp, speed * (t - ramp / 2),
                          length - 0.5 * ACCEL * np.clip(duration - t, 0, None) ** 2))
    s = np.clip(s, 0, length)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    return np.stack([np.interp(s, cum, polyline[:, d]) for d in range(2)], axis=1)


@dataclass
class Demo:
    """One recorded demonstration."""

    layout: Layout
    positions: np.ndarray
    """``[T, 2]`` observed positions (m)."""
    actions: np.ndarray
    """``[T, 2]`` commanded velocities over VMAX."""
    kind: str
    contacts: int


def plan_reference(layout: Layout, rng: np.random.Generator) -> np.ndarray | None:
    """The expert's timed reference path for ``layout``; None when there is no path in time."""
    grid_path = astar(layout)
    if grid_path is None:
        return None
    return time_path(shortcut(layout, grid_path), speed=rng.uniform(0.55, 0.8) * VMAX)


def demonstrate(sim, layout: Layout, kind: str, rng: np.random.Generator) -> Demo | None:
    """Record one demonstration of ``kind`` (expert, perturbed or failing); None if unplannable."""
    reference = plan_reference(layout, rng)
    if reference is None:
        return None
    noise = None
    if kind == "perturbed":
        # A wobbling hand: white noise smoothed over a few steps, 0.1-0.3 m/s.
        raw = rng.normal(0, 1, size=(HORIZON + 4, 2))
        noise = np.stack([np.convolve(raw[:, d], np.ones(5) / np.sqrt(5), "valid") for d in range(2)], 1)
        noise = noise[:HORIZON] * rng.uniform(0.1, 0.3) * VMAX
    elif kind == "failing":
        if rng.random() < 0.5:  # cut straight through, ignoring the obstacles
            reference = time_path(np.stack([layout.start, layout.goal]), speed=rng.uniform(0.55, 0.8) * VMAX)
        else:  # give up part of the way
            stop = int(rng.integers(HORIZON // 3, 2 * HORIZON // 3))
            reference = np.concatenate([reference[:stop], np.repeat(reference[stop - 1:stop], HORIZON - stop, 0)])
    elif kind != "expert":
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if reference is None:  # the straight cut, slower, may not fit the horizon
        return None
    positions, actions, contacts = sim.track(layout, reference, noise)
    return Demo(layout, positions, actions, kind, contacts)


def generate_demos(n: int, seed: int = 0, fractions=(0.75, 0.17, 0.08), sim=None):
    """Yield ``n`` demonstrations on fresh random layouts, kinds drawn with ``fractions``."""
    from prefdiff_robotics.sim import Simulator

    sim = sim or Simulator()
    rng = np.random.default_rng(seed)
    made = 0
    while made < n:
        layout = random_layout(rng)
        kind = KINDS[int(rng.choice(len(KINDS), p=np.asarray(fractions) / np.sum(fractions)))]
        demo = demonstrate(sim, layout, kind, rng)
        if demo is not None:
            made += 1
            yield demo
