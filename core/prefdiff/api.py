"""Everything a prefdiff plugin may import: ``from prefdiff.api import hookimpl, Recipe, ...``.

This module is the plugin contract. Every name in ``__all__`` is documented
in docs/plugins.md ("API reference") and stays as it is; a change comes only
with a deprecation announced there one release ahead, during which the old
name keeps working and warns. Modules of prefdiff not re-exported here are
internals and change without notice.

Names are imported on first use, so ``import prefdiff.api`` (and loading a
plugin that imports ``hookimpl``) stays cheap: torch is loaded only when a
name that needs it is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: name -> the module that defines it.
_SOURCES = {
    # hooks and errors
    "hookimpl": "prefdiff.markers",
    "Register": "prefdiff.hookspecs",
    "UserError": "prefdiff.errors",
    "PluginError": "prefdiff.errors",
    # benchmark recipes
    "Recipe": "prefdiff.bench.recipe",
    "AgainstReal": "prefdiff.bench.recipe",
    # sampling and editing
    "sample": "prefdiff.sampling",
    "sdedit": "prefdiff.sampling",
    "inpaint": "prefdiff.sampling",
    "SampleOutput": "prefdiff.sampling",
    # condition batches
    "collate": "prefdiff.data",
    "select": "prefdiff.data",
    "concat": "prefdiff.data",
    "repeat_condition": "prefdiff.data",
    "condition_count": "prefdiff.data",
    # statistics
    "paired_bootstrap_ci": "prefdiff.bench.stats",
    "sliced_wasserstein": "prefdiff.bench.stats",
    # the cache
    "cache_root": "prefdiff.cache",
    # figures
    "to_uint8": "prefdiff.viz",
    "save_grid": "prefdiff.viz",
    "save_labelled_rows": "prefdiff.viz",
    # masks for editing
    "dilate": "prefdiff.masks",
    "connected_components": "prefdiff.masks",
    "component_at": "prefdiff.masks",
}

__all__ = sorted(_SOURCES)


def __getattr__(name: str) -> Any:
    try:
        module = _SOURCES[name]
    except KeyError:
        raise AttributeError(f"module 'prefdiff.api' has no attribute '{name}'") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # what static checkers and editors see
    from prefdiff.bench.recipe import AgainstReal, Recipe  # noqa: F401
    from prefdiff.bench.stats import paired_bootstrap_ci, sliced_wasserstein  # noqa: F401
    from prefdiff.cache import cache_root  # noqa: F401
    from prefdiff.data import collate, concat, condition_count, repeat_condition, select  # noqa: F401
    from prefdiff.errors import PluginError, UserError  # noqa: F401
    from prefdiff.hookspecs import Register  # noqa: F401
    from prefdiff.markers import hookimpl  # noqa: F401
    from prefdiff.masks import component_at, connected_components, dilate  # noqa: F401
    from prefdiff.sampling import SampleOutput, inpaint, sample, sdedit  # noqa: F401
    from prefdiff.viz import save_grid, save_labelled_rows, to_uint8  # noqa: F401
