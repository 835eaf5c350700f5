"""The simulator: layouts placed without recompiling, malformed scenes rejected."""

import numpy as np
import pytest

from prefdiff.errors import UserError
from prefdiff_robotics.scene import Layout
from prefdiff_robotics.sim import DEFAULT_MJCF, Simulator, import_mujoco

# MuJoCo picks its OpenGL backend on first import: import it the way the plugin does (EGL).
mujoco = import_mujoco()


def test_resized_obstacles_match_a_compiled_model():
    layout = Layout(start=[-0.6, 0], goal=[0.6, 0], obstacles=[[0.1, 0.2, 0.23], [-0.3, -0.4, 0.09]])
    sim = Simulator()
    sim.set_layout(layout)
    xml = DEFAULT_MJCF.read_text()
    for i, (x, y, r) in enumerate(layout.obstacles):
        xml = xml.replace(f'<body name="obstacle{i}" mocap="true" pos="3 {i} 0.1"><geom name="obstacle{i}" class="obstacle"/>',
                          f'<body name="obstacle{i}" mocap="true" pos="{x} {y} 0.1"><geom name="obstacle{i}" class="obstacle" size="{r} 0.1"/>')
    compiled = mujoco.MjModel.from_xml_string(xml)
    for name in ("geom_size", "geom_rbound", "geom_aabb", "bvh_aabb"):
        np.testing.assert_allclose(getattr(sim.model, name), getattr(compiled, name), atol=1e-9, err_msg=name)


def test_contact_with_a_resized_obstacle_is_detected():
    sim = Simulator()
    sim.set_layout(Layout(start=[0, 0], goal=[0.5, 0.5], obstacles=[[-0.5, 0.5, 0.3], [0.8, 0.8, 0.1]]))
    sim.reset([-0.5, 0.18])  # 0.32 from the centre: inside radius 0.3 + robot 0.05
    assert sim.in_contact()
    sim.reset([-0.5, 0.1])
    assert not sim.in_contact()


def test_malformed_mjcf_is_a_clear_error(tmp_path):
    bad = tmp_path / "scene.xml"
    bad.write_text("<mujoco><worldbody><geom type='cylindr'/></worldbody>")
    with pytest.raises(UserError, match=r"scene.xml is not valid MJCF"):
        Simulator(bad)


def test_mjcf_without_the_robot_is_a_clear_error(tmp_path):
    other = tmp_path / "other.xml"
    other.write_text("<mujoco><worldbody><geom type='sphere' size='0.1'/></worldbody></mujoco>")
    with pytest.raises(UserError, match=r"other.xml lacks 'robot_x'"):
        Simulator(other)
    with pytest.raises(UserError, match="does not exist"):
        Simulator(tmp_path / "missing.xml")
