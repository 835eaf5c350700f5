"""The plugin host: loading, allow-list, clashes, isolation of broken plugins."""

import re
import sys
import textwrap
import types

import pytest

from prefdiff import hookimpl
from prefdiff.errors import PluginError, UserError
from prefdiff.plugins import PluginManager, get_manager
from prefdiff.testing import registered_plugin


def _plugin(**hooks):
    module = types.ModuleType("fake_plugin")
    for name, fn in hooks.items():
        setattr(module, name, hookimpl(fn))
    return module


def test_builtins_registered():
    manager = PluginManager(load_entry_points=False)
    info = {i.name: i for i in manager.plugins()}["example"]
    assert info.registered["rewards"] == ["jpeg_compressibility", "jpeg_incompressibility", "smoothness"]
    assert info.registered["datasets"] == ["synthetic_textures"]
    assert manager.names("benchmarks") == ["example"]


def test_allow_list_limits_loading(monkeypatch):
    monkeypatch.setenv("PREFDIFF_PLUGINS", "nothing-here")
    manager = PluginManager()
    assert manager.names("rewards") == []
    (missing,) = manager.plugins()
    assert "no such plugin is installed" in missing.errors[0]


def test_an_unknown_name_says_which_installed_plugins_the_allow_list_left_out(monkeypatch):
    monkeypatch.setenv("PREFDIFF_PLUGINS", "example")
    with pytest.raises(UserError, match=r"unknown benchmark 'medical'; known benchmarks: example; PREFDIFF_PLUGINS "
                                        r"leaves out the installed plugin\(s\) .*medical.*: add the one that provides "
                                        r"it, or unset PREFDIFF_PLUGINS"):
        PluginManager().entry("benchmarks", "medical")
    monkeypatch.delenv("PREFDIFF_PLUGINS")
    with pytest.raises(UserError) as unknown:
        PluginManager().entry("benchmarks", "nowhere")
    assert "PREFDIFF_PLUGINS" not in str(unknown.value)


def test_a_reward_registered_as_the_function_itself_is_told_to_register_a_factory():
    def brightness(samples, conditions=None):
        return samples.flatten(1).mean(1), {}

    with registered_plugin(_plugin(prefdiff_register_rewards=lambda register: register("bright", brightness)),
                           "direct") as manager:
        with pytest.raises(UserError, match=r"^reward 'bright' \(plugin 'direct'\) was registered as the reward "
                                            r"function itself; register a factory that returns it, e.g. "
                                            r"register\('bright', lambda: brightness\)$"):
            manager.reward("bright")


def test_unknown_name_lists_known_ones():
    with pytest.raises(UserError, match="unknown reward .nope.; known rewards: .*jpeg_compressibility"):
        get_manager().reward("nope")
    with pytest.raises(UserError, match=r"^unknown reward 'smothness' \(did you mean 'smoothness'\?\); known"):
        get_manager().reward("smothness")


@pytest.mark.parametrize("name, options, message", [
    ("Bad Name!", {}, r"registers reward 'Bad Name!' with a name --reward cannot hold: a reward name starts"),
    ("0.5*x", {}, r"registers reward '0.5\*x' with a name --reward cannot hold"),
    ("fine", {"differentiable": "no"}, r"registers reward 'fine' with differentiable='no'; pass True or False"),
    ("fine", {"differentable": True}, r"registers reward 'fine' with unknown option\(s\) differentable; "
                                      r"rewards take: differentiable"),
])
def test_a_reward_registered_with_a_bad_name_or_option_is_left_out_alone(name, options, message):
    def rewards(register):
        register(name, lambda: None, **options)
        register("kept", lambda: None, differentiable=1)  # 1 is True; the plugin's other rewards stay

    with registered_plugin(_plugin(prefdiff_register_rewards=rewards), "sloppy") as manager:
        info = {i.name: i for i in manager.plugins()}
        assert len(info["sloppy"].errors) == 1
        assert re.match(message, info["sloppy"].errors[0]), info["sloppy"].errors[0]
        assert info["sloppy"].registered["rewards"] == ["kept"] and name not in manager.names("rewards")
        assert manager.entry("rewards", "kept").meta["differentiable"] is True
        manager.remove("example")  # a recollection keeps one copy of each error
        assert len({i.name: i for i in manager.plugins()}["sloppy"].errors) == 1


