"""The `speaker_similarity` evaluator: does the generated voice sound like the target speaker?

`sim`: the cosine similarity between the speaker-verification embedding of the generated audio and
that of each of the speaker's reference clips, averaged over the clips (Seed-TTS-eval's SIM, which
compares against the prompt's reference clip). Utterances without reference clips get no `sim`.

The default embedding model is `microsoft/wavlm-base-plus-sv`: WavLM Base+ fine-tuned for speaker
verification on VoxCeleb with an x-vector head, MIT-licensed, loaded by transformers itself
(`WavLMForXVector`), so it adds no dependency and stays maintained with transformers. Seed-TTS-eval
uses a WavLM-large verification model distributed outside transformers; figures from the two are
not comparable (the report names the model).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch

from csm_adapt import hookimpl
from csm_adapt.audio_io import SAMPLE_RATE
from csm_adapt.plugin_api import EvalContext, Evaluator, Utterance
from csm_adapt_plugins._hf_models import from_pretrained, identity, transformers_module

MODEL_RATE = 16_000


@attrs.frozen(kw_only=True)
class SpeakerSimilarityOptions:
    model: str = "microsoft/wavlm-base-plus-sv"  # hub id or local folder of a WavLMForXVector


class SpeakerSimilarityEvaluator(Evaluator):
    metrics = ("sim",)

    def __init__(self, options: SpeakerSimilarityOptions, context: EvalContext):
        super().__init__(options, context)
        transformers = transformers_module("speaker_similarity")
        self.features = from_pretrained(transformers.AutoFeatureExtractor, options.model, "speaker_similarity")
        self.model = from_pretrained(transformers.WavLMForXVector, options.model, "speaker_similarity")
        self.model.to(context.device).eval()
        self.model_name = identity(options.model)
        self._references: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(clip) -> (clip, embedding)

    def models(self) -> dict[str, str]:
        return {"sim": self.model_name}

    def evaluate(self, batch: Sequence[Utterance]) -> list[dict[str, float | str]]:
        # Each reference clip is embedded once per run: the engine passes the same tensors every time.
        new = [clip for u in batch for clip in u.references if id(clip) not in self._references]
        for clip, embedding in zip(new, self.embed(new)):
            self._references[id(clip)] = (clip, embedding)  # the clip is kept so its id stays its own
        scored = [u for u in batch if u.references and u.audio.numel()]
        embeddings = dict(zip(map(id, scored), self.embed([u.audio for u in scored])))
        out: list[dict[str, float | str]] = []
        for u in batch:
            if id(u) not in embeddings:
                out.append({})
                continue
            refs = torch.stack([self._references[id(clip)][1] for clip in u.references])
            out.append({"sim": float(cosine(embeddings[id(u)], refs).mean())})
        return out

    @torch.inference_mode()
    def embed(self, clips: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """One speaker embedding per 24 kHz clip (on the CPU)."""
        if not clips:
            return []
        import torchaudio.functional

        audio = [torchaudio.functional.resample(c.float().cpu(), SAMPLE_RATE, MODEL_RATE).numpy() for c in clips]
        inputs = self.features(audio, sampling_rate=MODEL_RATE, padding=True, return_tensors="pt")
        inputs = {k: v.to(self.context.device) for k, v in inputs.items()}
        return list(self.model(**inputs).embeddings.float().cpu())


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of `a` [D] with each row of `b` [N, D]."""
    return torch.nn.functional.cosine_similarity(a.unsqueeze(0), b, dim=-1)


@hookimpl
def register_evaluators(register):
    register("speaker_similarity", SpeakerSimilarityEvaluator, options=SpeakerSimilarityOptions)
