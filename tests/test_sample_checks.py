"""`Sample` and `Turn` check their values when built, and a reader's bad sample names the reader (issue 14, item 3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from csm_adapt.config.schema import ReaderRef
from csm_adapt.errors import SampleError
from csm_adapt.plugin_api import NoOptions, Sample, Turn


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"speaker": "0"}, "speaker must be an int or None, got str '0'"),
        ({"speaker": True}, "speaker must be an int or None, got bool True"),
        ({"text": None}, "text must be a str, got NoneType None"),
        ({"audio": 3}, "audio must be a Path, a str or an AudioSource, got int 3"),
        ({"start": "1.5"}, "start must be a number of seconds or None, got str '1.5'"),
        ({"end": float}, "end must be a number of seconds or None"),
        ({"target": 1}, "target must be a bool, got int 1"),
    ],
)
def test_turn_rejects_wrong_values(kwargs, message):
    values = {"speaker": 0, "text": "Oui.", "audio": Path("a.wav")} | kwargs
    with pytest.raises(SampleError, match="^Turn\\(text=.*\\): " + message.replace("(", "\\(").replace(")", "\\)")):
        Turn(**values)


def test_turn_accepts_good_values_and_a_str_path():
    turn = Turn(None, "Oui.", "clips/a.wav", start=1, end=2.5, target=False)
    assert turn.audio == Path("clips/a.wav") and turn.start == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"turns": [Turn(0, "Oui.", Path("a.wav"))]},
            "turns must be a tuple of Turn \\(write tuple\\(turns\\)\\), got list",
        ),
        ({"turns": ()}, "turns is empty"),
        ({"turns": ({"speaker": 0},)}, "turns\\[0\\] must be a Turn, got dict"),
        ({"id": 7}, "id must be a non-empty str, got int 7"),
        ({"id": ""}, "id must be a non-empty str"),
    ],
)
def test_sample_rejects_wrong_values_naming_its_source(kwargs, message):
    values = {"id": "c1", "turns": (Turn(0, "Oui.", Path("a.wav")),), "source": "meta.csv:12"} | kwargs
    with pytest.raises(SampleError, match="^meta.csv:12: sample .*: " + message):
        Sample(**values)


class SloppyReader:
    """Reads one good sample, then makes a reader author's usual mistakes."""

    def __init__(self, options, mistake):
        self.mistake = mistake

    def read(self):
        yield Sample("ok", (Turn(0, "Oui.", Path("a.wav")),), "meta.csv:1")
        if self.mistake == "speaker":
            yield Sample("bad", (Turn("0", "Non.", Path("b.wav")),), "meta.csv:2")
        elif self.mistake == "list":
            yield Sample("bad", [Turn(0, "Non.", Path("b.wav"))], "meta.csv:2")
        else:
            yield {"id": "bad"}


@pytest.mark.parametrize(
    ("mistake", "message"),
    [
        (
            "speaker",
            r"Turn\(text='Non.'\): speaker must be an int or None, got str '0' \(the sample after meta.csv:1\)$",
        ),
        ("list", "meta.csv:2: sample 'bad': turns must be a tuple of Turn"),
        ("dict", "yielded dict {'id': 'bad'}, not a csm_adapt.plugin_api.Sample"),
    ],
)
def test_reader_ref_names_the_reader_of_a_bad_sample(mistake, message):
    ref = ReaderRef("sloppy", NoOptions(), lambda options: SloppyReader(options, mistake))
    samples = ref.read()
    assert next(samples).id == "ok"
    with pytest.raises(SampleError, match=rf'^reader "sloppy" \(.*SloppyReader\): {message}'):
        next(samples)
