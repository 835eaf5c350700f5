"""prefdiff: align diffusion models with preferences in applied fields.

Field plugins implement the hooks in :mod:`prefdiff.hookspecs` with the
``hookimpl`` marker and register through the ``prefdiff`` entry-point group.
Everything a plugin may use is in :mod:`prefdiff.api`, re-exported here.
"""

from typing import Any

from prefdiff import api as _api
from prefdiff.markers import hookimpl  # noqa: F401  (the marker plugins use first, without a look-up)

__version__ = "0.1.0"

__all__ = ["__version__", *_api.__all__]


def __getattr__(name: str) -> Any:
    if name in _api.__all__:
        return getattr(_api, name)
    raise AttributeError(f"module 'prefdiff' has no attribute '{name}'")
