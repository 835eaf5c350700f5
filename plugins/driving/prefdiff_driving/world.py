"""A procedural town: a grid of two-lane roads, an ego drive through it, and traffic.

Pure geometry and kinematics in a global metric frame (x east, y north),
shared by :mod:`prefdiff_driving.synthetic`, which writes it as nuScenes
tables and a map expansion. The map is ``singapore-onenorth``, so traffic keeps
left as it does there: a vehicle's lane centre lies ``LANE_WIDTH / 2`` to the
left of the road's centre line in its direction of travel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

LANE_WIDTH = 3.5
ROAD_HALF = LANE_WIDTH          # two lanes, one per direction
WALK_INNER, WALK_OUTER = ROAD_HALF, ROAD_HALF + 3.0
BLOCK = 80.0                    # distance between parallel roads
ROADS = 5                       # roads per axis
ORIGIN = 60.0                   # coordinate of the first road
OVERHANG = 30.0                 # road length beyond the outer junctions
CANVAS = 2 * ORIGIN + (ROADS - 1) * BLOCK   # the map is CANVAS x CANVAS metres
KEYFRAME_DT = 0.5               # nuScenes keyframes are at 2 Hz
SIM_DT = 0.1
CAR_SIZE = (1.9, 4.5, 1.6)      # width, length, height as in sample_annotation.size
TRUCK_SIZE = (2.5, 7.0, 3.0)
PED_SIZE = (0.6, 0.7, 1.75)


def road_coordinate(k: int) -> float:
    """The x (vertical roads) or y (horizontal roads) of road ``k``."""
    return ORIGIN + k * BLOCK


def left_of(heading: np.ndarray) -> np.ndarray:
    """Unit normals to the left of unit headings ``[..., 2]``."""
    return np.stack([-heading[..., 1], heading[..., 0]], axis=-1)


@dataclass
class Track:
    """One agent's motion, sampled every ``SIM_DT`` seconds."""

    category: str
    size: tuple[float, float, float]
    xy: np.ndarray          # [T, 2]
    yaw: np.ndarray         # [T]


@dataclass
class Drive:
    """One scene: the ego's motion and the traffic around it."""

    ego: Track
    agents: list[Track] = field(default_factory=list)


# ------------------------------------------------------------ ego drive ----


def _lane_polyline(nodes: list[tuple[int, int]]) -> np.ndarray:
    """Lane-centre corner points of a walk over junctions (keep left)."""
    pts = np.array([[road_coordinate(i), road_coordinate(j)] for i, j in nodes], dtype=float)
    heads = np.diff(pts, axis=0)
    heads /= np.linalg.norm(heads, axis=1, keepdims=True)
    offset = left_of(heads) * (LANE_WIDTH / 2)
    corners = [pts[0] + offset[0]]
    for k in range(1, len(pts) - 1):
        if np.allclose(offset[k - 1], offset[k]):
            corners.append(pts[k] + offset[k])  # straight on: one lane line
        else:
            corners.append(pts[k] + offset[k - 1] + offset[k])  # a turn: the two lane lines cross here
    corners.append(pts[-1] + offset[-1])
    return np.array(corners)


