"""prefdiff: align diffusion models with preferences in applied fields.

Field plugins implement the hooks in :mod:`prefdiff.hookspecs` with the
:data:`hookimpl` marker and register through the ``prefdiff`` entry-point group.
"""

import pluggy

__version__ = "0.1.0"

#: Marker for plugin hook implementations: ``@prefdiff.hookimpl``.
hookimpl = pluggy.HookimplMarker("prefdiff")

from prefdiff.errors import UserError  # noqa: E402  (after hookimpl: plugins import it early)

__all__ = ["hookimpl", "UserError", "__version__"]
