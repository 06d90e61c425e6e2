"""The plugin contract, driven through the real entry points of the installed test plugin."""

import pytest

from studio.generators import DatasetSpec, ModelSpec
from studio.plugins import UnknownModel, load_registry

pytestmark = pytest.mark.usefixtures("testgen_installed")


def test_entry_point_plugin_registers_its_model():
    registry = load_registry()
    spec = registry.model("testgen")
    assert spec.plugin == "testgen"
    assert [p.name for p in spec.params] == ["steps", "size", "delay", "fail"]
    assert registry.plugins["testgen"].ok and registry.plugins["testgen"].version == "1.0.0"
    assert registry.plugins["testgen"].models == ["testgen"]


def test_builtin_datasets_are_registered_through_the_same_hook():
    registry = load_registry(only=())
    assert {"shapes", "folder"} <= set(registry.datasets)
    assert registry.dataset("folder:/some/path").name == "folder"
    with pytest.raises(LookupError, match="known datasets"):
        registry.dataset("nope")


def test_one_broken_plugin_never_stops_the_rest():
    registry = load_registry()
    assert "failed to load: ImportError" in registry.plugins["broken-import"].error
    assert "register_models: RuntimeError" in registry.plugins["broken-register"].error
    assert registry.plugins["testgen"].ok
    assert "testgen" in registry.models


def test_load_plugins_limits_what_loads():
    registry = load_registry(only=("testgen",))
    assert set(registry.plugins) == {"studio", "testgen"}
    assert set(load_registry(only=()).plugins) == {"studio"}


def test_unknown_model_lists_the_known_ones():
    registry = load_registry(only=("testgen",))
    with pytest.raises(UnknownModel, match="known models: testgen"):
        registry.model("nope")
    with pytest.raises(UnknownModel, match="galip plugin is not installed"):
        registry.model("galip")


def test_register_refuses_duplicates_and_wrong_types():
    registry = load_registry(only=("testgen",))
    calls = []

    class Dup:
        @staticmethod
        def register_models(register):
            calls.append(1)
            register(ModelSpec(id="testgen", plugin="dup", factory=lambda: None))

    class Wrong:
        @staticmethod
        def register_models(register):
            register(DatasetSpec(name="x", plugin="wrong", factory=lambda: None))

    from studio.hookspecs import hookimpl
    from studio.plugins import PluginInfo, _registrar

    for name, impl in (("dup", Dup), ("wrong", Wrong)):
        hookimpl(impl.register_models)
        registry.manager.register(impl, name=name)
        registry.plugins[name] = PluginInfo(name=name, module="test")
    registry.call_each("register_models", lambda n: {"register": _registrar(registry, "models", n)})
    assert calls == [1]
    assert "already registered by plugin 'testgen'" in registry.plugins["dup"].error
    assert "takes a ModelSpec" in registry.plugins["wrong"].error
    assert registry.models["testgen"].plugin == "testgen"
