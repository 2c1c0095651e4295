"""The plugin guide's tutorial works as written, and the example package ships inside csm-adapt
(issue 14, item 12)."""

from __future__ import annotations

import filecmp
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from csm_adapt.cli import cli

REPO = Path(__file__).parents[1]
DOCS = (REPO / "docs" / "plugins.md").read_text("utf-8")


def tutorial_files() -> dict[str, str]:
    """The tutorial's files, each as the code block under its **`name`** heading."""
    section = DOCS[DOCS.index("## Tutorial: from an empty folder") :]
    return dict(re.findall(r"\*\*`([\w./-]+)`\*\*[^\n]*\n(?:[^\n]*\n)*?```\w*\n(.*?)```", section, re.S))


def test_the_tutorial_package_tests_installs_and_registers(tmp_path):
    files = tutorial_files()
    assert set(files) == {"pyproject.toml", "csm_adapt_tsv.py", "tests/test_reader.py"}
    package = tmp_path / "csm-adapt-tsv"
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    env = {**os.environ, "PYTHONPATH": str(package)}
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=package,
        env=env,
        capture_output=True,
        text=True,
    )
    assert tests.returncode == 0 and "2 passed" in tests.stdout, tests.stdout + tests.stderr
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site)]
        + [str(package)],
        check=True,
        capture_output=True,
    )
    listed = subprocess.run(
        [sys.executable, "-m", "csm_adapt", "plugins", "--json"],
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
    )
    row = {row["name"]: row for row in json.loads(listed.stdout)}["tsv"]
    assert (row["source"], row["version"], row["readers"]) == ("csm-adapt-tsv", "0.1.0", ["tsv"])


def test_copy_example_writes_the_example_package(tmp_path):
    result = CliRunner().invoke(cli, ["plugins", "--copy-example", str(tmp_path)])
    assert result.exit_code == 0, result.output
    copied = tmp_path / "csm-adapt-commonvoice"
    source = REPO / "plugins" / "examples" / "csm-adapt-commonvoice"
    for name in ("pyproject.toml", "csm_adapt_commonvoice.py", "tests/test_reader.py"):
        assert filecmp.cmp(copied / name, source / name, shallow=False), name
    again = CliRunner().invoke(cli, ["plugins", "--copy-example", str(tmp_path)])
    assert again.exit_code == 2 and "already exists" in again.output


def test_the_wheel_ships_the_example_package():
    setup = (REPO / "setup.py").read_text()
    patterns = re.search(r'"csm_adapt_plugins": \[(.*?)\]', setup).group(1)
    shipped = {
        path.relative_to(REPO / "plugins")
        for pattern in re.findall(r'"([^"]+)"', patterns)
        for path in (REPO / "plugins").glob(pattern)
        if "__pycache__" not in path.parts
    }
    example = REPO / "plugins" / "examples" / "csm-adapt-commonvoice"
    wanted = {p.relative_to(REPO / "plugins") for p in example.rglob("*") if p.suffix in (".py", ".toml")}
    assert wanted and wanted <= shipped
