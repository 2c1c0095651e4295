"""Recipes: the attrs schema of every table (`schema`, and `sweep` for `[sweep]`), strict building
from parsed TOML with key paths in every error (`structure`), `key=value` overrides (`overrides`),
TOML reading/writing (`toml_io`), and loading a recipe with its plugins (`recipe`).

May import: `csm_adapt.errors`, `plugin_api`, the plugin engine and the model's named shapes
(`model.config`); never data, training, sweeps or commands (tests/test_architecture.py enforces it).
"""
