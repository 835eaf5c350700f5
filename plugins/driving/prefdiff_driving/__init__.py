"""prefdiff-driving: BEV traffic-scene generation on nuScenes, aligned for planner feasibility.

Registers the dataset ``nuscenes_bev`` (a nuScenes dataroot read with the
nuscenes-devkit), the conditioner ``layout_route`` (map layout and ego route),
the rewards ``planner_feasibility`` (training), ``planner_judge`` (held-out),
``planner_feasibility_surrogate`` (differentiable, reward backpropagation only)
and ``layout_consistency``, the benchmark ``driving`` and the command
``prefdiff driving make-data``. The devkit is
imported only inside the factories.
"""

from __future__ import annotations

from prefdiff.api import hookimpl

__version__ = "0.1.0"


def _dataset(**options):
    from prefdiff_driving.data import NuScenesBEV

    return NuScenesBEV(**options)


def _conditioner(**options):
    from prefdiff_driving.conditioner import LayoutRoute

    return LayoutRoute(**options)


def _reward(name: str):
    def factory(**options):
        from prefdiff_driving import rewards

        return getattr(rewards, name)(**options)

    factory.__doc__ = f"Build prefdiff_driving.rewards.{name}."
    return factory


def _recipe(quick: bool = False):
    from prefdiff_driving.recipe import driving_recipe

    return driving_recipe(quick)


@hookimpl
def prefdiff_register_datasets(register):
    register("nuscenes_bev", _dataset)


@hookimpl
def prefdiff_register_conditioners(register):
    register("layout_route", _conditioner)


@hookimpl
def prefdiff_register_rewards(register):
    register("planner_feasibility", _reward("planner_feasibility"))
    register("planner_judge", _reward("planner_judge"))
    register("planner_feasibility_surrogate", _reward("planner_feasibility_surrogate"), differentiable=True)
    register("layout_consistency", _reward("layout_consistency"))
    register("scenario_feasibility", _reward("scenario_feasibility"))
    register("scenario_judge", _reward("scenario_judge"))
    register("scenario_feasibility_surrogate", _reward("scenario_feasibility_surrogate"), differentiable=True)


@hookimpl
def prefdiff_register_benchmarks(register):
    register("driving", _recipe)


@hookimpl
def prefdiff_register_commands(register):
    from prefdiff_driving.commands import make_data

    register("make-data", make_data)
