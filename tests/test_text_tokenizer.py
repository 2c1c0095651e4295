from __future__ import annotations

import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from csm_adapt.errors import CsmAdaptError
from csm_adapt.model.text_tokenizer import TextTokenizer, normalize_text

OFFLINE_JSON = Path(__file__).resolve().parents[1] / "csm_adapt" / "assets" / "offline-tokenizer.json"


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer.load("offline")


def test_every_encode_is_wrapped_in_bos_and_eos(tok):
    ids = tok.encode("Bonjour, le monde.")
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.bos_id not in ids[1:-1] and tok.eos_id not in ids[1:-1]
    assert tok.decode(ids) == "Bonjour, le monde."


def test_speaker_prefix(tok):
    with_speaker = tok.encode("Salut !", speaker=3)
    assert with_speaker[1:-1] == tok.encode("[3]Salut !")[1:-1]
    assert tok.decode(with_speaker) == "[3]Salut !"
    assert tok.encode("Salut !", speaker=0) != tok.encode("Salut !")


def test_offline_tokenizer_fits_the_micro_vocab(tok):
    assert tok.vocab_size <= 1024
    text = "« Où est la gare ? » demanda-t-elle, 日本語 😀 ça coûte 12 €."
    ids = tok.encode(text)
    assert max(ids) < 1024
    assert tok.decode(ids) == text  # byte-level: any text survives


def test_normalization_gives_one_spelling(tok):
    plain = "L'été dernier, c'est ça."
    variants = [
        unicodedata.normalize("NFD", plain),
        "L\u2019été dernier, c\u2018est ça.",
        "  L'été\u00a0dernier,\tc'est\u202fça.\n",
        "L'été   dernier,\n\nc'est ça.",
    ]
    assert normalize_text(plain) == plain
    for text in variants:
        assert normalize_text(text) == plain
        assert tok.encode(text, speaker=1) == tok.encode(plain, speaker=1)


def test_load_from_file_and_directory(tmp_path, tok):
    shutil.copy(OFFLINE_JSON, tmp_path / "tokenizer.json")
    from_dir = TextTokenizer.load(str(tmp_path))
    from_file = TextTokenizer.load(str(tmp_path / "tokenizer.json"))
    for loaded in (from_dir, from_file):
        assert loaded.encode("Merci beaucoup.", speaker=2) == tok.encode("Merci beaucoup.", speaker=2)
        assert loaded.identity == tok.identity  # content, not path, identifies a tokenizer


def test_identity_tracks_the_content(tmp_path, tok):
    other = tmp_path / "other.json"
    # Same tokenizer with one extra token: a different tokenizer for the data index.
    from tokenizers import Tokenizer

    t = Tokenizer.from_file(str(OFFLINE_JSON))
    t.add_tokens(["<extra>"])
    t.save(str(other))
    assert TextTokenizer.load(str(other)).identity != tok.identity


def test_directory_without_tokenizer_json(tmp_path):
    with pytest.raises(CsmAdaptError, match="no tokenizer.json") as err:
        TextTokenizer.load(str(tmp_path))
    assert str(tmp_path) in str(err.value)


def test_missing_local_file(tmp_path):
    with pytest.raises(CsmAdaptError, match="not found"):
        TextTokenizer.load(str(tmp_path / "missing.json"))


def test_invalid_json(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(CsmAdaptError, match="not a valid tokenizers JSON") as err:
        TextTokenizer.load(str(bad))
    assert str(bad) in str(err.value)


def test_tokenizer_without_llama_special_tokens(tmp_path):
    from tokenizers import Tokenizer, models

    path = tmp_path / "nospecial.json"
    Tokenizer(models.BPE()).save(str(path))
    with pytest.raises(CsmAdaptError, match="lacks the special tokens"):
        TextTokenizer.load(str(path))


def test_hub_id_offline_without_cache_explains_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    # huggingface_hub reads these at import; a fresh interpreter sees them.
    code = "from csm_adapt.model.text_tokenizer import TextTokenizer\nTextTokenizer.load('unsloth/Llama-3.2-1B')\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "CsmAdaptError" in proc.stderr
    for hint in ("unsloth/Llama-3.2-1B", "HF_TOKEN", "HF_HUB_OFFLINE", "local tokenizer.json"):
        assert hint in proc.stderr


def test_offline_tokenizer_regenerates_identically(tmp_path):
    script = OFFLINE_JSON.parent / "make_offline_tokenizer.py"
    sys.path.insert(0, str(script.parent))
    try:
        import make_offline_tokenizer
    finally:
        sys.path.remove(str(script.parent))
    rebuilt = tmp_path / "offline-tokenizer.json"
    make_offline_tokenizer.build().save(str(rebuilt), pretty=False)
    assert rebuilt.read_bytes() == OFFLINE_JSON.read_bytes()
