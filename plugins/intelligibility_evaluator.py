"""The `intelligibility` evaluator: can an ASR model understand what was said?

`cer` and `wer`: character and word error rates of a Whisper transcript against the prompt text,
both normalised first (`normalize`); the transcript is a note in the report. Following Seed-TTS-eval:
Whisper-large-v3 by default, the language forced (the `language` option; None lets Whisper detect
it, which is less reliable on poor speech), per-utterance error rates averaged. Edit distances from
jiwer. Whisper runs through transformers, on the training device.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import attrs
import torch

from csm_adapt import hookimpl
from csm_adapt.audio_io import SAMPLE_RATE
from csm_adapt.errors import CsmAdaptError
from csm_adapt.plugin_api import EvalContext, Evaluator, Utterance
from csm_adapt_plugins._hf_models import from_pretrained, identity, transformers_module

MODEL_RATE = 16_000
APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "ʼ": "'", "`": "'", "´": "'"})
NUMBER = re.compile(r"\d+(?:[.,]\d+)?")


def normalize(text: str, language: str | None) -> str:
    """Lower case, numbers written out in `language` (num2words, when it knows the language),
    apostrophes and punctuation removed, whitespace collapsed. French elisions (l'homme) split into
    two words; elsewhere an apostrophe joins (don't -> dont), so that both sides agree."""
    text = unicodedata.normalize("NFKC", text).translate(APOSTROPHES).lower()
    text = NUMBER.sub(lambda m: _number_words(m.group(0), language), text)
    text = text.replace("'", " " if language == "fr" else "")
    # Punctuation and symbols become spaces (dit-il -> dit il, vingt-trois -> vingt trois).
    text = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text)
    return " ".join(text.split())


def _number_words(digits: str, language: str | None) -> str:
    if language is None:
        return digits
    try:
        from num2words import num2words
    except ImportError:
        return digits
    value: int | float = float(digits.replace(",", ".")) if re.search(r"[.,]", digits) else int(digits)
    try:
        return num2words(value, lang=language)
    except NotImplementedError:  # a language num2words does not know: digits on both sides
        return digits


def error_rates(reference: str, hypothesis: str) -> dict[str, float]:
    """CER and WER of already normalised texts (an empty hypothesis scores 1: all deleted)."""
    import jiwer

    return {"cer": float(jiwer.cer(reference, hypothesis)), "wer": float(jiwer.wer(reference, hypothesis))}


@attrs.frozen(kw_only=True)
class IntelligibilityOptions:
    model: str = "openai/whisper-large-v3"  # hub id or local folder of a Whisper model
    language: str | None = None  # e.g. "fr": forced on Whisper and used to normalise; None: detected
    batch_size: int = 8  # utterances transcribed together
    max_new_tokens: int = 200


class IntelligibilityEvaluator(Evaluator):
    metrics = ("cer", "wer")

    def __init__(self, options: IntelligibilityOptions, context: EvalContext):
        super().__init__(options, context)
        try:
            import jiwer  # noqa: F401
        except ImportError:
            raise CsmAdaptError("evaluator intelligibility needs jiwer: pip install 'csm-adapt[eval]'") from None
        transformers = transformers_module("intelligibility")
        self.processor = from_pretrained(transformers.WhisperProcessor, options.model, "intelligibility")
        self.model = from_pretrained(transformers.WhisperForConditionalGeneration, options.model, "intelligibility")
        self.model.to(context.device).eval()
        self.model_name = identity(options.model)
        if options.language:
            self.model_name += f", language {options.language}"

    def models(self) -> dict[str, str]:
        return {"cer": self.model_name, "wer": self.model_name}

    def evaluate(self, batch: Sequence[Utterance]) -> list[dict[str, float | str]]:
        transcripts = self.transcribe([u.audio for u in batch])
        out: list[dict[str, float | str]] = []
        for u, transcript in zip(batch, transcripts):
            reference = normalize(u.text, self.options.language)
            scores: dict[str, float | str] = {"transcript": transcript}
            if reference:
                scores.update(error_rates(reference, normalize(transcript, self.options.language)))
            out.append(scores)
        return out

    @torch.inference_mode()
    def transcribe(self, clips: Sequence[torch.Tensor]) -> list[str]:
        """Whisper's transcript of each 24 kHz clip ("" for an empty one)."""
        import torchaudio.functional

        texts = [""] * len(clips)
        todo = [i for i, c in enumerate(clips) if c.numel()]
        for start in range(0, len(todo), self.options.batch_size):
            part = todo[start : start + self.options.batch_size]
            audio = [
                torchaudio.functional.resample(clips[i].float().cpu(), SAMPLE_RATE, MODEL_RATE).numpy() for i in part
            ]
            inputs = self.processor(audio, sampling_rate=MODEL_RATE, return_tensors="pt")
            features = inputs.input_features.to(self.context.device, self.model.dtype)
            ids = self.model.generate(
                features, language=self.options.language, task="transcribe", max_new_tokens=self.options.max_new_tokens
            )
            for i, text in zip(part, self.processor.batch_decode(ids, skip_special_tokens=True)):
                texts[i] = text.strip()
        return texts


@hookimpl
def register_evaluators(register):
    register("intelligibility", IntelligibilityEvaluator, options=IntelligibilityOptions)
