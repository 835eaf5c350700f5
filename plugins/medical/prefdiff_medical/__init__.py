"""prefdiff-medical: mask-conditioned medical image generation and editing, aligned for
segmentation consistency, on MONAI.

Registers the ``decathlon`` dataset (Medical Segmentation Decathlon task
folders), the ``mask_onehot`` and ``mask_controlnet`` conditioners, the
``segmentation_consistency`` rewards and judge, the ``medical`` benchmark, and the
commands ``prefdiff medical make-data`` and ``prefdiff medical train-segmenter``.
Heavy imports (MONAI, nibabel) happen inside the factories.
"""

from __future__ import annotations

from prefdiff.api import hookimpl

__version__ = "0.1.0"


def _decathlon(**options):
    from prefdiff_medical.data import DecathlonSlices

    return DecathlonSlices(**options)


def _mask_onehot(**options):
    from prefdiff_medical.conditioners import MaskOneHot

    return MaskOneHot(**options)


def _mask_controlnet(**options):
    from prefdiff_medical.conditioners import MaskControlNet

    return MaskControlNet(**options)


def _reward(name: str):
    def factory(**options):
        from prefdiff_medical import rewards

        return getattr(rewards, name)(**options)

    factory.__doc__ = f"Build prefdiff_medical.rewards.{name}."
    return factory


def _recipe(quick: bool = False):
    from prefdiff_medical.recipe import medical_recipe

    return medical_recipe(quick)


@hookimpl
def prefdiff_register_datasets(register):
    register("decathlon", _decathlon)


@hookimpl
def prefdiff_register_conditioners(register):
    register("mask_onehot", _mask_onehot)
    register("mask_controlnet", _mask_controlnet)


@hookimpl
def prefdiff_register_rewards(register):
    register("segmentation_consistency", _reward("segmentation_consistency"))
    register("segmentation_consistency_soft", _reward("segmentation_consistency_soft"), differentiable=True)
    register("segmentation_judge", _reward("segmentation_judge"))


@hookimpl
def prefdiff_register_benchmarks(register):
    register("medical", _recipe)


@hookimpl
def prefdiff_register_commands(register):
    from prefdiff_medical import commands

    register("make-data", commands.make_data)
    register("train-segmenter", commands.train_segmenter)
