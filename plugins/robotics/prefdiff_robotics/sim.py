"""The MuJoCo side: load the scene, place a layout, execute a trajectory.

One :class:`Simulator` owns one ``MjModel``/``MjData`` pair; make one per
worker. A layout is placed without recompiling: obstacles are mocap bodies,
moved through ``data.mocap_pos`` and resized by writing the geom size together
with the bounding volumes the compiler would have derived from it (tests check
them against a freshly compiled model).

A trajectory is executed the way a tracking controller runs a plan: from the
layout's start, each step commands the planned velocity plus a proportional
correction towards the planned position, clipped to the actuators' range,
for ``SUBSTEPS`` physics steps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prefdiff.api import UserError
from prefdiff_robotics.scene import (DT, JOINT_LIMIT, MAX_OBSTACLES, SUBSTEPS, VMAX, Layout)

DEFAULT_MJCF = Path(__file__).parent / "assets" / "point_room.xml"
KP = 5.0
"""Gain (1/s) of the tracking controller's position correction."""
PARKED = np.array([3.0, 0.0, 0.1])
"""Where unused obstacle slots wait, outside the room."""
HEIGHT = 0.1
"""Half-height of the obstacle cylinders."""


def import_mujoco():
    """The ``mujoco`` module, imported with headless rendering (EGL) unless ``MUJOCO_GL`` says otherwise.

    MuJoCo picks its OpenGL backend when it is first imported, so the variable is
    set here, where the first simulator is built, not when the plugin is loaded.
    """
    os.environ.setdefault("MUJOCO_GL", "egl")
    import mujoco

    return mujoco


def load_mjcf(path: str | Path | None = None):
    """Compile the scene and check it has what the task drives; a clear error otherwise."""
    mujoco = import_mujoco()

    path = Path(path) if path is not None else DEFAULT_MJCF
    if not path.is_file():
        raise UserError(f"MJCF file {path} does not exist; pass the plugin's {DEFAULT_MJCF.name} or a copy of it")
    try:
        model = mujoco.MjModel.from_xml_path(str(path))
    except ValueError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} is not valid MJCF ({first}); fix the XML or start from "
                        f"{DEFAULT_MJCF}") from None
    required = [(mujoco.mjtObj.mjOBJ_JOINT, "robot_x"), (mujoco.mjtObj.mjOBJ_JOINT, "robot_y"),
                (mujoco.mjtObj.mjOBJ_GEOM, "robot")]
    required += [(mujoco.mjtObj.mjOBJ_GEOM, f"obstacle{i}") for i in range(MAX_OBSTACLES)]
    missing = [name for kind, name in required if mujoco.mj_name2id(model, kind, name) < 0]
    if missing:
        raise UserError(f"{path} lacks {', '.join(repr(m) for m in missing)}; the task needs slide joints "
                        f"robot_x/robot_y, a geom 'robot' and mocap obstacle geoms obstacle0..{MAX_OBSTACLES - 1} "
                        f"as in {DEFAULT_MJCF}")
    if model.nu != 2 or model.nq != 2:
        raise UserError(f"{path} has {model.nq} joints and {model.nu} actuators; the task needs exactly two "
                        f"of each (velocity servos on robot_x and robot_y)")
    for i in range(MAX_OBSTACLES):
        body = model.geom_bodyid[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, f"obstacle{i}")]
        if model.body_mocapid[body] < 0:
            raise UserError(f"{path}: geom 'obstacle{i}' must sit in a body with mocap=\"true\"")
    return model


@dataclass
class Execution:
    """What happened when a trajectory ran in the simulator."""

    path: np.ndarray
    """``[T, 2]`` simulated positions, the start first."""
    contact_substeps: int
    """Physics steps with the robot touching an obstacle."""
    limit_steps: int
    """Trajectory steps that ended against a joint limit (the room's wall)."""
    substeps: int
    final_distance: float

    @property
    def collided(self) -> bool:
        return self.contact_substeps > 0