def test_name_clash_names_both_plugins():
    def rewards(register):
        register("jpeg_compressibility", lambda: None)

    with registered_plugin(_plugin(prefdiff_register_rewards=rewards), "clasher") as manager:
        info = {i.name: i for i in manager.plugins()}
        assert any("already registered by plugin 'example'" in e for e in info["clasher"].errors)
        with pytest.raises(PluginError, match="plugins 'example' and 'clasher'"):
            manager.reward("jpeg_compressibility")
        assert "smoothness" in manager.names("rewards")  # the others stay available


def test_registration_error_is_isolated():
    def rewards(register):
        register("fine", lambda: None)
        raise RuntimeError("boom")

    with registered_plugin(_plugin(prefdiff_register_rewards=rewards), "broken") as manager:
        info = {i.name: i for i in manager.plugins()}
        assert "registration of rewards failed: RuntimeError: boom" in info["broken"].errors[0]
        assert "fine" not in manager.names("rewards")
        assert "jpeg_compressibility" in manager.names("rewards")


def test_misspelt_hook_fails_loudly():
    module = types.ModuleType("typo")
    module.prefdiff_register_reward = hookimpl(lambda register: None)
    with registered_plugin(module, "typo") as manager:
        info = {i.name: i for i in manager.plugins()}
        assert "invalid hook" in info["typo"].errors[0]
        assert "prefdiff_register_reward" in info["typo"].errors[0]


def test_wrong_signature_fails_loudly():
    module = types.ModuleType("sig")
    module.prefdiff_register_rewards = hookimpl(lambda register, extra: None)
    with registered_plugin(module, "sig") as manager:
        info = {i.name: i for i in manager.plugins()}
        assert "invalid hook" in info["sig"].errors[0]


def installed(folder, module, source, entry_points, version="0.1"):
    """A distribution as pip leaves it in ``folder``: the module, and a dist-info with its entry points."""
    (folder / f"{module}.py").write_text(textwrap.dedent(source))
    dist = folder / f"{module}-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: {version}\n")
    (dist / "entry_points.txt").write_text(f"[prefdiff]\n{entry_points}\n")


def test_entry_point_plugins_load_and_import_errors_are_isolated(tmp_path, monkeypatch):
    # Two real distributions on sys.path, found through importlib.metadata.
    for name, body in {
        "goodplug": """
            from prefdiff import hookimpl
            @hookimpl
            def prefdiff_register_rewards(register):
                register("good_reward", lambda: (lambda s, c: (s.flatten(1).mean(1), {})))
        """,
        "badplug": "raise ImportError('missing dependency xyz')\n",
        "needsdep": "import not_installed_dependency\n",
    }.items():
        installed(tmp_path, name, body, f"{name} = {name}", version="1.2.3")
    installed(tmp_path, "typoplug", "", "typoplug = tyopplug")  # the entry point misspells its module
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        manager = PluginManager()
        info = {i.name: i for i in manager.plugins()}
        assert info["goodplug"].version == "1.2.3"
        assert info["goodplug"].registered["rewards"] == ["good_reward"]
        assert "import failed: ImportError: missing dependency xyz" in info["badplug"].errors[0]
        assert info["typoplug"].errors == [
            "import failed: ModuleNotFoundError: No module named 'tyopplug'; its entry point 'typoplug' under "
            "[project.entry-points.prefdiff] in pyproject.toml names module 'tyopplug', which its package does "
            "not install: fix the name there and reinstall the package"]
        # a module the plugin itself imports is a missing dependency, not a misspelt entry point
        assert info["needsdep"].errors == ["import failed: ModuleNotFoundError: No module named "
                                           "'not_installed_dependency'"]
        assert "jpeg_compressibility" in manager.names("rewards")
        with pytest.raises(UserError, match="plugins that failed to load and may provide it: 'badplug' .*'needsdep'"):
            manager.reward("typo_reward")
    finally:
        for name in ("goodplug", "badplug", "needsdep", "typoplug"):
            sys.modules.pop(name, None)


