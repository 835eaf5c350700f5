"""The plugin manager: loads plugins, collects what they register, hands it out.

Modelled on tox's ``manager.py``: one small class loads the built-in plugins
and the ``prefdiff`` entry points, calls ``check_pending()`` so a misspelt hook
fails loudly, honours the ``PREFDIFF_PLUGINS`` allow-list, and gives the rest
of the core typed look-ups instead of raw ``pm.hook.*`` calls. A plugin that
fails to import, to validate or to register is isolated: it is listed with its
error and everything the other plugins registered stays available.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import logging
import numbers
import os
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable

import pluggy

from prefdiff import hookspecs
from prefdiff.errors import PluginError, UserError

log = logging.getLogger("prefdiff")

ENTRY_POINT_GROUP = "prefdiff"
ALLOW_LIST_VARIABLE = "PREFDIFF_PLUGINS"
KINDS = ("datasets", "conditioners", "rewards", "benchmarks", "commands")
"""What plugins register; commands are kept per plugin (``prefdiff PLUGIN COMMAND``)."""
#: The keyword options ``register`` takes besides the name and factory, by kind.
REGISTER_OPTIONS = {"datasets": {"draw_condition"}, "rewards": {"differentiable"}}
#: Where a user gives a factory its options, by kind (named when the options do not fit).
OPTION_FLAGS = {
    "rewards": " (prefdiff fit: --model.init_args.reward_options '{key: value}')",
    "datasets": " (prefdiff fit: --data.dataset_options '{key: value}'; prefdiff sample and edit: "
                "--dataset-option KEY=VALUE)",
    "conditioners": " (prefdiff fit: --model.init_args.conditioner_options '{key: value}'; prefdiff sample and "
                    "edit: --conditioner-option KEY=VALUE)",
}

#: The core's own generic pieces, loaded like any plugin (pytest's default_plugins).
DEFAULT_PLUGINS = {"example": "prefdiff.builtin.example", "feedback": "prefdiff.builtin.feedback",
                   "text": "prefdiff.builtin.text"}


@dataclass
class Entry:
    """One registered thing: its name, the plugin that gave it, its factory."""

    kind: str
    name: str
    plugin: str
    factory: Callable[..., Any]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class PluginInfo:
    """What `prefdiff plugins` shows for one plugin."""

    name: str
    version: str
    source: str
    registered: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in KINDS})
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "source": self.source,
                **self.registered, "errors": self.errors}


#: how the errors of a plugin that did not load begin (a name clash is not one: the plugin loaded)
LOAD_FAILURES = ("import failed", "invalid hook", "registers nothing", "registration of",
                 f"{ALLOW_LIST_VARIABLE} names plugin")


def _allow_list() -> set[str] | None:
    raw = os.environ.get(ALLOW_LIST_VARIABLE)
    if raw is None or not raw.strip():
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


class PluginManager:
    """Loads prefdiff plugins and keeps the registries of what they provide."""

    def __init__(self, *, load_entry_points: bool = True) -> None:
        self._pm = pluggy.PluginManager("prefdiff")
        self._pm.add_hookspecs(hookspecs)
        self._infos: dict[str, PluginInfo] = {}
        self._registry: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        self._clashes: dict[tuple[str, str], list[str]] = {}
        self._collected = False
        allowed = _allow_list()
        for name, module in DEFAULT_PLUGINS.items():
            if allowed is None or name in allowed:
                self._load(name, "builtin", __import__("prefdiff").__version__,
                           lambda module=module: importlib.import_module(module))
        if load_entry_points:
            for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
                if allowed is not None and ep.name not in allowed:
                    continue
                version = ep.dist.version if ep.dist is not None else "unknown"
                self._load(ep.name, f"entry point {ep.value}", version, ep.load, module=ep.module)
        if allowed is not None:
            for name in sorted(allowed - set(self._infos)):
                self._infos[name] = PluginInfo(name, "-", "missing", errors=[
                    f"{ALLOW_LIST_VARIABLE} names plugin '{name}' but no such plugin is installed; "
                    f"installed: {', '.join(self._known_names()) or 'none'}"])

    # ----------------------------------------------------------- loading ----

    def _known_names(self) -> list[str]:
        names = set(DEFAULT_PLUGINS)
        names.update(ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP))
        return sorted(names)

    def _load(self, name: str, source: str, version: str, load: Callable[[], Any], module: str | None = None) -> None:
        taken = self._infos.get(name)
        if taken is not None:  # two packages (or a package and a built-in) claim one plugin name
            taken.errors.append(f"a second plugin named '{name}' ({source}) was not loaded: the name is "
                                f"taken by {taken.source}; rename its entry point under "
                                f"[project.entry-points.{ENTRY_POINT_GROUP}] in its pyproject.toml")
            return
        info = PluginInfo(name, version, source)
        self._infos[name] = info
        try:
            plugin = load()
        except Exception as exc:  # a plugin's import error must not hide the others
            hint = ""
            if isinstance(exc, ModuleNotFoundError) and module and exc.name == module.split(".")[0]:
                hint = (f"; its entry point '{name}' under [project.entry-points.{ENTRY_POINT_GROUP}] in "
                        f"pyproject.toml names module '{module}', which its package does not install: fix "
                        f"the name there and reinstall the package")
            info.errors.append(f"import failed: {type(exc).__name__}: {exc}{hint}")
            return
        self.add(plugin, name, info=info)

    def add(self, plugin: Any, name: str, *, info: PluginInfo | None = None) -> None:
        """Register a plugin object (a module or any object with hookimpls)."""
        if name in self._infos and info is None:
            raise UserError(f"a plugin named '{name}' is already registered; pick another name")
        info = info or PluginInfo(name, getattr(plugin, "__version__", "-"), "registered in-process")
        self._infos[name] = info
        try:
            self._pm.register(plugin, name=name)
            self._pm.check_pending()
        except pluggy.PluginValidationError as exc:
            if self._pm.is_registered(plugin):
                self._pm.unregister(plugin)
            detail = " ".join(str(exc).split())
            info.errors.append(f"invalid hook: {detail}; hooks are listed in prefdiff.hookspecs")
            return
        except ValueError:  # pluggy: this module is registered already, under another plugin name
            other = self._pm.get_name(plugin)
            info.errors.append(f"not loaded: its module is plugin '{other}' already; point one entry "
                               f"point at each plugin module")
            return
        self._collected = False

    def remove(self, name: str) -> None:
        """Unregister a plugin added with :meth:`add` (tests do this in a finally)."""
        plugin = self._pm.get_plugin(name)
        if plugin is not None:
            self._pm.unregister(plugin)
        self._infos.pop(name, None)
        self._collected = False

    def _collect(self) -> None:
        if self._collected:
            return
        self._registry = {k: {} for k in KINDS}
        self._clashes = {}
        for info in self._infos.values():
            info.registered = {k: [] for k in KINDS}
            info.errors = [e for e in info.errors if not e.startswith(("registration", "registers"))]
        for kind in KINDS:
            caller = getattr(self._pm.hook, f"prefdiff_register_{kind}")
            # Call each implementation alone so a failure is pinned on its plugin.
            for impl in caller.get_hookimpls():  # registration order: built-ins first
                self._collect_one(kind, impl)
        for info in self._infos.values():
            plugin = self._pm.get_plugin(info.name)
            # No hook at all: pluggy skips functions without @hookimpl (a plugin whose hooks ran and
            # registered nothing, say on a condition, is not told anything).
            if not info.errors and plugin is not None and not self._pm.get_hookcallers(plugin):
                info.errors.append("registers nothing: decorate its hook functions with @prefdiff.hookimpl and "
                                   "name them as in prefdiff.hookspecs (prefdiff_register_rewards, ...)")
        self._collected = True

    def _collect_one(self, kind: str, impl: pluggy.HookImpl) -> None:
        plugin = impl.plugin_name
        info = self._infos[plugin]
        added: list[str] = []

        def register(name: str, factory: Callable[..., Any], **meta: Any) -> None:
            if not isinstance(name, str) or not name:
                raise PluginError(f"plugin '{plugin}' registered a {kind[:-1]} with an invalid name {name!r}")
            if not callable(factory):
                raise PluginError(f"plugin '{plugin}' registered {kind[:-1]} '{name}' with a factory "
                                  f"that is not callable ({type(factory).__name__})")
            problem = _registration_problem(kind, name, meta)
            if problem:  # this entry is left out; the plugin's others stay
                info.errors.append(f"registers {kind[:-1]} {name!r} {problem}")
                return
            if kind == "rewards":
                meta = {**meta, "differentiable": bool(meta.get("differentiable", False))}
            key = f"{plugin} {name}" if kind == "commands" else name
            existing = self._registry[kind].get(key)
            if existing is not None:
                self._clashes.setdefault((kind, key), [existing.plugin]).append(plugin)
                info.errors.append(f"registers {kind[:-1]} '{name}', already registered by plugin "
                                   f"'{existing.plugin}'; rename one of them")
                return
            self._registry[kind][key] = Entry(kind, name, plugin, factory, meta)
            added.append(name)

        try:
            impl.function(*[register for _ in impl.argnames])
        except Exception as exc:
            for name in added:
                del self._registry[kind][f"{plugin} {name}" if kind == "commands" else name]
            added.clear()
            info.errors.append(f"registration of {kind} failed: {type(exc).__name__}: {exc}")
        info.registered[kind].extend(added)

    # ----------------------------------------------------------- look-ups ----

    def plugins(self) -> list[PluginInfo]:
        """Every plugin that was loaded or tried, with what it registered."""
        self._collect()
        return list(self._infos.values())

    def names(self, kind: str) -> list[str]:
        """Registered names of one kind, sorted."""
        self._collect()
        return sorted(self._registry[kind])

    def entry(self, kind: str, name: str) -> Entry:
        """The entry registered under ``name``; a clear error when there is none."""
        self._collect()
        if (kind, name) in self._clashes:
            plugins = " and ".join(f"'{p}'" for p in self._clashes[(kind, name)])
            raise PluginError(f"{kind[:-1]} '{name}' is registered by plugins {plugins}; uninstall one "
                              f"or limit {ALLOW_LIST_VARIABLE}")
        try:
            return self._registry[kind][name]
        except KeyError:
            known = ", ".join(self.names(kind)) or "none"
            close = difflib.get_close_matches(name, self.names(kind), n=1)
            guess = f" (did you mean '{close[0]}'?)" if close else ""
            broken = [f"'{info.name}' ({failed[0]})" for info in self._infos.values()
                      if (failed := [e for e in info.errors if e.startswith(LOAD_FAILURES)])
                      and not any(info.registered.values())]
            hint = (f"; plugin {broken[0]} failed to load and may provide it" if len(broken) == 1 else
                    f"; plugins that failed to load and may provide it: {', '.join(broken)}" if broken else "")
            allowed = _allow_list()
            left_out = sorted(set(self._known_names()) - allowed) if allowed is not None else []
            if left_out:
                hint += (f"; {ALLOW_LIST_VARIABLE} leaves out the installed plugin(s) {', '.join(left_out)}: "
                         f"add the one that provides it, or unset {ALLOW_LIST_VARIABLE}")
            raise UserError(f"unknown {kind[:-1]} '{name}'{guess}; known {kind}: {known}{hint} "
                            f"(`prefdiff plugins` lists what each plugin provides)") from None

    def build(self, kind: str, name: str, **options: Any) -> Any:
        """Call the factory registered under ``name`` with ``options``."""
        entry = self.entry(kind, name)
        try:
            inspect.signature(entry.factory).bind(**options)
        except TypeError as exc:
            if kind == "rewards" and "samples" in inspect.signature(entry.factory).parameters:
                raise UserError(f"reward '{name}' (plugin '{entry.plugin}') was registered as the reward "
                                f"function itself; register a factory that returns it, e.g. "
                                f"register('{name}', lambda: {getattr(entry.factory, '__name__', 'reward')})") from None
            raise UserError(f"{kind[:-1]} '{name}' (plugin '{entry.plugin}') rejected its options "
                            f"{sorted(options)}{OPTION_FLAGS.get(kind, '')}: {exc}") from None
        except ValueError:  # no signature to read (a builtin): the call itself tells
            pass
        wrong = _mistyped_option(entry.factory, options)
        if wrong is not None:
            raise UserError(f"{kind[:-1]} option {wrong}{OPTION_FLAGS.get(kind, '')}")
        try:
            return entry.factory(**options)
        except UserError as exc:
            # "dataset option size must be > 0": the host adds where such options go, per command.
            hint = OPTION_FLAGS.get(kind, "")
            if type(exc) is UserError and hint and f"{kind[:-1]} option" in str(exc) and hint not in str(exc):
                raise UserError(f"{exc}{hint}") from None
            raise
        except TypeError as exc:
            raise UserError(f"{kind[:-1]} '{name}' (plugin '{entry.plugin}') rejected its options "
                            f"{sorted(options)}{OPTION_FLAGS.get(kind, '')}: {exc}") from exc

    def dataset(self, name: str, **options: Any) -> Any:
        """Build the dataset registered under ``name``."""
        return self.build("datasets", name, **options)

    def conditioner(self, name: str, **options: Any) -> Any:
        """Build the conditioner registered under ``name``.

        The module remembers its name and options (``prefdiff_spec``), so a saved model records the
        conditioner it was trained with and `prefdiff sample` rebuilds it without being told.
        """
        module = self.build("conditioners", name, **options)
        try:
            module.prefdiff_spec = {"name": name, "options": json.loads(json.dumps(options, default=_plain_value))}
        except (TypeError, ValueError, AttributeError):  # options JSON cannot hold, or a frozen object
            log.warning(f"conditioner '{name}': its options {sorted(options)} cannot be recorded in a saved model; "
                        f"pass them again to `prefdiff sample` with --conditioner-option")
        return module

    def reward(self, spec: str, **options: Any):
        """Build a checked reward from a name or a weighted sum ``"0.7*a + 0.3*b"``."""
        from prefdiff.rewards import build_reward

        return build_reward(self, spec, **options)

    def commands(self) -> dict[str, dict[str, Entry]]:
        """Each plugin's commands: plugin name -> command name -> entry."""
        self._collect()
        grouped: dict[str, dict[str, Entry]] = {}
        for entry in self._registry["commands"].values():
            grouped.setdefault(entry.plugin, {})[entry.name] = entry
        return grouped

    def benchmark(self, name: str, *, quick: bool = False):
        """Build the benchmark recipe registered under ``name``."""
        return self.build("benchmarks", name, quick=quick)