class Simulator:
    """One MuJoCo model and data for executing trajectories and stepping the environment.

    :param mjcf: path of the scene; default the plugin's ``assets/point_room.xml``.
    """

    def __init__(self, mjcf: str | Path | None = None) -> None:
        mujoco = import_mujoco()
        self._mj = mujoco
        self.model = load_mjcf(mjcf)
        self.data = mujoco.MjData(self.model)
        obj = mujoco.mjtObj
        self.robot_geom = mujoco.mj_name2id(self.model, obj.mjOBJ_GEOM, "robot")
        self.obstacle_geoms = [mujoco.mj_name2id(self.model, obj.mjOBJ_GEOM, f"obstacle{i}")
                               for i in range(MAX_OBSTACLES)]
        self.mocap = [self.model.body_mocapid[self.model.geom_bodyid[g]] for g in self.obstacle_geoms]
        self.parked_radius = [float(self.model.geom_size[g, 0]) for g in self.obstacle_geoms]
        goal = mujoco.mj_name2id(self.model, obj.mjOBJ_SITE, "goal")
        self.goal_site = goal if goal >= 0 else None
        self.layout: Layout | None = None

    # -- layout -------------------------------------------------------------

    def set_layout(self, layout: Layout) -> None:
        """Place the layout's obstacles (and the goal marker); park the unused slots."""
        m = self.model
        for slot, geom in enumerate(self.obstacle_geoms):
            body = m.geom_bodyid[geom]
            if slot < len(layout.obstacles):
                x, y, r = layout.obstacles[slot]
                self.data.mocap_pos[self.mocap[slot]] = (x, y, HEIGHT)
                m.geom_rgba[geom, 3] = 1.0
            else:
                r = self.parked_radius[slot]
                self.data.mocap_pos[self.mocap[slot]] = PARKED + (0, slot, 0)
                m.geom_rgba[geom, 3] = 0.0
            # What the compiler derives from a cylinder's size: bounding sphere and boxes.
            m.geom_size[geom] = (r, HEIGHT, 0.0)
            m.geom_rbound[geom] = float(np.hypot(r, HEIGHT))
            m.geom_aabb[geom] = (0.0, 0.0, 0.0, r, r, HEIGHT)
            if m.body_bvhnum[body] == 1:
                m.bvh_aabb[m.body_bvhadr[body]] = (0.0, 0.0, 0.0, r, r, HEIGHT)
        if self.goal_site is not None:
            m.site_pos[self.goal_site, :2] = layout.goal
        self.layout = layout

    def reset(self, position) -> None:
        """Put the robot at rest at ``position`` (m)."""
        self._mj.mj_resetData(self.model, self.data)
        if self.layout is not None:  # mj_resetData restores the mocap bodies to the model's
            self.set_layout(self.layout)
        self.data.qpos[:] = position
        self._mj.mj_forward(self.model, self.data)

    # -- stepping -----------------------------------------------------------

    @property
    def position(self) -> np.ndarray:
        return self.data.qpos[:2].copy()

    @property
    def velocity(self) -> np.ndarray:
        return self.data.qvel[:2].copy()

    def in_contact(self) -> bool:
        """Whether the robot touches an obstacle now."""
        n = self.data.ncon
        if n == 0:
            return False
        pairs = self.data.contact.geom[:n]
        robot = (pairs == self.robot_geom).any(axis=1)
        other = np.where(pairs[:, 0] == self.robot_geom, pairs[:, 1], pairs[:, 0])
        return bool((robot & np.isin(other, self.obstacle_geoms)).any())

    def step(self, velocity) -> int:
        """Command ``velocity`` (m/s, clipped to the limits) for one trajectory step.

        Returns the number of physics steps spent in contact with an obstacle.
        """
        self.data.ctrl[:] = np.clip(velocity, -VMAX, VMAX)
        contacts = 0
        for _ in range(SUBSTEPS):
            self._mj.mj_step(self.model, self.data)
            contacts += self.in_contact()
        return contacts

    def at_limit(self) -> bool:
        return bool((np.abs(self.data.qpos[:2]) >= JOINT_LIMIT - 1e-3).any())

    def execute(self, layout: Layout, positions: np.ndarray, actions: np.ndarray, kp: float = KP) -> Execution:
        """Run a planned trajectory from the layout's start with the tracking controller.

        :param positions: ``[T, 2]`` planned positions (m).
        :param actions: ``[T, 2]`` planned velocities over ``VMAX``; the last one is not executed.
        """
        self.set_layout(layout)
        self.reset(layout.start)
        path, contacts, limits = [self.position], 0, 0
        for k in range(len(positions) - 1):
            command = actions[k] * VMAX + kp * (positions[k] - self.data.qpos[:2])
            contacts += self.step(command)
            limits += self.at_limit()
            path.append(self.position)
        path = np.stack(path)
        return Execution(path, contacts, limits, (len(positions) - 1) * SUBSTEPS,
                         float(np.linalg.norm(path[-1] - layout.goal)))

    def track(self, layout: Layout, reference: np.ndarray, noise: np.ndarray | None = None,
              kp: float = KP) -> tuple[np.ndarray, np.ndarray, int]:
        """Follow a reference path ``[T, 2]`` (m) as a demonstrator does; record what happened.

        The command at step k is the reference's velocity plus the correction towards
        ``reference[k]``, plus ``noise[k]`` (m/s) when given. Returns the observed
        positions ``[T, 2]``, the normalised actions ``[T, 2]`` (the last is 0: stop)
        and the physics steps in contact.
        """
        self.set_layout(layout)
        self.reset(reference[0])
        observed, actions, contacts = [], [], 0
        for k in range(len(reference)):
            observed.append(self.position)
            if k == len(reference) - 1:
                actions.append(np.zeros(2))
                break
            command = (reference[k + 1] - reference[k]) / DT + kp * (reference[k] - self.data.qpos[:2])
            if noise is not None:
                command = command + noise[k]
            command = np.clip(command, -VMAX, VMAX)
            actions.append(command / VMAX)
            contacts += self.step(command)
        return np.stack(observed), np.stack(actions), contacts

    def render(self, width: int = 240, height: int = 240) -> np.ndarray:
        """A top-down RGB frame (needs an OpenGL backend, e.g. ``MUJOCO_GL=egl``)."""
        renderer = self._mj.Renderer(self.model, height, width)
        try:
            renderer.update_scene(self.data, camera="top")
            return renderer.render().copy()
        finally:
            renderer.close()

    def render_along(self, path: np.ndarray, moments: list[int], size: int = 160) -> list[np.ndarray]:
        """Top-down frames with the robot placed at ``path[k]`` for each ``k`` in ``moments``,
        the path travelled so far drawn as a trail of small spheres."""
        renderer = self._mj.Renderer(self.model, size, size)
        frames = []
        try:
            for k in moments:
                self.data.qpos[:2] = path[k]
                self.data.qvel[:] = 0.0
                self._mj.mj_forward(self.model, self.data)
                renderer.update_scene(self.data, camera="top")
                self._draw_trail(renderer.scene, path[:k + 1])
                frames.append(renderer.render().copy())
        finally:
            renderer.close()
        return frames

    def _draw_trail(self, scene, path: np.ndarray) -> None:
        """Small spheres where the robot has been, added to the scene after update_scene."""
        mujoco = self._mj
        for x, y in path:
            if scene.ngeom >= scene.maxgeom:
                return
            mujoco.mjv_initGeom(scene.geoms[scene.ngeom], type=mujoco.mjtGeom.mjGEOM_SPHERE,
                                size=np.array([0.015, 0.0, 0.0]), pos=np.array([x, y, 0.1]),
                                mat=np.eye(3).ravel(), rgba=np.array([0.15, 0.35, 0.8, 0.5], dtype=np.float32))
            scene.ngeom += 1
