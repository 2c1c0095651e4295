"""Finding and loading plugins.

Order: installed plugins (entry-point group `csm_adapt`, the built-ins included) first, then the
local plugins a recipe lists, in the recipe's order. Order decides only the listing order: a name
registered twice is an error (see registries.py). Plugins named in the comma-separated environment
variable CSM_ADAPT_BLOCK_PLUGINS are never imported.
"""

from __future__ import annotations

import importlib
import importlib.util
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


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, also remembering where each local plugin came from."""

    def __init__(self) -> None:
        super().__init__(hooks.PROJECT)
        self.add_hookspecs(hooks)
        self.local_sources: dict[str, str] = {}

    def infos(self) -> list[PluginInfo]:
        dists = {self.get_name(plugin): dist for plugin, dist in self.list_plugin_distinfo()}
        infos = []
        for name, plugin in self.list_name_plugin():
            if plugin is None:  # pluggy lists blocked names too
                continue
            if name in dists:
                infos.append(PluginInfo(name, dists[name].version, dists[name].project_name))
            else:
                infos.append(PluginInfo(name, "local", self.local_sources[name]))
        return infos


def blocked_plugins() -> set[str]:
    return {name.strip() for name in os.environ.get(BLOCK_ENV, "").split(",") if name.strip()}


def resolve_local(spec: str, base_dir: Path) -> str:
    """A local plugin is a `.py` file (relative to `base_dir`, made absolute) or an importable module."""
    return str((base_dir / spec).resolve()) if spec.endswith(".py") else spec


def load_plugins(local: Iterable[str] = ()) -> PluginManager:
    """Installed plugins, then `local` ones (resolved specs); fails on a hook no spec defines."""
    pm = PluginManager()
    for name in blocked_plugins():
        pm.set_blocked(name)
    try:
        pm.load_setuptools_entrypoints(hooks.PROJECT)
    except pluggy.PluginValidationError as e:
        raise PluginError(" ".join(str(e).split())) from None
    for spec in local:
        _load_local(pm, spec)
    _check_hook_names(pm)
    return pm


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
        pm.register(module, name)
    except pluggy.PluginValidationError as e:
        raise PluginError(" ".join(str(e).split())) from None
    pm.local_sources[name] = source


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


def _check_hook_names(pm: PluginManager) -> None:
    """pluggy's check_pending, with an error that names the plugin and the valid hooks."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        name = pm.get_name(e.plugin)
        unknown = ", ".join(c.name for c in pm.get_hookcallers(e.plugin) if not c.has_spec())
        valid = ", ".join(hooks.hook_names())
        raise PluginError(
            f"plugin {name} ({_source_of(pm, name)}): unknown hook {unknown}; valid hooks: {valid}"
        ) from None
