"""The task's geometry without the simulator: constants, layouts, normalisation.

A layout is one episode of the task: the robot's start, its goal and two to
four cylinder obstacles in a 2 m x 2 m room. The model sees a layout as a flat
vector of ``COND_DIM`` numbers (start, goal, then ``x, y, radius, present``
per obstacle slot, all in units of the room's half-size), and a trajectory as
``[4, HORIZON]``: the position ``x, y`` over the room's half-size and the
commanded velocity ``vx, vy`` over the speed limit, so both lie in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROOM = 1.0
"""Half-size of the room in metres; positions are divided by it."""
ROBOT_RADIUS = 0.05
JOINT_LIMIT = ROOM - ROBOT_RADIUS
"""Range of the slide joints, as in assets/point_room.xml."""
VMAX = 1.0
"""Speed limit per axis in m/s (the actuators' ctrlrange); actions are divided by it."""
DT = 0.1
"""Seconds between two trajectory steps."""
SUBSTEPS = 10
"""MuJoCo steps (timestep 0.01 s) per trajectory step."""
HORIZON = 32
MAX_OBSTACLES = 4
GOAL_TOLERANCE = 0.1
"""A run reaches the goal when it ends within this distance (m)."""
STATE_DIM = 2
ACTION_DIM = 2
CHANNELS = STATE_DIM + ACTION_DIM
COND_DIM = 4 + 4 * MAX_OBSTACLES


@dataclass
class Layout:
    """One episode: start and goal in metres, obstacles as rows ``(x, y, radius)``."""

    start: np.ndarray
    goal: np.ndarray
    obstacles: np.ndarray

    def __post_init__(self) -> None:
        self.start = np.asarray(self.start, dtype=np.float64).reshape(2)
        self.goal = np.asarray(self.goal, dtype=np.float64).reshape(2)
        self.obstacles = np.asarray(self.obstacles, dtype=np.float64).reshape(-1, 3)
        if len(self.obstacles) > MAX_OBSTACLES:
            raise ValueError(f"a layout holds at most {MAX_OBSTACLES} obstacles, got {len(self.obstacles)}")

    def to_vector(self) -> np.ndarray:
        """The ``COND_DIM`` condition vector the model is given."""
        slots = np.zeros((MAX_OBSTACLES, 4))
        slots[:len(self.obstacles), :3] = self.obstacles / ROOM
        slots[:len(self.obstacles), 3] = 1.0
        return np.concatenate([self.start / ROOM, self.goal / ROOM, slots.ravel()]).astype(np.float32)

    @classmethod
    def from_vector(cls, vector) -> "Layout":
        """Inverse of :meth:`to_vector`; slots whose ``present`` is below 0.5 are empty."""
        v = np.asarray(vector, dtype=np.float64).reshape(COND_DIM) * ROOM
        slots = v[4:].reshape(MAX_OBSTACLES, 4)
        present = slots[:, 3] / ROOM > 0.5
        return cls(v[0:2], v[2:4], slots[present, :3])

    def clearance(self, points: np.ndarray) -> np.ndarray:
        """Distance from each point ``[N, 2]`` to the nearest obstacle surface, minus the robot radius."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        if len(self.obstacles) == 0:
            return np.full(len(points), np.inf)
        d = np.linalg.norm(points[:, None, :] - self.obstacles[None, :, :2], axis=-1)
        return (d - self.obstacles[None, :, 2] - ROBOT_RADIUS).min(axis=1)


def random_layout(rng: np.random.Generator, n_obstacles: int | None = None) -> Layout:
    """Draw a layout whose first obstacle blocks the straight line from start to goal.

    Start and goal are at least 1 m apart and keep clear of every obstacle;
    the planner may still find no path, and callers draw again then.
    """
    n = int(rng.integers(2, MAX_OBSTACLES + 1)) if n_obstacles is None else n_obstacles
    while True:
        start, goal = rng.uniform(-0.85, 0.85, size=(2, 2))
        if not 1.0 <= np.linalg.norm(goal - start) <= 1.7:
            continue
        along = start + rng.uniform(0.35, 0.65) * (goal - start)
        normal = np.array([start[1] - goal[1], goal[0] - start[0]]) / np.linalg.norm(goal - start)
        blocker = along + rng.uniform(-0.08, 0.08) * normal
        obstacles = [(*blocker, rng.uniform(0.12, 0.22))]
        for _ in range(n - 1):
            obstacles.append((*rng.uniform(-0.75, 0.75, size=2), rng.uniform(0.08, 0.18)))
        layout = Layout(start, goal, np.array(obstacles))
        if layout.clearance(np.stack([start, goal])).min() > 0.08:
            return layout


def encode_trajectory(positions: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """``[T, 2]`` positions (m) and ``[T, 2]`` actions (normalised) -> ``[4, T]`` model sample."""
    return np.concatenate([np.asarray(positions) / ROOM, np.asarray(actions)], axis=1).T.astype(np.float32)


def decode_trajectory(sample) -> tuple[np.ndarray, np.ndarray]:
    """``[4, T]`` model sample -> positions in metres ``[T, 2]`` and normalised actions ``[T, 2]``."""
    s = np.asarray(sample, dtype=np.float64)
    return s[:STATE_DIM].T * ROOM, s[STATE_DIM:CHANNELS].T
