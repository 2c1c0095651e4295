"""Finding and loading plugins.

Order: installed plugins (entry-point group `csm_adapt`, the built-ins included) first, then the
local plugins a recipe lists, in the recipe's order. Order decides only the listing order: a name
registered twice is an error (see registries.py). Plugins named in the comma-separated environment
variable CSM_ADAPT_BLOCK_PLUGINS are never imported.

An installed plugin that fails to load (its module does not import, a hook is misspelt or has a
wrong argument, a `register_*` function lacks `@hookimpl`) is set aside as a `BrokenPlugin` rather
than stopping everything: `csm-adapt --help`, `--version` and `plugins` still work and list it, and
whatever needs the plugins fails with one line naming the distribution, the entry point and the
way out (blocking it). A recipe's local plugins fail at once: the recipe's author is at hand.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

import attrs
import pluggy

from csm_adapt.errors import PluginError
from csm_adapt.plugin_engine import hookspecs as hooks

BLOCK_ENV = "CSM_ADAPT_BLOCK_PLUGINS"


@attrs.frozen
class PluginInfo:
    name: str
    version: str  # the distribution's version, or "local"
    source: str  # the distribution's name, or the file/module a recipe listed


@attrs.frozen
class BrokenPlugin:
    """An installed plugin that could not be loaded, and why."""

    name: str  # the entry point's name, which CSM_ADAPT_BLOCK_PLUGINS takes
    version: str
    source: str  # the distribution's name
    entry_point: str  # "name = module" as the distribution declares it
    error: str  # one line

    def message(self) -> str:
        return (
            f"installed plugin {self.name} (distribution {self.source} {self.version}, entry point "
            f"{self.entry_point!r} in group {hooks.PROJECT!r}) is broken: {self.error}. "
            f"Fix or uninstall it (pip uninstall {self.source}), or skip it: {BLOCK_ENV}={self.name}"
        )


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, also remembering where each plugin came from and which installed ones broke."""

    def __init__(self) -> None:
        super().__init__(hooks.PROJECT)
        self.add_hookspecs(hooks)
        self.local_sources: dict[str, str] = {}
        self.dists: dict[str, tuple[str, str]] = {}  # installed plugin -> (distribution, version)
        self.entry_points: dict[str, str] = {}  # installed plugin -> "name = module"
        self.broken: list[BrokenPlugin] = []

    def infos(self) -> list[PluginInfo]:
        infos = []
        for name, plugin in self.list_name_plugin():
            if plugin is None:  # pluggy lists blocked names too
                continue
            if name in self.dists:
                dist, version = self.dists[name]
                infos.append(PluginInfo(name, version, dist))
            else:
                infos.append(PluginInfo(name, "local", self.local_sources[name]))
        return infos

    def set_broken(self, name: str, error: str) -> None:
        """Unregister installed plugin `name` (whatever it registered so far) and record why it broke."""
        dist, version = self.dists.pop(name)
        if self.has_plugin(name):
            self.unregister(name=name)
        self.broken.append(BrokenPlugin(name, version, dist, self.entry_points[name], _one_line(error)))

    def raise_if_broken(self) -> None:
        if self.broken:
            raise PluginError(self.broken[0].message())


def blocked_plugins() -> set[str]:
    return {name.strip() for name in os.environ.get(BLOCK_ENV, "").split(",") if name.strip()}


def resolve_local(spec: str, base_dir: Path) -> str:
    """A local plugin is a `.py` file (relative to `base_dir`, made absolute) or an importable module."""
    return str((base_dir / spec).resolve()) if spec.endswith(".py") else spec


def load_plugins(local: Iterable[str] = (), *, strict: bool = True) -> PluginManager:
    """Installed plugins, then `local` ones (resolved specs).

    A local plugin with a mistake fails at once (PluginError). A broken installed plugin fails too
    when `strict`; otherwise it is left out and listed in `pm.broken`.
    """
    pm = PluginManager()
    for name in blocked_plugins():
        pm.set_blocked(name)
    _load_installed(pm)
    for spec in local:
        _load_local(pm, spec)
    if strict:
        pm.raise_if_broken()
    return pm


