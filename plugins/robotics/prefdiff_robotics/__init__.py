"""prefdiff-robotics: trajectory diffusion for a point robot among obstacles, aligned for
feasibility executed in MuJoCo.

Registers the dataset ``robot_demos`` (robomimic HDF5 demonstrations), the
conditioner ``layout_timeline``, the rewards
``robot_feasibility`` (simulated; training reward and held-out judge), ``robot_success``
and ``robot_feasibility_surrogate`` (differentiable, for reward backpropagation only),
the benchmark ``robotics`` and the command ``prefdiff robotics make-data``. Loading
the plugin has no side effects: MuJoCo is imported (with ``MUJOCO_GL=egl`` unless
set) when a simulator is built, and the gymnasium environment
``prefdiff_robotics/PointRoom-v0`` is registered when :mod:`prefdiff_robotics.env`
is imported, e.g. by ``gym.make("prefdiff_robotics.env:prefdiff_robotics/PointRoom-v0")``.
"""

from prefdiff.api import hookimpl

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
    from prefdiff_robotics.recipe import robotics_flow_recipe, robotics_recipe

    register("robotics", robotics_recipe)
    register("robotics-flow", robotics_flow_recipe)


@hookimpl
def prefdiff_register_commands(register):
    from prefdiff_robotics.commands import make_data

    register("make-data", make_data)