def test_plugins_that_claim_a_taken_name_or_module_are_reported_not_fatal(tmp_path, monkeypatch):
    # Real distributions on sys.path: two claim the plugin name "shared", one claims the built-in
    # "example", and one points two entry points at one module.
    reward = """
        from prefdiff import hookimpl
        @hookimpl
        def prefdiff_register_rewards(register):
            register("{name}_reward", lambda: (lambda s, c: (s.flatten(1).mean(1), {{}})))
    """
    entry_points = {"dupa": "shared = dupa", "dupb": "shared = dupb", "mine": "example = mine",
                    "twoeps": "twoa = twoeps\ntwob = twoeps"}
    for module, lines in entry_points.items():
        installed(tmp_path, module, reward.format(name=module), lines)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        manager = PluginManager()
        info = {i.name: i for i in manager.plugins()}
        # The first found keeps the name (which one depends on the order the files are listed in).
        kept = info["shared"].registered["rewards"]
        assert kept in (["dupa_reward"], ["dupb_reward"])
        other = "dupb" if kept == ["dupa_reward"] else "dupa"
        assert any(f"a second plugin named 'shared' (entry point {other}) was not loaded" in e
                   and "rename its entry point" in e for e in info["shared"].errors)
        assert info["example"].source == "builtin" and "jpeg_compressibility" in manager.names("rewards")
        assert any("(entry point mine) was not loaded: the name is taken by builtin" in e
                   for e in info["example"].errors)
        assert info["twoa"].registered["rewards"] == ["twoeps_reward"]
        assert info["twob"].errors == ["not loaded: its module is plugin 'twoa' already; point one entry "
                                       "point at each plugin module"]
        assert "mine_reward" not in manager.names("rewards") and f"{other}_reward" not in manager.names("rewards")
        with pytest.raises(UserError) as unknown:  # plugins that lost a name clash did load: not "failed to load"
            manager.reward("nothing_like_it")
        assert "failed to load" not in str(unknown.value)
    finally:
        for module in entry_points:
            sys.modules.pop(module, None)


def test_a_factory_missing_an_option_names_where_options_go():
    def rewards(register):
        def needs_path(path):
            return lambda s, c: (s.flatten(1).mean(1), {})

        register("needs_path", needs_path)
        # a wrapper whose signature says nothing: the factory inside raises TypeError when called
        register("wrapped", lambda **options: needs_path(**options))

    with registered_plugin(_plugin(prefdiff_register_rewards=rewards), "optioned") as manager:
        for name in ("needs_path", "wrapped"):
            with pytest.raises(UserError, match=rf"reward '{name}' \(plugin 'optioned'\) rejected its options \[\] "
                                                r"\(prefdiff fit: --model.init_args.reward_options '\{key: value\}'\): "
                                                r".*'path'"):
                manager.reward(name)


def test_a_plugin_whose_hooks_lack_hookimpl_is_told_it_registers_nothing():
    module = types.ModuleType("undecorated")
    module.prefdiff_register_rewards = lambda register: register("lost", lambda: None)  # no @hookimpl
    with registered_plugin(module, "undecorated") as manager:
        info = {i.name: i for i in manager.plugins()}
        assert info["undecorated"].errors == ["registers nothing: decorate its hook functions with "
                                              "@prefdiff.hookimpl and name them as in prefdiff.hookspecs "
                                              "(prefdiff_register_rewards, ...)"]
        assert all(not i.errors for name, i in info.items() if name != "undecorated")


def test_a_plugin_whose_hooks_ran_and_registered_nothing_is_not_blamed():
    def rewards(register):
        if False:  # e.g. registers only when an optional dependency is installed
            register("never", lambda: None)

    with registered_plugin(_plugin(prefdiff_register_rewards=rewards), "conditional") as manager:
        assert {i.name: i for i in manager.plugins()}["conditional"].errors == []


def test_an_option_of_the_wrong_type_is_named_before_the_factory_runs():
    from prefdiff.errors import UserError
    from prefdiff.plugins import get_manager

    calls = []

    class Sized:
        def __init__(self, size: int = 4, scale: float = 1.0, label: str | None = None, flip: bool = False):
            calls.append(size)

    class Plugin:
        @hookimpl
        def prefdiff_register_datasets(self, register):
            register("sized", Sized)

    with registered_plugin(Plugin(), "sized-plugin"):
        manager = get_manager()
        with pytest.raises(UserError, match=r"dataset option size must be an integer, got 'abc' \(prefdiff fit: "
                                            r"--data.dataset_options"):
            manager.dataset("sized", size="abc")
        for bad in ({"scale": "x"}, {"flip": "yes"}, {"label": 3}, {"size": 2.5}):
            with pytest.raises(UserError, match=f"dataset option {next(iter(bad))} must be"):
                manager.dataset("sized", **bad)
        assert calls == []
        import numpy as np

        manager.dataset("sized", size=np.int64(8), scale=2, label=None, flip=True)
        manager.dataset("sized", size=8.0)
        assert calls == [8, 8.0]
