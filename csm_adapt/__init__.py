"""csm-adapt: finetune Sesame's CSM-1B on new languages and voices."""

from __future__ import annotations

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy so that `import csm_adapt` stays cheap; plugins write `from csm_adapt import hookimpl`.
    if name == "hookimpl":
        from csm_adapt.hooks import hookimpl

        return hookimpl
    raise AttributeError(f"module 'csm_adapt' has no attribute {name!r}")
