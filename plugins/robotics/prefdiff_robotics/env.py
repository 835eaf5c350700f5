"""The task as a gymnasium environment, registered as ``prefdiff_robotics/PointRoom-v0`` on import.

``gym.make("prefdiff_robotics.env:prefdiff_robotics/PointRoom-v0")`` imports this
module (and so registers the environment) before making it.

Each episode draws a new layout (start, goal, two to four obstacles) from the
reset seed, or takes one from ``reset(options={"layout": Layout})``. The action
is the commanded velocity over the speed limit, held for one trajectory step
(0.1 s, ten MuJoCo steps); the observation is position, velocity, goal and
the obstacle slots. The reward is minus the distance to the goal per step, 10
on arrival (which ends the episode) and -1 per step spent touching an obstacle.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from prefdiff_robotics.scene import (GOAL_TOLERANCE, HORIZON, MAX_OBSTACLES, ROOM, VMAX, Layout,
                                     random_layout)

ENV_ID = "prefdiff_robotics/PointRoom-v0"


class PointRoomEnv(gym.Env):
    """A point robot among cylinders in a 2 m x 2 m room, simulated in MuJoCo.

    :param mjcf: scene file; default the plugin's assets/point_room.xml.
    :param render_mode: None or "rgb_array" (top-down frames; needs ``MUJOCO_GL=egl`` headless).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, mjcf: str | None = None, render_mode: str | None = None) -> None:
        from prefdiff_robotics.sim import Simulator

        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.sim = Simulator(mjcf)
        self.render_mode = render_mode
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        size = 2 + 2 + 2 + 4 * MAX_OBSTACLES
        # Positions and radii lie within the room, speeds within a few times the limit.
        self.observation_space = spaces.Box(-10.0, 10.0, shape=(size,), dtype=np.float32)
        self.layout: Layout | None = None

    def _obs(self) -> np.ndarray:
        slots = self.layout.to_vector()[4:] * ROOM
        obs = np.concatenate([self.sim.position, self.sim.velocity, self.layout.goal, slots])
        return np.clip(obs, -10.0, 10.0).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        layout = (options or {}).get("layout")
        self.layout = layout if layout is not None else random_layout(self.np_random)
        self.sim.set_layout(self.layout)
        self.sim.reset(self.layout.start)
        return self._obs(), {"layout": self.layout}

    def step(self, action):
        if self.layout is None:
            raise RuntimeError("call reset() before step()")
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        contacts = self.sim.step(action * VMAX)
        distance = float(np.linalg.norm(self.sim.position - self.layout.goal))
        arrived = distance < GOAL_TOLERANCE
        reward = -distance - (1.0 if contacts else 0.0) + (10.0 if arrived else 0.0)
        info = {"distance": distance, "collision": contacts > 0, "is_success": arrived and contacts == 0}
        return self._obs(), float(reward), arrived, False, info

    def render(self):
        if self.render_mode == "rgb_array":
            return self.sim.render()
        return None


def register() -> None:
    """Register the environment with gymnasium once (a second call is a no-op)."""
    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point=PointRoomEnv, max_episode_steps=2 * HORIZON)


register()  # importing this module is asking for the environment
