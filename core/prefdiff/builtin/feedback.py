"""The built-in human-feedback plugin: the reward model learned from labelled pairs.

One of the core's default plugins (``prefdiff.plugins.DEFAULT_PLUGINS``);
``PREFDIFF_PLUGINS`` limits it like any plugin.
"""

from __future__ import annotations

from prefdiff.api import hookimpl


def preference_model(path: str):
    """The Bradley-Terry reward model trained by `prefdiff reward-model train` into ``path``."""
    from prefdiff.feedback.reward_model import preference_model as build

    return build(path)


@hookimpl
def prefdiff_register_rewards(register):
    # The network is differentiable in its input, so reward backpropagation may use it too.
    register("preference_model", preference_model, differentiable=True)
