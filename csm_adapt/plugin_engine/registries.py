"""What the loaded plugins provide: readers, loss strategies, loggers, adapters, evaluators and commands, by
name.

Names are unique across all plugins: registering a name twice fails, naming both plugins, rather
than letting load order silently decide which one a recipe gets. An options class is checked when
it is registered: a field type a recipe cannot give fails then, not when a recipe first sets it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import click
import pluggy

from csm_adapt.config.structure import unsupported_fields
from csm_adapt.errors import ConfigError, PluginError
from csm_adapt.plugin_api import NoOptions
from csm_adapt.plugin_engine.manager import PluginManager

CORE = "csm_adapt"  # owner of the commands the engine itself defines


@attrs.frozen
class Entry:
    implementation: Any
    options: type  # attrs class validating this implementation's table in a recipe
    plugin: str


@attrs.define
class Registry:
    """One kind of thing plugins provide, e.g. kind="reader"."""

    kind: str
    entries: dict[str, Entry] = attrs.field(factory=dict)

    def add(self, name: str, implementation: Any, options: type, plugin: str) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {plugin}: a {self.kind} name must be a non-empty string, got {name!r}")
        if not attrs.has(options):
            raise PluginError(f"plugin {plugin}: options of {self.kind} {name!r} must be an attrs class")
        problems = unsupported_fields(options)
        if problems:
            raise PluginError(
                f"plugin {plugin}: options of {self.kind} {name!r}: {problems[0]}; a recipe can give str, int, "
                "float, bool, Path, Literal[...], X | None, list[X], tuple[X, ...], dict[str, X] or an attrs class"
            )
        if name in self.entries:
            raise PluginError(
                f"{self.kind} {name!r} is registered by two plugins: {self.entries[name].plugin} and {plugin}"
            )
        self.entries[name] = Entry(implementation, options, plugin)

    def get(self, name: str, path: str) -> Entry:
        """The entry for `name`, given at recipe key `path`; an unknown name lists the known ones."""
        if name not in self.entries:
            available = ", ".join(sorted(self.entries)) or "(none registered)"
            raise ConfigError(f'{path}: unknown {self.kind} "{name}"; available: {available}')
        return self.entries[name]

    def names_by(self, plugin: str) -> list[str]:
        return [name for name, entry in self.entries.items() if entry.plugin == plugin]

    def forget(self, plugin: str) -> None:
        for name in self.names_by(plugin):
            del self.entries[name]


@attrs.frozen
class Registries:
    readers: Registry = attrs.field(factory=lambda: Registry("reader"))
    losses: Registry = attrs.field(factory=lambda: Registry("loss strategy"))
    loggers: Registry = attrs.field(factory=lambda: Registry("logger"))
    adapters: Registry = attrs.field(factory=lambda: Registry("adapter"))
    evaluators: Registry = attrs.field(factory=lambda: Registry("evaluator"))
    commands: dict[str, str] = attrs.field(factory=dict)  # command name -> plugin


def collect(pm: PluginManager, cli: click.Group, *, strict: bool = True) -> Registries:
    """Call every plugin's hooks, recording which plugin registered what; plugin commands go on `cli`.

    A local plugin's mistake raises at once. An installed plugin whose hook fails is set aside as
    broken (see manager.py), with all it registered; with `strict`, that is an error at the end.
    """
    registries = Registries()
    registries.commands.update((name, CORE) for name in cli.commands)
    for hook_name, registry in (
        ("register_dataset_readers", registries.readers),
        ("register_loss_strategies", registries.losses),
        ("register_loggers", registries.loggers),
        ("register_adapters", registries.adapters),
        ("register_evaluators", registries.evaluators),
    ):
        # One impl at a time (not `pm.hook.<name>(...)`) so `register` knows which plugin calls it.
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            with _guard(pm, registries, cli, impl.plugin_name):
                impl.function(register=_register_for(registry, impl.plugin_name))
    for impl in pm.hook.register_commands.get_hookimpls():
        with _guard(pm, registries, cli, impl.plugin_name):
            _add_commands(registries, cli, impl)
    if strict:
        pm.raise_if_broken()
    return registries


def _add_commands(registries: Registries, cli: click.Group, impl: pluggy.HookImpl) -> None:
    before = dict(cli.commands)
    impl.function(cli=cli)
    for name, command in cli.commands.items():
        if before.get(name) is command:
            continue
        if name in before:
            first = registries.commands[name]
            cli.commands[name] = before[name]
            raise PluginError(f"command {name!r} is registered by two plugins: {first} and {impl.plugin_name}")
        registries.commands[name] = impl.plugin_name


@contextmanager
def _guard(pm: PluginManager, registries: Registries, cli: click.Group, plugin: str) -> Iterator[None]:
    """Errors of a local plugin propagate; an installed plugin's make it broken, undoing what it registered."""
    try:
        yield
    except Exception as e:
        if plugin not in pm.dists:
            raise
        pm.set_broken(plugin, e if isinstance(e, PluginError) else f"{type(e).__name__}: {e}")
        for registry in (registries.readers, registries.losses, registries.loggers):
            registry.forget(plugin)
        for name in [name for name, owner in registries.commands.items() if owner == plugin]:
            del registries.commands[name]
            cli.commands.pop(name, None)


def _register_for(registry: Registry, plugin: str) -> Callable[..., None]:
    def register(name: str, implementation: Any, options: type = NoOptions) -> None:
        registry.add(name, implementation, options, plugin)

    return register
