"""csm-adapt's built-in plugins, installed as the package `csm_adapt_plugins`.

Each module is registered through an entry point in the `csm_adapt` group of pyproject.toml, exactly
as a third-party plugin is; the engine never imports this package by name.
"""
