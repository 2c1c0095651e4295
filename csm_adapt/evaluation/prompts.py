"""The eval set: what to say, in whose voice, and reference clips of that voice.

Either a JSONL prompts file, one prompt a line:

    {"text": "Marie aime les pommes.", "speaker": 0, "reference": "clips/marie.wav"}
    {"id": "q1", "text": "Où est la gare ?", "speaker": 1, "reference": ["a.wav", "b.wav"]}

(`speaker` defaults to 0; `reference` paths are relative to the file; a prompt without `reference`
gets the references of the other prompts of its speaker), or, by default, held-out validation
utterances of the prepared data with their own recording as reference.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path

import attrs
import torch

from csm_adapt.audio_io import load_audio
from csm_adapt.data.format import INDEX, read_index
from csm_adapt.data.storage import Store, open_store
from csm_adapt.errors import ConfigError

PROMPT_KEYS = ("id", "text", "speaker", "reference")


@attrs.frozen
class Reference:
    """A clip of the speaker: a file, or the `start`..`end` span (seconds) of one."""

    path: Path
    start: float | None = None
    end: float | None = None

    def load(self) -> torch.Tensor:
        return load_audio(self.path, start=self.start, end=self.end)


@attrs.frozen
class EvalPrompt:
    id: str
    text: str
    speaker: int | None
    references: tuple[Reference, ...] = ()


def read_prompts(path: Path) -> list[EvalPrompt]:
    """Prompts of a JSONL file; a malformed line is a ConfigError naming `file:line`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: prompts file not found")
    prompts = []
    for number, line in enumerate(path.read_text("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        prompts.append(_prompt(row, f"{path}:{number}", path.parent))
    if not prompts:
        raise ConfigError(f"{path}: no prompts")
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{path}: prompt ids must be unique, {sorted({i for i in ids if ids.count(i) > 1})} repeat")
    return _share_references(prompts)


def _prompt(row: object, where: str, base: Path) -> EvalPrompt:
    if not isinstance(row, dict):
        raise ConfigError(f'{where}: expected a JSON object like {{"text": ..., "speaker": 0}}')
    unknown = sorted(set(row) - set(PROMPT_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(PROMPT_KEYS)}")
    text, speaker = row.get("text"), row.get("speaker", 0)
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{where}: text: expected a non-empty string, got {text!r}")
    if not isinstance(speaker, int) or isinstance(speaker, bool):
        raise ConfigError(f"{where}: speaker: expected an integer, got {speaker!r}")
    reference = row.get("reference", [])
    reference = [reference] if isinstance(reference, str) else reference
    if not isinstance(reference, list) or not all(isinstance(r, str) for r in reference):
        raise ConfigError(f"{where}: reference: expected a path or a list of paths, got {reference!r}")
    clips = tuple(Reference((base / r).expanduser().absolute()) for r in reference)
    for clip in clips:
        if not clip.path.is_file():
            raise ConfigError(f"{where}: reference clip not found: {clip.path}")
    prompt_id = row.get("id", f"line-{where.rsplit(':', 1)[1]}")
    if not isinstance(prompt_id, str) or not prompt_id:
        raise ConfigError(f"{where}: id: expected a non-empty string, got {prompt_id!r}")
    return EvalPrompt(prompt_id, text, speaker, clips)


def _share_references(prompts: Sequence[EvalPrompt]) -> list[EvalPrompt]:
    by_speaker: dict[int | None, list[Reference]] = {}
    for p in prompts:
        by_speaker.setdefault(p.speaker, []).extend(r for r in p.references if r not in by_speaker.get(p.speaker, []))
    return [p if p.references else attrs.evolve(p, references=tuple(by_speaker[p.speaker])) for p in prompts]


def val_prompts(data_dir: Path | str | Store, limit: int) -> list[EvalPrompt]:
    """The first `limit` validation utterances of the prepared data (a folder, a URL or an open
    store; the last target turn of each sample), their own recording as the reference."""
    store = open_store(data_dir)
    shards = read_index(store).split("val").shards
    prompts: list[EvalPrompt] = []
    for shard in shards:
        with tarfile.open(fileobj=io.BytesIO(store.read_bytes(shard.name)), mode="r:") as tar:
            for member in tar:
                if len(prompts) >= limit:
                    return prompts
                if not member.name.endswith(".json"):
                    continue
                meta = json.loads(tar.extractfile(member).read().decode("utf-8"))
                turn = [t for t in meta["turns"] if t["target"]][-1]
                reference = Reference(Path(turn["audio"]), turn["start"], turn["end"])
                prompts.append(EvalPrompt(meta["id"], turn["text"], turn["speaker"], (reference,)))
    if not prompts:
        raise ConfigError(
            f"{store.member(INDEX)}: no validation utterances to evaluate on; "
            "set eval.prompts to a prompts file, or data.val_fraction > 0"
        )
    return prompts
