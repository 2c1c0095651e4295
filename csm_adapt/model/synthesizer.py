"""Text (+ optional context clips) -> speech: a model with its text tokenizer and audio codec.

speech = Synthesizer.load("sesame/csm-1b", device="cuda")
[wav] = speech.generate(["Marie aime les pommes."], speaker=0)
save_wav("out.wav", wav)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import attrs
import torch

from csm_adapt.audio_io import load_audio
from csm_adapt.errors import ConfigError
from csm_adapt.model.audio_codec import AudioCodec
from csm_adapt.model.checkpoint import FRONTEND_FILE, load_model, resolve_checkpoint
from csm_adapt.model.csm import CSM
from csm_adapt.model.generation import FRAME_MS, generate_frames
from csm_adapt.model.rows import text_rows, utterance_rows
from csm_adapt.model.text_tokenizer import TextTokenizer

DEFAULT_TEXT_TOKENIZER = "unsloth/Llama-3.2-1B"
DEFAULT_AUDIO_CODEC = "kyutai/moshiko-pytorch-bf16"
# FRONTEND_FILE (csm_adapt.json) is written beside checkpoints that csm-adapt trains, so that a
# checkpoint made with the offline tokenizer and codec generates with them too.


@attrs.frozen
class Segment:
    """A context utterance: who said what, and how it sounded (a path or a 24 kHz mono tensor)."""

    speaker: int
    text: str
    audio: str | os.PathLike | torch.Tensor


@attrs.frozen
class Generated:
    audio: torch.Tensor  # [samples] float32 at 24 kHz
    frames: torch.Tensor  # [K, frames] the codes the audio was decoded from


def write_frontend(directory: str | os.PathLike, text_tokenizer: str, audio_codec: str) -> None:
    Path(directory, FRONTEND_FILE).write_text(
        json.dumps({"text_tokenizer": text_tokenizer, "audio_codec": audio_codec}, indent=2) + "\n"
    )


def _frontend_defaults(model_source: str | os.PathLike) -> dict:
    path = Path(model_source, FRONTEND_FILE)
    return json.loads(path.read_text()) if path.is_file() else {}


class Synthesizer:
    def __init__(self, model: CSM, text_tokenizer: TextTokenizer, audio_codec: AudioCodec):
        if text_tokenizer.vocab_size > model.args.text_vocab_size:
            raise ConfigError(
                f"text tokenizer {text_tokenizer.source!r} has {text_tokenizer.vocab_size} ids but the model's text "
                f"vocabulary holds {model.args.text_vocab_size}: they were not made for each other"
            )
        self.model = model
        self.text_tokenizer = text_tokenizer
        self.audio_codec = audio_codec

    @classmethod
    def load(
        cls,
        model: str | os.PathLike,
        *,
        text_tokenizer: str | None = None,
        audio_codec: str | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> Synthesizer:
        """Model from a hub id or a local checkpoint; tokenizer and codec from the arguments, else
        from the checkpoint's `csm_adapt.json`, else the sources CSM-1B was released with."""
        path = resolve_checkpoint(model)  # a hub id's snapshot holds its csm_adapt.json too
        return cls.around(
            load_model(path, device=device, dtype=dtype), path if path.is_dir() else path.parent,
            text_tokenizer=text_tokenizer, audio_codec=audio_codec, device=device,
        )  # fmt: skip

    @classmethod
    def around(
        cls,
        model: CSM,
        recorded_in: str | os.PathLike,
        *,
        text_tokenizer: str | None = None,
        audio_codec: str | None = None,
        device: str | torch.device = "cpu",
    ) -> Synthesizer:
        """A model already loaded (e.g. with an adapter on it); tokenizer and codec from the arguments,
        else from the `csm_adapt.json` in directory `recorded_in`, else CSM-1B's."""
        recorded = _frontend_defaults(recorded_in)
        return cls(
            model,
            TextTokenizer.load(text_tokenizer or recorded.get("text_tokenizer", DEFAULT_TEXT_TOKENIZER)),
            AudioCodec.load(audio_codec or recorded.get("audio_codec", DEFAULT_AUDIO_CODEC), device=device),
        )

    def _context_rows(self, context: Sequence[Segment]) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.model.num_codebooks
        wavs = [s.audio if isinstance(s.audio, torch.Tensor) else load_audio(s.audio) for s in context]
        codes = self.audio_codec.encode(wavs) if wavs else []
        rows = [utterance_rows(self.text_tokenizer.encode(s.text, s.speaker), c) for s, c in zip(context, codes)]
        empty = (torch.zeros(0, k + 1, dtype=torch.long), torch.zeros(0, k + 1, dtype=torch.bool))
        return (torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])) if rows else empty

    def generate(
        self,
        texts: Sequence[str],
        speaker: int,
        *,
        context: Sequence[Segment] = (),
        max_audio_ms: int = 10_000,
        temperature: float = 0.9,
        topk: int = 50,
        seed: int | None = None,
    ) -> list[Generated]:
        """Speech for each text (one batch), all after the same context segments."""
        k = self.model.num_codebooks
        ctx_tokens, ctx_mask = self._context_rows(context)
        prompts = []
        for text in texts:
            t, m = text_rows(self.text_tokenizer.encode(text, speaker), k)
            prompts.append((torch.cat([ctx_tokens, t]), torch.cat([ctx_mask, m])))
        device = next(self.model.parameters()).device
        generator = None if seed is None else torch.Generator(device).manual_seed(seed)
        frames = generate_frames(
            self.model, prompts, max_audio_ms // FRAME_MS, temperature=temperature, topk=topk, generator=generator
        )
        return [self._decode(f) for f in frames]

    def _decode(self, frames: torch.Tensor) -> Generated:
        if frames.shape[1] == 0:
            return Generated(audio=torch.zeros(0), frames=frames)
        # The heads have 2051 outputs but Mimi only 2048 codes; only an untrained model picks the
        # three extra ids, and the codec cannot decode them.
        codes = frames.clamp(max=self.audio_codec.codebook_size - 1)
        audio = self.audio_codec.decode(codes.unsqueeze(0).to(self.audio_codec.device))[0]
        return Generated(audio=audio.float().cpu(), frames=frames)
