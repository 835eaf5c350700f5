"""prefdiff-robotics: trajectory diffusion for a point robot among obstacles, aligned for
feasibility executed in MuJoCo.

Registers the dataset ``robot_demos`` (robomimic HDF5 demonstrations), the
conditioner ``layout_timeline``, the rewards
``robot_feasibility`` (simulated; training reward and held-out judge), ``robot_success``
and ``robot_feasibility_surrogate`` (differentiable, for reward backpropagation only),
and the benchmark ``robotics``. Importing the package registers the gymnasium
environment ``prefdiff_robotics/PointRoom-v0``. MuJoCo is imported only when a
simulator is built.
"""

import os

from prefdiff import hookimpl

# Headless rendering: MuJoCo picks its OpenGL backend when it is first imported.
os.environ.setdefault("MUJOCO_GL", "egl")

__version__ = "0.1.0"


@hookimpl
def prefdiff_register_datasets(register):
    from prefdiff_robotics.demos import RobotDemos

    register("robot_demos", RobotDemos)


@hookimpl
def prefdiff_register_conditioners(register):
    from prefdiff_robotics.conditioner import LayoutTimeline

    register("layout_timeline", LayoutTimeline)


@hookimpl
def prefdiff_register_rewards(register):
    from prefdiff_robotics import rewards

    register("robot_feasibility", rewards.feasibility)
    register("robot_success", rewards.success)
    register("robot_feasibility_surrogate", rewards.feasibility_surrogate, differentiable=True)


@hookimpl
def prefdiff_register_benchmarks(register):
    from prefdiff_robotics.recipe import robotics_recipe

    register("robotics", robotics_recipe)


def _register_env() -> None:
    try:
        from prefdiff_robotics.env import register
    except ImportError:  # gymnasium missing: the rest of the plugin still works
        return
    register()


_register_env()
