"""csm-adapt: finetune Sesame's CSM-1B on new languages and voices."""

from __future__ import annotations

from csm_adapt import _moved

__version__ = "0.1.0"

_moved.install()


def __getattr__(name: str):
    # Lazy so that `import csm_adapt` stays cheap; plugins write `from csm_adapt import hookimpl`.
    if name == "hookimpl":
        from csm_adapt.plugin_engine.hookspecs import hookimpl

        return hookimpl
    raise AttributeError(f"module 'csm_adapt' has no attribute {name!r}")
