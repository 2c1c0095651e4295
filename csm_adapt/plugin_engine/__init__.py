"""The plugin engine: hook specifications (`hookspecs`), finding and loading plugins from entry
points and recipe files (`manager`), and what they registered, by kind and name (`registries`).

It knows plugins only through hooks and entry points: it imports no built-in plugin by name, and
nothing of csm-adapt but `errors`, `plugin_api` and the strict builder `config.structure`
(tests/test_architecture.py enforces it).
"""
