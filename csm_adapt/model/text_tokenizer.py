"""Text -> token ids the way CSM expects them: `BOS [speaker]text EOS`, on normalized text."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from importlib import resources
from pathlib import Path

from tokenizers import Tokenizer, processors

from csm_adapt.errors import CsmAdaptError
from csm_adapt.model.sources import is_local

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
TOKENIZER_FILE = "tokenizer.json"

# The Llama-3 tokenizer is byte-level with no normalizer, so these variants would otherwise
# give different ids for text that reads the same (and NFD text costs far more tokens).
_CHAR_MAP = str.maketrans({"\u2019": "'", "\u2018": "'", "\u00a0": " ", "\u202f": " "})
_WHITESPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """NFC, plain apostrophes and spaces, whitespace runs collapsed, stripped.

    The single text policy, used for training data and generation prompts alike.
    """
    text = unicodedata.normalize("NFC", text).translate(_CHAR_MAP)
    return _WHITESPACE.sub(" ", text).strip()


class TextTokenizer:
    """A `tokenizers.Tokenizer` whose every encode is wrapped as `BOS text EOS`."""

    def __init__(self, tokenizer: Tokenizer, source: str):
        self.source = source
        bos_id, eos_id = tokenizer.token_to_id(BOS_TOKEN), tokenizer.token_to_id(EOS_TOKEN)
        if bos_id is None or eos_id is None:
            raise CsmAdaptError(f"tokenizer {source!r} lacks the special tokens {BOS_TOKEN} / {EOS_TOKEN}")
        # Stock Llama-3 adds only BOS; CSM was trained with BOS and EOS around every segment.
        # Replacing the post-processor (Llama's also held a ByteLevel step) changes only offsets.
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{BOS_TOKEN} $A {EOS_TOKEN}", special_tokens=[(BOS_TOKEN, bos_id), (EOS_TOKEN, eos_id)]
        )
        self._tokenizer = tokenizer
        self.bos_id, self.eos_id = bos_id, eos_id
        # Content hash of the tokenizer as used (post-processor included), not its source, so the
        # same tokenizer reached through a hub id or a local copy indexes data the same way.
        digest = hashlib.sha256(tokenizer.to_str().encode()).hexdigest()
        self.identity = f"tokenizer-sha256:{digest[:16]}"

    @classmethod
    def load(cls, source: str) -> TextTokenizer:
        """Load from "offline" (the bundled tokenizer), a local `tokenizer.json` or a folder
        holding one, or a Hugging Face hub repo id such as `unsloth/Llama-3.2-1B`."""
        path = _resolve(source)
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises a bare Exception for bad JSON
            raise CsmAdaptError(f"{path}: not a valid tokenizers JSON file ({e})") from e
        return cls(tokenizer, source)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, speaker: int | None = None) -> list[int]:
        """Ids of `BOS [speaker]text EOS`, with `text` normalized first."""
        text = normalize_text(text)
        if speaker is not None:
            text = f"[{speaker}]{text}"
        return self._tokenizer.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        """Text of `ids`, special tokens left out."""
        return self._tokenizer.decode(ids, skip_special_tokens=True)


def _resolve(source: str) -> Path:
    """Path of the tokenizer JSON for `source`, downloading it from the hub if need be."""
    if source == "offline":
        return Path(str(resources.files("csm_adapt") / "assets" / "offline-tokenizer.json"))
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / TOKENIZER_FILE
        if not path.is_file():
            raise CsmAdaptError(f"{source}: folder has no {TOKENIZER_FILE}")
        return path
    if path.is_file():
        return path
    if source.endswith(".json") or is_local(source):
        raise CsmAdaptError(f"{source}: tokenizer file not found (no such file or directory)")
    return _download(source)


def _download(repo_id: str) -> Path:
    # Imported here: the hub client is only needed for hub ids.
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, TOKENIZER_FILE))
    except (HfHubHTTPError, LocalEntryNotFoundError, HFValidationError, OSError) as e:
        raise CsmAdaptError(
            f"cannot get {TOKENIZER_FILE} for tokenizer {repo_id!r} ({type(e).__name__}: {e}). "
            "Pass a local tokenizer.json or a folder holding one; for a gated repo such as "
            "meta-llama/Llama-3.2-1B set HF_TOKEN (or use the ungated unsloth/Llama-3.2-1B); "
            "offline, set HF_HUB_OFFLINE=1 with the file already in the Hugging Face cache."
        ) from e
