"""`csm-adapt recipes`: the recipes that ship inside the package, listed and copied out to edit."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import click

from csm_adapt.config import toml_io
from csm_adapt.errors import ConfigError
from csm_adapt.terminal import make_console


def shipped_dir() -> Path:
    """The package's recipes folder (recipes/ of the source tree, installed as csm_adapt/recipes)."""
    return Path(str(resources.files("csm_adapt") / "recipes"))


def shipped() -> dict[str, Path]:
    return {path.stem: path for path in sorted(shipped_dir().glob("*.toml"))}


def description(path: Path) -> str:
    """A recipe's first comment line."""
    for line in path.read_text("utf-8").splitlines():
        if line.startswith("#") and line.strip("# "):
            return line.strip("# ").rstrip()
    return ""


def inputs(path: Path) -> list[str]:
    """The recipe's relative string values that name a file or folder beside it (what it reads)."""
    found: list[str] = []

    def walk(value) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str) and value and not Path(value).is_absolute() and (path.parent / value).exists():
            found.append(value)

    walk(toml_io.read_toml(path))
    # A file inside a folder that is copied anyway is not listed again.
    return [
        rel
        for rel in dict.fromkeys(found)
        if not any(Path(rel).is_relative_to(other) for other in found if other != rel)
    ]


@click.group(invoke_without_command=True)
@click.pass_context
def recipes(ctx: click.Context) -> None:
    """List the recipes that ship with csm-adapt; the `copy` subcommand copies one to edit.

    Example: csm-adapt recipes
    """
    if ctx.invoked_subcommand is not None:
        return
    console = make_console()
    available = shipped()
    width = max(len(name) for name in available)
    for name, path in available.items():
        console.print(f"{name:<{width}}  {description(path)}", markup=False, highlight=False)
    console.print(f"\ncopy one to edit it: csm-adapt recipes copy NAME DEST  (shipped in {shipped_dir()})")


@recipes.command()
@click.argument("name")
@click.argument("dest", type=click.Path(path_type=Path), default=Path("."))
def copy(name: str, dest: Path) -> None:
    """Copy recipe NAME into the folder DEST (default: here), with the files it reads beside it.

    DEST may also name the new .toml file. Nothing is overwritten. The copy runs from any folder:
    what a recipe reads is relative to it, what it writes relative to where you run.

    Example: csm-adapt recipes copy demo my-demo
    """
    available = shipped()
    if name not in available:
        raise ConfigError(f'no shipped recipe "{name}"; available: {", ".join(available)}')
    source = available[name]
    target = dest if dest.suffix == ".toml" else dest / source.name
    files = [(source, target)] + [(source.parent / rel, target.parent / rel) for rel in inputs(source)]
    existing = [str(to) for _, to in files if to.exists()]
    if existing:
        raise ConfigError(f"{existing[0]} already exists; copy somewhere else or delete it first")
    target.parent.mkdir(parents=True, exist_ok=True)
    for src, to in files:
        if src.is_dir():
            shutil.copytree(src, to)
        else:
            to.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, to)
    console = make_console()
    console.print(f"wrote {target}" + (f" and {', '.join(str(to) for _, to in files[1:])}" if files[1:] else ""))
    console.print(f"edit it, then: csm-adapt validate {target}", markup=False, highlight=False)
