"""The example plugin package: built, installed (into a temporary directory, not the venv) and used."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from csm_adapt.config.recipe import load_recipe
from csm_adapt.errors import CsmAdaptError
from csm_adapt.plugin_api import Sample, Turn

EXAMPLE = Path(__file__).parents[1] / "plugins" / "examples" / "csm-adapt-commonvoice"

TSV = (
    "client_id\tpath\tsentence\tup_votes\n"
    "f00d\tcommon_voice_fr_1.mp3\tIl a dit « oui ».\t2\n"
    "beef\tcommon_voice_fr_2.mp3\tBonsoir.\t1\n"
    "f00d\tcommon_voice_fr_3.mp3\t  Merci  \t0\n"
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    # Built from a copy: setuptools leaves build/ and *.egg-info/ next to the sources it builds.
    source = shutil.copytree(EXAMPLE, tmp_path_factory.mktemp("src") / EXAMPLE.name)
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    return target


@pytest.fixture
def dataset(tmp_path) -> Path:
    root = tmp_path / "cv" / "fr"
    root.mkdir(parents=True)
    (root / "dev.tsv").write_text(TSV)
    return root


def run_cli(installed: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "csm_adapt", *args], capture_output=True, text=True, env=env)


def write_recipe(tmp_path: Path, root: Path) -> Path:
    path = tmp_path / "cv.toml"
    path.write_text(
        f"""
plugins = ["loss.py"]
[model]
text_tokenizer = "offline"
audio_codec = "offline"
[data]
out = "prepared"
[data.reader]
name = "commonvoice"
root = "{root}"
split = "dev"
[loss]
strategy = "any"
[output]
run_dir = "runs/cv"
"""
    )
    # Loss strategies come with the training issue; a recipe needs one to validate.
    (tmp_path / "loss.py").write_text(
        "from csm_adapt import hookimpl\n\n"
        "@hookimpl\n"
        "def register_loss_strategies(register):\n"
        "    register('any', lambda options: None)\n"
    )
    return path


def test_installed_example_is_listed(installed):
    result = run_cli(installed, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    row = {row["name"]: row for row in json.loads(result.stdout)}["commonvoice"]
    assert (row["version"], row["source"], row["readers"]) == ("0.1.0", "csm-adapt-commonvoice", ["commonvoice"])


def test_recipe_using_the_example_validates(installed, dataset, tmp_path):
    result = run_cli(installed, "validate", str(write_recipe(tmp_path, dataset)))
    assert result.returncode == 0, result.stderr
    assert 'name = "commonvoice"' in result.stdout
    bad = run_cli(installed, "validate", str(write_recipe(tmp_path, dataset)), "data.reader.split=test")
    assert bad.returncode == 2
    assert "test.tsv: no such file" in bad.stderr


def test_example_reader_yields_samples(installed, dataset, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(installed))  # entry points are found through sys.path too
    recipe = load_recipe(write_recipe(tmp_path, dataset))
    samples = list(recipe.data.reader.create().read())
    tsv = dataset / "dev.tsv"
    assert samples == [
        Sample(
            "common_voice_fr_1",
            (Turn(0, "Il a dit « oui ».", dataset / "clips" / "common_voice_fr_1.mp3"),),
            f"{tsv}:2",
        ),
        Sample("common_voice_fr_2", (Turn(1, "Bonsoir.", dataset / "clips" / "common_voice_fr_2.mp3"),), f"{tsv}:3"),
        Sample("common_voice_fr_3", (Turn(0, "Merci", dataset / "clips" / "common_voice_fr_3.mp3"),), f"{tsv}:4"),
    ]


def test_example_reader_reports_malformed_rows(installed, dataset, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(installed))
    (dataset / "dev.tsv").write_text(TSV + "cafe\tcommon_voice_fr_4.mp3\n")
    reader = load_recipe(write_recipe(tmp_path, dataset)).data.reader.create()
    with pytest.raises(CsmAdaptError, match=f"{dataset / 'dev.tsv'}:5: empty path or sentence"):
        list(reader.read())
    (dataset / "dev.tsv").write_text("client_id\tfile\tsentence\n")
    with pytest.raises(CsmAdaptError, match="dev.tsv:1: missing column\\(s\\) path"):
        list(reader.read())


def test_example_packages_own_tests_pass(installed):
    env = {**os.environ, "PYTHONPATH": str(installed)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        capture_output=True,
        text=True,
        env=env,
        cwd=EXAMPLE,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