def _load_installed(pm: PluginManager) -> None:
    """pluggy's load_setuptools_entrypoints, with each plugin's failure recorded instead of raised."""
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group != hooks.PROJECT or pm.has_plugin(ep.name) or pm.is_blocked(ep.name):
                continue
            if ep.name in pm.dists:  # the same distribution found twice on sys.path
                continue
            pm.dists[ep.name] = (dist.metadata["Name"], dist.version)
            pm.entry_points[ep.name] = f"{ep.name} = {ep.value}"
            try:
                module = ep.load()
                _check_module(module, ep.name)
                pm.register(module, name=ep.name)
                _check_hook_names(pm, module, ep.name)
            except Exception as e:  # anything at all: one plugin must not take the CLI down
                pm.set_broken(ep.name, e if isinstance(e, PluginError) else f"{type(e).__name__}: {e}")


def _load_local(pm: PluginManager, spec: str) -> None:
    if spec.endswith(".py"):
        path = Path(spec)
        name = path.stem
        if pm.is_blocked(name):
            return
        if not path.is_file():
            raise PluginError(f"plugin file not found: {path}")
        module = _import_file(path)
        source = str(path)
    else:
        name = spec
        if pm.is_blocked(name):
            return
        try:
            module = importlib.import_module(spec)
        except ModuleNotFoundError as e:
            if e.name != spec.split(".")[0] and e.name != spec:
                raise  # the plugin itself imports something missing: show the real traceback
            raise PluginError(f'plugin module "{spec}" cannot be imported: {e}') from None
        source = module.__file__ or spec
    if pm.has_plugin(name):
        raise PluginError(f'two plugins are named "{name}": {source} and {_source_of(pm, name)}')
    try:
        _check_module(module, f"{name} ({source})")
        pm.register(module, name)
        pm.local_sources[name] = source
        _check_hook_names(pm, module, f"{name} ({source})")
    except pluggy.PluginValidationError as e:
        raise PluginError(f"plugin {name} ({source}): {_one_line(e)}") from None


def _import_file(path: Path) -> ModuleType:
    # Registered in sys.modules because typing resolves the plugin's annotations through it, and
    # reused so that loading a recipe twice gives equal configs (same options classes).
    module_name = f"csm_adapt_local_plugin_{path.stem}"
    loaded = sys.modules.get(module_name)
    if loaded is not None and loaded.__file__ == str(path):
        return loaded
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def _source_of(pm: PluginManager, name: str) -> str:
    return next(info.source for info in pm.infos() if info.name == name)


def _check_hook_names(pm: PluginManager, module: ModuleType, label: str) -> None:
    """pluggy's check_pending for one plugin, with an error that names it and the valid hooks."""
    unknown = ", ".join(c.name for c in pm.get_hookcallers(module) or () if not c.has_spec())
    if unknown:
        raise PluginError(f"plugin {label}: unknown hook {unknown}; valid hooks: {', '.join(hooks.hook_names())}")


def _check_module(module: ModuleType, label: str) -> None:
    """A hook function without `@hookimpl` registers nothing, silently: say so instead."""
    marker = f"{hooks.PROJECT}_impl"
    for attr, value in vars(module).items():
        if (
            attr.startswith("register_")
            and inspect.isfunction(value)
            and value.__module__ == module.__name__
            and not hasattr(value, marker)
        ):
            raise PluginError(
                f"plugin {label}: function {attr} has no @hookimpl, so csm-adapt never calls it; "
                "decorate it with @hookimpl (from csm_adapt import hookimpl)"
            )


def _one_line(error: object) -> str:
    return " ".join(str(error).split())
