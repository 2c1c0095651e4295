"""The built-in dataset readers (json, ljspeech, conversation) on plain and ugly metadata."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import pytest

from csm_adapt.config.structure import from_dict
from csm_adapt.errors import ConfigError, CsmAdaptError
from csm_adapt.plugin_api import Malformed, Sample, Turn
from csm_adapt.plugin_engine.manager import load_plugins
from csm_adapt.plugin_engine.registries import collect
from csm_adapt_plugins.conversation_reader import ConversationOptions, ConversationReader
from csm_adapt_plugins.json_reader import JsonOptions, JsonReader
from csm_adapt_plugins.ljspeech_reader import LJSpeechOptions, LJSpeechReader


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def one_malformed(reader) -> str:
    """The detail of the one record `reader` rejects; every other record is still read."""
    items = list(reader.read())
    bad = [item for item in items if isinstance(item, Malformed)]
    assert len(bad) == 1 and all(isinstance(item, Sample) for item in items if item not in bad), items
    assert bad[0].detail.startswith(bad[0].source)
    return bad[0].detail


def test_builtin_readers_register_through_their_entry_points():
    registries = collect(load_plugins(), click.Group())
    plugins = {name: entry.plugin for name, entry in registries.readers.entries.items()}
    assert plugins == {
        "json": "json_reader",
        "ljspeech": "ljspeech_reader",
        "conversation": "conversation_reader",
        "hf_datasets": "hf_datasets_reader",
    }


# --- json ---------------------------------------------------------------------------------------


def test_json_lines_resolve_paths_and_keep_missing_fields_none(tmp_path):
    meta = write(
        tmp_path / "meta" / "clips.jsonl",
        '{"text": "Bonjour.", "path": "a.wav"}\n'
        "\n"
        '{"text": "NA", "path": "/abs/b.flac", "start": 1, "end": 2.5, "speaker": 3, "duration": 9}\n'
        '{"text": "Oui", "path": "sub/c.wav", "start": null, "speaker": null, "id": "custom"}\n',
    )
    samples = list(JsonReader(JsonOptions(path=meta, absolute_paths=True)).read())
    assert [s.turns for s in samples] == [
        (Turn(None, "Bonjour.", tmp_path / "meta" / "a.wav"),),
        (Turn(3, "NA", Path("/abs/b.flac"), start=1.0, end=2.5),),
        (Turn(None, "Oui", tmp_path / "meta" / "sub" / "c.wav"),),
    ]
    assert [s.id for s in samples] == ["a", "/abs/b@1", "custom"]
    assert [s.source for s in samples] == [f"{meta}:1", f"{meta}:3", f"{meta}:4"]


def test_json_list_gives_each_item_its_line(tmp_path):
    meta = write(
        tmp_path / "clips.json",
        '[\n  {"text": "un", "path": "1.wav"},\n\n  {"text": "deux",\n   "path": "2.wav"}\n]\n',
    )
    samples = list(JsonReader(JsonOptions(path=meta)).read())
    assert [(s.turns[0].text, s.source) for s in samples] == [("un", f"{meta}:2"), ("deux", f"{meta}:4")]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"path": "a.wav"}', r":2: missing required key 'text'"),
        ('{"text": "x", "path": "a.wav", "speaker": "3"}', r":2: key 'speaker': expected int, got str"),
        ('{"text": "x", "path": "a.wav", "speaker": true}', r":2: key 'speaker': expected int, got bool"),
        ('{"text": "x", "path": "a.wav", "start": NaN}', r":2: key 'start': expected a finite number"),
        ('{"text": "x", "path": "a.wav", "end": "3s"}', r":2: key 'end': expected a finite number"),
        ('{"text": "x", "path": 3}', r":2: key 'path': expected str"),
        ('{"text": "x", "path": "a.wav"', r":2: invalid JSON"),
        ('["x"]', r":2: expected a JSON object, got list"),
    ],
)
def test_json_bad_lines_name_file_line_and_key(tmp_path, line, message):
    meta = write(
        tmp_path / "m.jsonl", '{"text": "ok", "path": "a.wav"}\n' + line + '\n{"text": "b", "path": "b.wav"}\n'
    )
    detail = one_malformed(JsonReader(JsonOptions(path=meta)))
    assert re.search(message, detail) and str(meta) in detail


def test_json_list_syntax_error_names_its_line(tmp_path):
    meta = write(tmp_path / "m.json", '[{"text": "a", "path": "a.wav"},\n {"text": "b" "path": "b.wav"}]')
    with pytest.raises(CsmAdaptError, match=r"m.json:2: invalid JSON"):
        list(JsonReader(JsonOptions(path=meta)).read())


def test_json_missing_metadata_fails_when_built(tmp_path):
    with pytest.raises(CsmAdaptError, match="nope.jsonl: no such file"):
        JsonReader(JsonOptions(path=tmp_path / "nope.jsonl"))


# --- ljspeech -----------------------------------------------------------------------------------


def test_ljspeech_keeps_quotes_accents_and_na_and_prefers_normalized(tmp_path):
    write(
        tmp_path / "metadata.csv",
        'q1|"Allons-y", dit-il.|\n'
        'q2|Il a dit "oui|Il a dit "oui\n'
        "n1|Le garçon a mangé 3 pommes.|Le garçon a mangé trois pommes.\n"
        "n2|NA|NA\n"
        "n3|« Où est la gare ? »\n",
    )
    samples = list(LJSpeechReader(LJSpeechOptions(root=tmp_path)).read())
    assert [(s.id, s.turns[0].text) for s in samples] == [
        ("q1", '"Allons-y", dit-il.'),  # empty normalized column: the text column
        ("q2", 'Il a dit "oui'),  # an unbalanced quote does not merge columns or lines
        ("n1", "Le garçon a mangé trois pommes."),
        ("n2", "NA"),
        ("n3", "« Où est la gare ? »"),
    ]
    assert samples[2].turns[0].audio == tmp_path / "wavs" / "n1.wav"
    assert samples[2].source == f"{tmp_path / 'metadata.csv'}:3"
    assert all(s.turns[0].speaker is None for s in samples)


def test_ljspeech_speaker_column_fixed_speaker_and_speakers_file(tmp_path):
    write(tmp_path / "metadata.csv", "a|2|Salut.\nb|0|Oui.\n")
    samples = list(LJSpeechReader(LJSpeechOptions(root=tmp_path, columns="id|speaker|text")).read())
    assert [(s.turns[0].speaker, s.turns[0].text) for s in samples] == [(2, "Salut."), (0, "Oui.")]

    write(tmp_path / "other.csv", "a|Salut.|Salut.\nb|Oui.|Oui.\n")
    fixed = LJSpeechReader(LJSpeechOptions(root=tmp_path, metadata="other.csv", speaker=7))
    assert [s.turns[0].speaker for s in fixed.read()] == [7, 7]

    speakers = write(tmp_path / "speakers.json", json.dumps({"a": 1, "b": 4}))
    mapped = LJSpeechReader(LJSpeechOptions(root=tmp_path, metadata="other.csv", speakers=speakers))
    assert [s.turns[0].speaker for s in mapped.read()] == [1, 4]


def test_ljspeech_options_give_speakers_one_way_only():
    with pytest.raises(ConfigError, match="data.reader.speakers: give speakers one way only"):
        from_dict(LJSpeechOptions, {"root": "/x", "speaker": 1, "columns": "id|speaker|text"}, "data.reader")


@pytest.mark.parametrize(
    ("line", "columns", "message"),
    [
        ("a|b|c|d\n", "id|text|normalized_text", r":2: expected 2 or 3 fields"),
        ("a|x|Salut\n", "id|speaker|text", r":2: speaker column: expected an integer, got 'x'"),
        ("a|Salut\n", "id|speaker|text", r":2: expected 3 fields"),
    ],
)
def test_ljspeech_bad_rows_name_file_and_line(tmp_path, line, columns, message):
    write(tmp_path / "metadata.csv", "ok|1|Bien.\n" + line)
    assert re.search(message, one_malformed(LJSpeechReader(LJSpeechOptions(root=tmp_path, columns=columns))))


def test_ljspeech_clip_missing_from_speakers_file(tmp_path):
    write(tmp_path / "metadata.csv", "a|Salut.\nb|Oui.\n")
    speakers = write(tmp_path / "speakers.json", '{"a": 0}')
    detail = one_malformed(LJSpeechReader(LJSpeechOptions(root=tmp_path, speakers=speakers)))
    assert re.search(r"metadata.csv:2: clip 'b' is not in .*speakers.json", detail)


def test_ljspeech_reads_the_shipped_demo_set():
    root = Path(__file__).parents[1] / "recipes" / "demo_data"
    reader = LJSpeechReader(LJSpeechOptions(root=root, speakers=root / "speakers.json"))
    samples = list(reader.read())
    assert len(samples) == 40
    assert all(s.turns[0].audio.is_file() for s in samples)
    assert samples[2].turns[0].text.startswith('"Allons-y"')
    assert {s.turns[0].speaker for s in samples} == {0, 1, 2, 3}


# --- conversation -------------------------------------------------------------------------------

DIALOGUE = {
    "id": "d1",
    "turns": [
        {"speaker": 0, "text": "Salut !", "path": "a.wav"},
        {"speaker": 1, "text": "Bonjour.", "path": "long.wav", "start": 1.5, "end": 3, "target": False},
        {"speaker": 0, "text": "Ça va ?", "path": "c.wav"},
    ],
}


@pytest.mark.parametrize(
    ("options", "targets"),
    [
        ({}, [True, False, True]),
        ({"targets": "all"}, [True, True, True]),
        ({"targets": "last"}, [False, False, True]),
        ({"targets": "speakers", "target_speakers": [1]}, [False, True, False]),
    ],
)
def test_conversation_turns_and_targets(tmp_path, options, targets):
    meta = write(tmp_path / "d.jsonl", json.dumps(DIALOGUE) + "\n")
    reader = ConversationReader(from_dict(ConversationOptions, {"path": str(meta), **options}))
    (sample,) = reader.read()
    assert sample.id == "d1" and sample.source == f"{meta}:1"
    assert [t.target for t in sample.turns] == targets
    assert sample.turns[1] == Turn(1, "Bonjour.", tmp_path / "long.wav", 1.5, 3.0, targets[1])
    assert sample.turns[0].start is None and sample.turns[0].end is None


def test_conversation_options_need_target_speakers_exactly_with_speakers_mode():
    with pytest.raises(ConfigError, match="data.reader.target_speakers: give target_speakers exactly"):
        from_dict(ConversationOptions, {"path": "/x", "targets": "speakers"}, "data.reader")
    with pytest.raises(ConfigError, match="data.reader.target_speakers"):
        from_dict(ConversationOptions, {"path": "/x", "target_speakers": [0]}, "data.reader")


@pytest.mark.parametrize(
    ("dialogue", "message"),
    [
        ({"turns": DIALOGUE["turns"]}, r":1: key 'id'"),
        ({"id": "x", "turns": []}, r":1: key 'turns': expected a non-empty list"),
        ({"id": "x", "turns": [{"text": "a"}]}, r":1: turns\[0\]: missing required key 'path'"),
        ({"id": "x", "turns": [{"text": "a", "path": "a.wav", "target": "yes"}]}, r"turns\[0\]: key 'target'"),
    ],
)
def test_conversation_bad_records_name_line_turn_and_key(tmp_path, dialogue, message):
    meta = write(tmp_path / "d.jsonl", json.dumps(dialogue) + "\n")
    assert re.search(message, one_malformed(ConversationReader(ConversationOptions(path=meta))))


# --- encodings and paths (every built-in reader) ------------------------------------------------

READERS = {
    "json": (lambda root: JsonReader(JsonOptions(path=root / "m.jsonl")), '{{"text": "{text}", "path": "{path}"}}'),
    "conversation": (
        lambda root: ConversationReader(ConversationOptions(path=root / "m.jsonl")),
        '{{"id": "{path}", "turns": [{{"text": "{text}", "path": "{path}"}}]}}',
    ),
    "ljspeech": (lambda root: LJSpeechReader(LJSpeechOptions(root=root)), "{id}|{text}"),
}


def metadata(kind: str, root: Path, rows: list[tuple[str, str]], encoding="utf-8", bom=False) -> Path:
    make, template = READERS[kind]
    name = "metadata.csv" if kind == "ljspeech" else "m.jsonl"
    lines = [template.format(text=text, path=f"{clip}.wav", id=clip) for clip, text in rows]
    (root / name).write_bytes((b"\xef\xbb\xbf" if bom else b"") + "\n".join(lines).encode(encoding) + b"\n")
    return root / name


@pytest.mark.parametrize("kind", READERS)
def test_a_utf8_bom_does_not_lose_the_first_record(tmp_path, kind):
    metadata(kind, tmp_path, [("good_01", "Un."), ("good_02", "Deux.")], bom=True)
    samples = list(READERS[kind][0](tmp_path).read())
    assert [s.turns[0].audio.name for s in samples] == ["good_01.wav", "good_02.wav"]
    assert all(isinstance(s, Sample) and "\ufeff" not in s.id for s in samples)


@pytest.mark.parametrize("kind", READERS)
def test_non_utf8_metadata_stops_with_line_column_and_the_encoding_option(tmp_path, kind):
    meta = metadata(kind, tmp_path, [("a", "Un."), ("b", "Voilà l'été.")], encoding="latin-1")
    with pytest.raises(CsmAdaptError) as err:
        list(READERS[kind][0](tmp_path).read())
    column = meta.read_bytes().split(b"\n")[1].index(b"\xe0") + 1
    assert str(err.value) == (
        f"{meta}:2: not UTF-8 (byte 0xe0 at column {column}); convert it or set the reader's encoding option "
        '(data.reader.encoding, e.g. "latin-1")'
    )
    options = {"ljspeech": LJSpeechOptions(root=tmp_path, encoding="latin-1")}.get(kind)
    if kind == "json":
        options = JsonOptions(path=meta, encoding="latin-1")
    if kind == "conversation":
        options = ConversationOptions(path=meta, encoding="latin-1")
    reader = {"json": JsonReader, "conversation": ConversationReader, "ljspeech": LJSpeechReader}[kind](options)
    assert [s.turns[0].text for s in reader.read()] == ["Un.", "Voilà l'été."]
    with pytest.raises(ConfigError, match="data.reader.encoding: unknown encoding 'klingon'"):
        from_dict(LJSpeechOptions, {"root": str(tmp_path), "encoding": "klingon"}, "data.reader")


@pytest.mark.parametrize("kind", READERS)
def test_clip_paths_outside_the_dataset_folder_are_rejected(tmp_path, kind):
    root = tmp_path / "set"
    root.mkdir()
    metadata(kind, root, [("ok", "Un."), ("../../secret", "Deux."), ("sub/x", "Trois.")])
    detail = one_malformed(READERS[kind][0](root))
    assert "'../../secret.wav' leads outside the dataset folder" in detail and "refused" in detail
    if kind != "ljspeech":
        assert "absolute_paths = true" in detail


def test_absolute_paths_need_the_option(tmp_path):
    meta = write(tmp_path / "m.jsonl", '{"text": "x", "path": "/etc/passwd"}\n{"text": "y", "path": "y.wav"}\n')
    assert "absolute audio path '/etc/passwd' refused" in one_malformed(JsonReader(JsonOptions(path=meta)))
    samples = list(JsonReader(JsonOptions(path=meta, absolute_paths=True)).read())
    assert [s.turns[0].audio for s in samples] == [Path("/etc/passwd"), tmp_path / "y.wav"]
