"""The README's commands name things that exist: commands and their options, files, make targets."""

import re
import shlex
from pathlib import Path

import click
import pytest

from csm_adapt.cli import cli

REPO = Path(__file__).parents[1]
README = (REPO / "README.md").read_text("utf-8")


def shell_lines() -> list[str]:
    """Lines of the README's bash blocks, continuations joined, comments dropped."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line:
                lines.append(line)
    return lines


def csm_adapt_invocations() -> list[list[str]]:
    calls = []
    for line in shell_lines():
        words = shlex.split(line)
        for i, word in enumerate(words):
            if word == "csm-adapt" or (word == "csm_adapt" and words[i - 1] == "-m"):
                calls.append(words[i + 1 :])
    return calls


def test_readme_shows_every_core_command():
    used = {words[0] for words in csm_adapt_invocations()}
    assert used == set(cli.commands)


@pytest.mark.parametrize("words", csm_adapt_invocations(), ids=" ".join)
def test_readme_command_options_exist(words):
    command = cli.commands[words[0]]
    options = {opt for param in command.params if isinstance(param, click.Option) for opt in param.opts}
    for word in words[1:]:
        if word.startswith("--"):
            assert word in options, f"{word} is not an option of `csm-adapt {words[0]}`"


def test_readme_files_and_make_targets_exist():
    makefile = (REPO / "Makefile").read_text()
    for line in shell_lines():
        words = shlex.split(line)
        if words[0] == "make":
            assert re.search(rf"^{words[1]}:", makefile, re.M), line
        for word in words:
            if re.fullmatch(r"(recipes|benchmarks|tests)/[\w/.-]+\.(py|toml)", word):
                assert (REPO / word).is_file(), word


def test_make_help_lists_every_target_with_a_description():
    import subprocess

    result = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    listed = {line.split()[1] for line in result.stdout.splitlines()}
    targets = set(re.findall(r"^\.PHONY: (.*)$", (REPO / "Makefile").read_text(), re.M)[0].split())
    assert listed == targets
    assert all(len(line.split()) > 2 for line in result.stdout.splitlines())  # each with its description


def test_make_setup_shows_installation_progress():
    makefile = (REPO / "Makefile").read_text()
    install = [line for line in makefile.splitlines() if "pip install" in line]
    assert install and all("-q" not in line.split() and "--progress-bar on" in line for line in install)