_SIMPLE_TYPES = {int: "an integer", float: "a number", bool: "true or false", str: "text"}


def _mistyped_option(factory: Callable, options: dict[str, Any]) -> str | None:
    """"NAME must be an integer, got 'abc'" for the first option whose value does not fit the factory's
    annotation; only plain int, float, bool and str annotations (or ``X | None``) are judged."""
    import types
    import typing

    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # annotations that do not evaluate here: the call itself tells
        return None
    for key, value in options.items():
        hint = hints.get(key)
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        allowed = [t for t in typing.get_args(hint) if t is not type(None)] if union else [hint]
        if len(allowed) != 1 or allowed[0] not in _SIMPLE_TYPES or (value is None and hint is not allowed[0]):
            continue
        wanted = allowed[0]
        number = isinstance(value, numbers.Real) and not isinstance(value, bool)
        fits = (isinstance(value, bool) if wanted is bool else
                number and float(value).is_integer() if wanted is int else
                number if wanted is float else
                isinstance(value, (str, os.PathLike)))
        if not fits:
            return f"{key} must be {_SIMPLE_TYPES[wanted]}, got {value!r}"
    return None


def _plain_value(value: Any) -> Any:
    """A numpy scalar or a path as JSON holds it (json.dumps' ``default``)."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _registration_problem(kind: str, name: str, meta: dict[str, Any]) -> str | None:
    """What is wrong with one ``register`` call's options (None when nothing is): unknown options, and
    for a reward a name that ``--reward`` and weighted sums cannot hold, or a ``differentiable`` that is
    not True or False."""
    from prefdiff.rewards import is_reward_name

    unknown = sorted(set(meta) - REGISTER_OPTIONS.get(kind, set()))
    if unknown:
        known = ", ".join(sorted(REGISTER_OPTIONS.get(kind, ()))) or "none"
        return f"with unknown option(s) {', '.join(unknown)}; {kind} take: {known}"
    if kind != "rewards":
        return None
    if not is_reward_name(name):
        return (f"with a name --reward cannot hold: a reward name starts with a letter or '_' and holds only "
                f"letters, digits, '_', '.' and '-', so that weighted sums like '0.7*NAME' can name it")
    flag = meta.get("differentiable", False)
    if flag not in (True, False):  # True, False, 1, 0 and numpy's bools
        return f"with differentiable={flag!r}; pass True or False"
    return None


_manager: PluginManager | None = None


def get_manager() -> PluginManager:
    """The process-wide manager, created on first use."""
    global _manager
    if _manager is None:
        _manager = PluginManager()
    return _manager


def reset_manager() -> None:
    """Forget the process-wide manager (tests, and after `plugins install`)."""
    global _manager
    _manager = None
