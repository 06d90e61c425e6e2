"""The plugin manager: loads the ``studio`` entry points and collects what they register.

One broken plugin never stops the rest: each entry point is imported, and each hook
implementation called, inside its own try/except, and the failure is kept for
``studio plugins`` to show.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from studio import hookspecs
from studio.errors import ConfigError, UnknownDataset, UnknownModel, UsageError
from studio.generators import DatasetSpec, ModelSpec

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "studio"
BUILTIN = "studio"  # the name Studio's own hook implementations are registered under




@dataclass
class PluginInfo:
    name: str
    module: str
    version: str | None = None
    error: str | None = None
    models: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Registry:
    """Everything the loaded plugins registered, and how each plugin fared."""

    manager: pluggy.PluginManager
    plugins: dict[str, PluginInfo]
    models: dict[str, ModelSpec] = field(default_factory=dict)
    datasets: dict[str, DatasetSpec] = field(default_factory=dict)

    def model(self, model_id: str) -> ModelSpec:
        try:
            return self.models[model_id]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "none installed"
            hint = ""
            if model_id not in self.plugins and model_id in _entry_point_names():
                hint = f" (the {model_id} plugin is not installed, or not loaded: see `studio plugins`)"
            raise UnknownModel(f"unknown model {model_id!r}{hint}; known models: {known}") from None

    def default_model(self, setting: str | None = None) -> ModelSpec:
        """The model of a job that names none: the ``default_model`` setting, or the only one installed."""
        if setting:
            return self.model(setting)
        if len(self.models) == 1:
            return next(iter(self.models.values()))
        known = ", ".join(sorted(self.models)) or "none installed"
        raise UsageError(f"no model given: use --model ID or set STUDIO_DEFAULT_MODEL (installed models: {known})")

    def dataset(self, name: str) -> DatasetSpec:
        key = name.split(":", 1)[0]
        try:
            return self.datasets[key]
        except KeyError:
            known = ", ".join(sorted(self.datasets)) or "none"
            raise UnknownDataset(f"unknown dataset {name!r}; known datasets: {known}") from None

    def call_each(self, hook_name: str, kwargs_for: Callable[[str], dict[str, Any]]) -> None:
        """Call one hook on every plugin separately, pinning any failure on its plugin.

        ``kwargs_for(plugin_name)`` builds the hook's arguments for that plugin, so a
        ``register`` callback knows who is registering.
        """
        hook = getattr(self.manager.hook, hook_name)
        for impl in hook.get_hookimpls():
            name = self.manager.get_name(impl.plugin) or "?"
            try:
                kwargs = kwargs_for(name)
                impl.function(**{k: v for k, v in kwargs.items() if k in impl.argnames})
            except Exception as exc:  # noqa: BLE001 - a plugin may raise anything
                self._fail(name, f"{hook_name}: {type(exc).__name__}: {exc}")
                log.debug("plugin %s failed in %s\n%s", name, hook_name, traceback.format_exc())

    def _fail(self, name: str, message: str) -> None:
        info = self.plugins.setdefault(name, PluginInfo(name=name, module="?"))
        info.error = message if info.error is None else f"{info.error}; {message}"


def _entry_point_names() -> set[str]:
    return {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _load_entry_points(pm: pluggy.PluginManager, plugins: dict[str, PluginInfo], only: tuple[str, ...] | None) -> None:
    for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if only is not None and ep.name not in only:
            continue
        if ep.name in plugins:
            continue  # a second distribution with the same plugin name: first wins
        version = ep.dist.version if ep.dist is not None else None
        info = PluginInfo(name=ep.name, module=ep.value, version=version)
        plugins[ep.name] = info
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
        except Exception as exc:  # noqa: BLE001 - import errors of any kind
            info.error = f"failed to load: {type(exc).__name__}: {exc}"
            log.debug("plugin %s failed to load\n%s", ep.name, traceback.format_exc())


def load_registry(only: tuple[str, ...] | None = None) -> Registry:
    """Load the builtin hooks and the installed plugins (or just ``only``) and collect registrations."""
    from studio import builtin_plugin

    pm = pluggy.PluginManager("studio")
    pm.add_hookspecs(hookspecs)
    plugins: dict[str, PluginInfo] = {}
    pm.register(builtin_plugin, name=BUILTIN)
    plugins[BUILTIN] = PluginInfo(name=BUILTIN, module=builtin_plugin.__name__, version=_core_version())
    if only is not None:
        installed = _entry_point_names()
        unknown = [name for name in only if name not in installed and name != BUILTIN]
        if unknown:
            names = ", ".join(repr(n) for n in unknown)
            raise ConfigError(
                f"STUDIO_LOAD_PLUGINS names {names}, not installed (installed plugins: "
                f"{', '.join(sorted(installed)) or 'none'}); fix the list, or unset it to load every plugin"
            )
    _load_entry_points(pm, plugins, only)
    registry = Registry(manager=pm, plugins=plugins)
    registry.call_each("register_models", lambda name: {"register": _registrar(registry, "models", name)})
    registry.call_each("register_datasets", lambda name: {"register": _registrar(registry, "datasets", name)})
    return registry


def _registrar(registry: Registry, kind: str, plugin: str) -> Callable[[Any], None]:
    """The ``register`` callback handed to one plugin's hook; refuses duplicates and wrong types.

    The spec's ``plugin`` field is set to the registering plugin's name, whatever it said.
    """
    expected = ModelSpec if kind == "models" else DatasetSpec
    table: dict[str, Any] = getattr(registry, kind)

    def register(spec: Any) -> None:
        if not isinstance(spec, expected):
            raise TypeError(f"register() takes a {expected.__name__}, got {type(spec).__name__}")
        key = spec.id if kind == "models" else spec.name
        if key in table:
            raise ValueError(f"{kind[:-1]} {key!r} is already registered by plugin {table[key].plugin!r}")
        table[key] = dataclasses.replace(spec, plugin=plugin)
        getattr(registry.plugins[plugin], kind).append(key)

    return register


def _core_version() -> str | None:
    try:
        return importlib.metadata.version("studio")
    except importlib.metadata.PackageNotFoundError:
        return None


_cached: dict[tuple[str, ...] | None, Registry] = {}


def get_registry(only: tuple[str, ...] | None = None) -> Registry:
    """The process-wide registry for a plugin selection (plugins load once per process)."""
    if only not in _cached:
        _cached[only] = load_registry(only)
    return _cached[only]


def fire_job_finished(registry: Registry, job: Any, images: list[Any]) -> None:
    """Fire-and-forget: a failing listener is logged, never changes the job."""
    for impl in registry.manager.hook.job_finished.get_hookimpls():
        try:
            impl.function(job=job, images=images)
        except Exception as exc:  # noqa: BLE001
            name = registry.manager.get_name(impl.plugin)
            log.warning("plugin %s failed in job_finished: %s: %s", name, type(exc).__name__, exc, exc_info=True)
