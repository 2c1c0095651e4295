"""The hook specifications plugins implement, and the `hookimpl` marker they use.

Hooks are register-callback style (as in simonw/llm): the engine passes a `register` function and the
plugin calls it once per thing it provides. Every hook here is documented in docs/plugins.md; a test
fails when one is not.
"""

from __future__ import annotations

import pluggy

PROJECT = "csm_adapt"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_dataset_readers(register):
    """Register dataset readers: `register(name, ReaderClass, options=OptionsClass)`.

    A reader is built as `ReaderClass(options)` and its `read()` yields `csm_adapt.plugin_api.Sample`s.
    """


@hookspec
def register_loss_strategies(register):
    """Register loss strategies: `register(name, StrategyClass, options=OptionsClass)`.

    A strategy is built as `StrategyClass(options)`; see `csm_adapt.plugin_api.LossStrategy`.
    """


@hookspec
def register_loggers(register):
    """Register metric loggers: `register(name, LoggerClass, options=OptionsClass)`.

    A logger is built as `LoggerClass(options, run_dir)`; see `csm_adapt.plugin_api.Logger`.
    """


@hookspec
def register_adapters(register):
    """Register adapters (LoRA and the like): `register(name, AdapterClass, options=OptionsClass)`.

    An adapter is built as `AdapterClass(options)`; see `csm_adapt.plugin_api.Adapter`.
    """


@hookspec
def register_evaluators(register):
    """Register evaluators: `register(name, EvaluatorClass, options=OptionsClass)`.

    An evaluator is built as `EvaluatorClass(options, context)`; see `csm_adapt.plugin_api.Evaluator`.
    """


@hookspec
def register_commands(cli):
    """Add click commands to the `csm-adapt` group, e.g. with `@cli.command()`."""


def hook_names() -> list[str]:
    return sorted(name for name, value in globals().items() if hasattr(value, f"{PROJECT}_spec"))