def _fillet(corners: np.ndarray, radius: float = 7.0, step: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Densely sampled path through ``corners`` with each turn rounded by a quadratic Bezier.

    Returns the points and, per point, whether it lies on a turn.
    """
    out, on_turn = [corners[0]], [False]
    for k in range(1, len(corners)):
        a, c = out[-1], corners[k]
        if k == len(corners) - 1:
            end = c
        else:
            u1 = (c - corners[k - 1]) / np.linalg.norm(c - corners[k - 1])
            end = c - u1 * radius
        n = max(2, int(np.linalg.norm(end - a) / step))
        seg = a + (end - a) * np.linspace(0, 1, n)[1:, None]
        out.extend(seg)
        on_turn.extend([False] * len(seg))
        if k < len(corners) - 1:
            u1 = (c - corners[k - 1]) / np.linalg.norm(c - corners[k - 1])
            u2 = (corners[k + 1] - c) / np.linalg.norm(corners[k + 1] - c)
            if abs(float(u1 @ u2)) > 0.99:  # straight on through the junction
                continue
            t1, t2 = c - u1 * radius, c + u2 * radius
            s = np.linspace(0, 1, int(np.pi * radius / 2 / step))[1:, None]
            arc = (1 - s) ** 2 * t1 + 2 * (1 - s) * s * c + s ** 2 * t2
            out.extend(arc)
            on_turn.extend([True] * len(arc))
    return np.array(out), np.array(on_turn)


def _random_walk(rng: np.random.Generator, junctions: int) -> list[tuple[int, int]]:
    """Junctions visited by the ego: no U-turns, never off the grid."""
    node = (int(rng.integers(1, ROADS - 1)), int(rng.integers(1, ROADS - 1)))
    dirs = [(1, 0), (0, 1), (-1, 0), (0, -1)]
    d = dirs[int(rng.integers(4))]
    nodes = [(node[0] - d[0], node[1] - d[1]), node]
    for _ in range(junctions):
        options = [e for e in dirs if e != (-d[0], -d[1])
                   and 0 <= node[0] + e[0] < ROADS and 0 <= node[1] + e[1] < ROADS]
        # straight on twice as often as each turn
        weights = np.array([2.0 if e == d else 1.0 for e in options])
        d = options[int(rng.choice(len(options), p=weights / weights.sum()))]
        node = (node[0] + d[0], node[1] + d[1])
        nodes.append(node)
    return nodes


def ego_drive(rng: np.random.Generator, duration: float) -> Track:
    """The ego's drive: along lanes, slowing for turns, sampled every SIM_DT."""
    nodes = _random_walk(rng, junctions=6)
    path, on_turn = _fillet(_lane_polyline(nodes))
    seg = np.linalg.norm(np.diff(path, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    cruise = rng.uniform(5.0, 8.5)
    turn_speed = rng.uniform(3.0, 4.5)
    # speed limit along the path: the turn speed on turns, ramping back at 1.2 m/s^2 over distance
    limit = np.where(on_turn, turn_speed, cruise)
    turns = arc[on_turn]
    if len(turns):
        gap = np.abs(arc[:, None] - turns[None]).min(1)
        limit = np.minimum(limit, np.sqrt(turn_speed ** 2 + 2 * 1.2 * gap))
    start = rng.uniform(5.0, 30.0)
    n = int(round(duration / SIM_DT)) + 1
    s = np.empty(n)
    s[0] = start
    v = float(np.interp(start, arc, limit))
    for k in range(1, n):
        v = float(np.interp(s[k - 1], arc, limit))
        s[k] = s[k - 1] + v * SIM_DT
    s = np.minimum(s, arc[-1] - 1.0)
    xy = np.stack([np.interp(s, arc, path[:, 0]), np.interp(s, arc, path[:, 1])], axis=1)
    ahead = np.stack([np.interp(s + 0.5, arc, path[:, 0]), np.interp(s + 0.5, arc, path[:, 1])], axis=1)
    yaw = np.arctan2(ahead[:, 1] - xy[:, 1], ahead[:, 0] - xy[:, 0])
    return Track("ego", CAR_SIZE, xy, yaw)


# -------------------------------------------------------------- traffic ----


def _straight_track(category, size, start, heading, speed, n) -> Track:
    t = np.arange(n) * SIM_DT
    xy = start[None] + heading[None] * speed * t[:, None]
    return Track(category, size, xy, np.full(n, np.arctan2(heading[1], heading[0])))


def _footprint(track: Track, circles: int = 3) -> np.ndarray:
    """Centres ``[T, circles, 2]`` of discs covering the box along its length."""
    h = np.stack([np.cos(track.yaw), np.sin(track.yaw)], axis=1)
    along = np.linspace(-0.5, 0.5, circles) * (track.size[1] - track.size[0])
    return track.xy[:, None] + along[None, :, None] * h[:, None]


def _clear(track: Track, others: list[Track], prints: list[np.ndarray], margin: float) -> bool:
    """Whether ``track`` keeps ``margin`` metres from every one of ``others`` (discs ``prints``) throughout."""
    if not others:
        return True
    mine = _footprint(track)                                                   # [T, 3, 2]
    theirs = np.stack(prints)                                                  # [M, T, 3, 2]
    d = np.linalg.norm(mine[None, :, :, None] - theirs[:, :, None], axis=-1).min(axis=(1, 2, 3))
    need = np.array([(track.size[0] + o.size[0]) / 2 + margin for o in others])
    return bool((d > need).all())


def _near_ego_road(rng: np.random.Generator, ego: Track) -> tuple[bool, int, float]:
    """A road and a position along it near a random moment of the ego's drive.

    Mostly the road the ego is on then, sometimes the nearest crossing road.
    """
    x, y = ego.xy[int(rng.integers(len(ego.xy)))]
    ks = np.arange(ROADS)
    dv, dh = np.abs(road_coordinate(ks) - x), np.abs(road_coordinate(ks) - y)
    on_vertical = dv.min() < dh.min()
    vertical = on_vertical if rng.random() < 0.75 else not on_vertical
    if vertical:
        return True, int(dv.argmin()), float(y + rng.uniform(-35, 35))
    return False, int(dh.argmin()), float(x + rng.uniform(-35, 35))


def traffic(rng: np.random.Generator, ego: Track, vehicles: int, pedestrians: int) -> list[Track]:
    """Vehicles driving straight along lanes and pedestrians on walkways near the ego's drive.

    Candidates that would come close to the ego or to accepted vehicles are
    rejected, so every recorded drive is collision-free.
    """
    n = len(ego.xy)
    lo, hi = ego.xy.min(0) - 40, ego.xy.max(0) + 40
    accepted: list[Track] = []
    prints: list[np.ndarray] = []
    ego_print = _footprint(ego)
    for _ in range(vehicles * 6):
        if sum(a.category.startswith("vehicle") for a in accepted) >= vehicles:
            break
        vertical, k, along = _near_ego_road(rng, ego)
        sign = 1.0 if rng.random() < 0.5 else -1.0
        heading = np.array([0.0, sign]) if vertical else np.array([sign, 0.0])
        centre = np.array([road_coordinate(k), along]) if vertical else np.array([along, road_coordinate(k)])
        start = centre + left_of(heading) * (LANE_WIDTH / 2)
        if (start < lo).any() or (start > hi).any():
            continue
        truck = rng.random() < 0.12
        speed = 0.0 if rng.random() < 0.1 else rng.uniform(3.0, 9.0)
        track = _straight_track("vehicle.truck" if truck else "vehicle.car", TRUCK_SIZE if truck else CAR_SIZE,
                                start, heading, speed, n)
        if not _clear(track, [ego], [ego_print], margin=2.0):
            continue
        if _clear(track, accepted, prints, margin=0.5):
            accepted.append(track)
            prints.append(_footprint(track))
    for _ in range(pedestrians):
        vertical, k, along = _near_ego_road(rng, ego)
        side = 1.0 if rng.random() < 0.5 else -1.0
        heading = np.array([0.0, 1.0]) if vertical else np.array([1.0, 0.0])
        heading = heading * (1.0 if rng.random() < 0.5 else -1.0)
        offset = side * (WALK_INNER + WALK_OUTER) / 2
        start = (np.array([road_coordinate(k) + offset, along]) if vertical
                 else np.array([along, road_coordinate(k) + offset]))
        accepted.append(_straight_track("human.pedestrian.adult", PED_SIZE, start, heading,
                                        rng.uniform(0.8, 1.6), n))
    return accepted


def make_drive(rng: np.random.Generator, duration: float = 20.0, vehicles: int = 30,
               pedestrians: int = 20) -> Drive:
    """One scene's ego drive and traffic."""
    ego = ego_drive(rng, duration)
    return Drive(ego, traffic(rng, ego, vehicles, pedestrians))


# ------------------------------------------------------------ road map ----


def road_rectangles() -> list[tuple[float, float, float, float]]:
    """``(xmin, ymin, xmax, ymax)`` of every road, horizontal then vertical."""
    lo, hi = ORIGIN - OVERHANG, road_coordinate(ROADS - 1) + OVERHANG
    rects = [(lo, road_coordinate(k) - ROAD_HALF, hi, road_coordinate(k) + ROAD_HALF) for k in range(ROADS)]
    rects += [(road_coordinate(k) - ROAD_HALF, lo, road_coordinate(k) + ROAD_HALF, hi) for k in range(ROADS)]
    return rects


def road_pieces() -> list[dict]:
    """Road stretches between junctions (and the overhangs): their centre lines and axis."""
    stops = [ORIGIN - OVERHANG] + [road_coordinate(k) for k in range(ROADS)] + [road_coordinate(ROADS - 1) + OVERHANG]
    pieces = []
    for k in range(ROADS):
        c = road_coordinate(k)
        for a, b in zip(stops[:-1], stops[1:]):
            a2 = a + ROAD_HALF if a > stops[0] else a
            b2 = b - ROAD_HALF if b < stops[-1] else b
            pieces.append({"vertical": False, "c": c, "a": a2, "b": b2})
            pieces.append({"vertical": True, "c": c, "a": a2, "b": b2})
    return pieces
