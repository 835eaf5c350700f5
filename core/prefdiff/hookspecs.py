"""Every hook a prefdiff plugin may implement, grouped by stage.

Registration hooks receive a ``register`` callback; a plugin calls it once per
thing it provides and returns nothing (simonw/llm's ``register_models``). The
host owns naming: a name registered by two plugins is an error naming both.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from prefdiff.markers import hookspec


class Register(Protocol):
    """The callback a registration hook receives."""

    def __call__(self, name: str, factory: Callable[..., Any], **meta: Any) -> None: ...


# ---------------------------------------------------------------- data ----


@hookspec
def prefdiff_register_datasets(register: Register) -> None:
    """Register datasets of conditions (and targets, for SFT).

    :param register: call ``register(name, factory)`` once per dataset. The
        factory takes keyword options such as ``root``, ``split`` and
        ``size`` and returns a ``torch.utils.data.Dataset`` whose items are
        dicts with ``"cond"`` (what the conditioner consumes) and, for SFT,
        ``"x0"`` (a target sample). Raise :class:`prefdiff.UserError` for
        a missing or malformed data folder, naming the file and the fix.
    """


# ---------------------------------------------------------- conditioning ----


@hookspec
def prefdiff_register_conditioners(register: Register) -> None:
    """Register conditioners: modules that turn a condition into model input.

    :param register: call ``register(name, factory)``. The factory takes
        keyword options and returns an ``nn.Module`` mapping a batch of
        conditions (mask, BEV layout, start/goal) to what the denoiser
        consumes (concatenated channels, class labels, embeddings).
    """


# --------------------------------------------------------------- reward ----


@hookspec
def prefdiff_register_rewards(register: Register) -> None:
    """Register reward functions.

    :param register: call ``register(name, factory, differentiable=False)``.
        The factory takes keyword options and returns
        ``reward(samples, conditions) -> (scores, info)``: ``scores`` a float
        tensor of shape ``[B]``, finite, on the samples' device; ``info`` a
        dict of extra per-batch numbers to log. Heavy imports belong inside
        the factory. Declare ``differentiable=True`` only when gradients flow
        from ``scores`` to ``samples`` (reward backpropagation uses it).
    """


# ------------------------------------------------------------ benchmark ----


@hookspec
def prefdiff_register_benchmarks(register: Register) -> None:
    """Register a per-domain benchmark recipe.

    :param register: call ``register(name, factory)``; the factory takes
        ``quick: bool`` and returns a :class:`prefdiff.api.Recipe` (dataset,
        model preset, conditioner, training reward, held-out judge,
        methods and budgets). ``prefdiff bench NAME`` runs it.
    """


# ------------------------------------------------------------- commands ----


@hookspec
def prefdiff_register_commands(register: Register) -> None:
    """Register subcommands under ``prefdiff PLUGIN ...`` (simonw/llm's ``register_commands``).

    :param register: call ``register(name, function)`` once per command; the
        command is ``prefdiff PLUGIN NAME``, PLUGIN being the plugin's
        entry-point name (``prefdiff medical make-data DIR``). The function's
        typed signature is its command line, as litgpt's recipes have it: a
        parameter without a default is a positional argument, one with a
        default a ``--flag`` (underscores become dashes), and the
        ``:param NAME:`` lines of its docstring are the help. The function
        prints what it did; it raises :class:`prefdiff.api.UserError` for bad
        input, which the command line prints as one line with exit code 2.
    """
