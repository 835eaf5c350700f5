"""The pluggy markers of the ``prefdiff`` project: ``hookspec`` for the host, ``hookimpl`` for plugins."""

import pluggy

PROJECT = "prefdiff"

#: Marks a hook specification (only :mod:`prefdiff.hookspecs` uses it).
hookspec = pluggy.HookspecMarker(PROJECT)

#: Marks a plugin's hook implementation: ``@hookimpl def prefdiff_register_rewards(register): ...``.
hookimpl = pluggy.HookimplMarker(PROJECT)
