"""Every `csm-adapt` example in the commands' --help parses, names files that exist and paths in the
run layout, and runs when it can run offline (issue 14, item 11)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

from csm_adapt.cli import cli

REPO = Path(__file__).parents[1]
# Cheap commands that need no network, no GPU and no dataset: their examples are run for real.
OFFLINE = {"validate", "plugins", "recipes", "memory"}
# A path into a run directory, as `csm-adapt run` lays it out.
RUN_PATH = re.compile(r"runs/[\w.-]+/(checkpoints/(final|best|step-\d{6})|recipe\.toml|best\.toml)")


def help_examples() -> list[tuple[str, list[str]]]:
    """(command whose --help shows it, the example's words after `csm-adapt`)."""
    examples = []
    for name, command in cli.commands.items():
        for line in (command.help or "").splitlines():
            for match in re.finditer(r"csm-adapt ([^,\n]+)", line):
                examples.append((name, shlex.split(match.group(1))))
    return examples


EXAMPLES = help_examples()


def test_most_commands_show_an_example():
    shown = {name for name, _ in EXAMPLES}
    assert {"run", "prepare", "validate", "generate", "convert", "sweep"} <= shown


@pytest.mark.parametrize(("shown_in", "words"), EXAMPLES, ids=[" ".join(w) for _, w in EXAMPLES])
def test_help_example_parses_and_names_what_exists(shown_in, words, monkeypatch, tmp_path):
    # In a folder with the repository's recipes and the run paths the example names, as after a run.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").symlink_to(REPO / "recipes")
    for word in words[1:]:
        if re.fullmatch(r"recipes/[\w.-]+\.toml", word):
            assert (REPO / word).is_file(), f"`csm-adapt {' '.join(words)}` (in {shown_in} --help): no {word}"
        elif word.startswith("runs/"):
            assert RUN_PATH.fullmatch(word), f"{word} (in {shown_in} --help) is not a path a run writes"
            (tmp_path / word).mkdir(parents=True) if "checkpoints/" in word else None
        elif word.startswith("data/"):
            (tmp_path / word).mkdir(parents=True)  # a user's dataset or recordings folder
    command = cli.commands[words[0]]
    try:
        command.make_context(words[0], list(words[1:]), resilient_parsing=False)
    except click.exceptions.Exit:
        pass


@pytest.mark.parametrize(
    "words", [w for _, w in EXAMPLES if w[0] in OFFLINE], ids=[" ".join(w) for _, w in EXAMPLES if w[0] in OFFLINE]
)
def test_offline_help_example_runs(words, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "csm_adapt", *words], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
