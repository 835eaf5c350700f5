"""The gymnasium environment through the standard API."""

import os

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from prefdiff_robotics.env import ENV_ID, PointRoomEnv  # importing it registers the environment
from prefdiff_robotics.scene import Layout


def test_loading_the_plugin_has_no_side_effects():
    import subprocess
    import sys

    code = ("import os, gymnasium as gym, prefdiff_robotics; from prefdiff.plugins import get_manager; "
            "get_manager().plugins(); "
            "print('MUJOCO_GL' in os.environ, 'prefdiff_robotics/PointRoom-v0' in gym.registry)")
    env = {k: v for k, v in os.environ.items() if k != "MUJOCO_GL"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_make_by_module_path_registers_the_env():
    env = gym.make("prefdiff_robotics.env:prefdiff_robotics/PointRoom-v0")
    assert isinstance(env.unwrapped, PointRoomEnv)
    env.close()


def test_registered_env_passes_gymnasium_checker():
    env = gym.make(ENV_ID)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_reset_and_step_follow_the_api():
    env = gym.make(ENV_ID)
    obs, info = env.reset(seed=7)
    assert env.observation_space.contains(obs) and isinstance(info["layout"], Layout)
    again, _ = env.reset(seed=7)
    np.testing.assert_array_equal(obs, again)  # the seed fixes the layout
    other, _ = env.reset(seed=8)
    assert not np.array_equal(obs, other)  # layouts vary per episode
    steps, truncated = 0, False
    while not truncated:
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs) and isinstance(reward, float)
        assert {"distance", "collision", "is_success"} <= set(info)
        steps += 1
        assert not terminated or info["distance"] < 0.1
        if terminated:
            break
    assert steps <= 64  # registered with max_episode_steps=64
    env.close()


def test_driving_to_the_goal_terminates_with_success():
    layout = Layout(start=[-0.5, 0.0], goal=[0.5, 0.0], obstacles=[[0.0, 0.8, 0.1], [0.0, -0.8, 0.1]])
    env = PointRoomEnv()
    obs, _ = env.reset(seed=0, options={"layout": layout})
    np.testing.assert_allclose(obs[:2], [-0.5, 0.0])
    for _ in range(30):
        direction = layout.goal - obs[:2]
        obs, reward, terminated, _, info = env.step(np.clip(direction * 3, -1, 1))
        if terminated:
            break
    assert terminated and info["is_success"] and reward > 5


def test_driving_into_an_obstacle_reports_collision():
    layout = Layout(start=[-0.5, 0.0], goal=[0.5, 0.0], obstacles=[[0.0, 0.0, 0.2], [0.7, 0.7, 0.1]])
    env = PointRoomEnv()
    env.reset(options={"layout": layout})
    hits = [env.step(np.array([1.0, 0.0]))[4]["collision"] for _ in range(10)]
    assert any(hits)


def test_bad_render_mode_is_rejected():
    with pytest.raises(ValueError, match="render_mode"):
        PointRoomEnv(render_mode="human")
