"""The plugin host: loading, allow-list, clashes, isolation of broken plugins."""

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


def test_unknown_name_lists_known_ones():
    with pytest.raises(UserError, match="unknown reward .nope.; known rewards: .*jpeg_compressibility"):
        get_manager().reward("nope")


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
    }.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
        dist = tmp_path / f"{name}-1.2.3.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
        (dist / "entry_points.txt").write_text(f"[prefdiff]\n{name} = {name}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        manager = PluginManager()
        info = {i.name: i for i in manager.plugins()}
        assert info["goodplug"].version == "1.2.3"
        assert info["goodplug"].registered["rewards"] == ["good_reward"]
        assert "import failed: ImportError: missing dependency xyz" in info["badplug"].errors[0]
        assert "jpeg_compressibility" in manager.names("rewards")
    finally:
        sys.modules.pop("goodplug", None)
        sys.modules.pop("badplug", None)
