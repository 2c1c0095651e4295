"""One evaluation: speak every prompt (once per seed, in batches), score the utterances with the
evaluators, aggregate. The evaluators are built once and reused for every evaluation of a run.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch

from csm_adapt.config.schema import EvalConfig, EvaluatorRef
from csm_adapt.errors import CsmAdaptError
from csm_adapt.evaluation.aggregate import Summary, summarize
from csm_adapt.evaluation.prompts import EvalPrompt
from csm_adapt.model.generation import FRAME_MS
from csm_adapt.model.synthesizer import Synthesizer
from csm_adapt.plugin_api import EvalContext, Utterance

PREFIX = "eval/"


class EvaluatorSet:
    """The recipe's evaluators, built once; their per-utterance results merged into one dict each."""

    def __init__(self, refs: Sequence[EvaluatorRef], context: EvalContext):
        self.evaluators = [(ref.name, ref.create(context)) for ref in refs]

    def evaluate(self, batch: Sequence[Utterance]) -> list[dict[str, float | str]]:
        rows: list[dict[str, float | str]] = [{} for _ in batch]
        owner: dict[str, str] = {}
        for name, evaluator in self.evaluators:
            results = evaluator.evaluate(batch)
            if len(results) != len(batch):
                raise CsmAdaptError(f"evaluator {name} returned {len(results)} results for {len(batch)} utterances")
            for row, scores in zip(rows, results):
                for key, value in scores.items():
                    if owner.setdefault(key, name) != name:
                        raise CsmAdaptError(f"evaluators {owner[key]} and {name} both return {key!r}")
                    row[key] = value if isinstance(value, str) else float(value)
        return rows

    def models(self) -> dict[str, str]:
        """`eval/<metric>` -> the model that produced it, for the metrics that come from a model."""
        return {
            PREFIX + metric: model for _, evaluator in self.evaluators for metric, model in evaluator.models().items()
        }


@attrs.frozen(eq=False)
class Evaluated:
    utterance: Utterance
    scores: dict[str, float | str]  # an evaluator's own names ("cer"); str values are notes


@attrs.frozen(eq=False)
class EvalResult:
    items: list[Evaluated]
    summary: dict[str, Summary]  # "eval/<metric>" -> mean and interval
    models: dict[str, str]  # "eval/<metric>" -> what produced it

    def scalars(self) -> dict[str, float]:
        return {name: s.mean for name, s in self.summary.items()}


class Evaluation:
    """Prompts, generation settings and evaluators of one run (`[eval]`), ready to evaluate models."""

    def __init__(self, cfg: EvalConfig, prompts: Sequence[EvalPrompt], evaluators: EvaluatorSet):
        self.cfg = cfg
        self.prompts = list(prompts)
        self.evaluators = evaluators
        # Loaded once: the same references serve every evaluation.
        self.references = {p.id: tuple(r.load() for r in p.references) for p in self.prompts}

    def run(self, synthesizer: Synthesizer) -> EvalResult:
        model = synthesizer.model
        was_training = model.training
        model.eval()
        items: list[Evaluated] = []
        try:
            for seed in self.cfg.seeds:
                for batch in self._batches():
                    utterances = self._generate(synthesizer, batch, seed)
                    scores = self.evaluators.evaluate(utterances)
                    items.extend(Evaluated(u, s) for u, s in zip(utterances, scores))
        finally:
            model.train(was_training)
        summary = summarize([item.scores for item in items], seed=self.cfg.seeds[0])
        return EvalResult(items, {PREFIX + k: v for k, v in summary.items()}, self.evaluators.models())

    def _batches(self) -> list[list[EvalPrompt]]:
        """Prompts grouped by speaker (a batch speaks in one voice), at most `batch_size` a batch."""
        by_speaker: dict[int | None, list[EvalPrompt]] = {}
        for p in self.prompts:
            by_speaker.setdefault(p.speaker, []).append(p)
        size = self.cfg.batch_size
        return [group[i : i + size] for group in by_speaker.values() for i in range(0, len(group), size)]

    def _generate(self, synthesizer: Synthesizer, batch: list[EvalPrompt], seed: int) -> list[Utterance]:
        cfg = self.cfg
        results = synthesizer.generate(
            [p.text for p in batch], batch[0].speaker, max_audio_ms=cfg.max_audio_ms,
            temperature=cfg.temperature, topk=cfg.topk, seed=seed,
        )  # fmt: skip
        max_frames = cfg.max_audio_ms // FRAME_MS
        return [
            Utterance(
                prompt_id=p.id,
                text=p.text,
                speaker=p.speaker,
                audio=r.audio,
                frames=r.frames,
                # generate_frames stops a prompt at its EOS frame (left out) or after max_frames.
                stopped=r.frames.shape[1] < max_frames,
                max_audio_ms=cfg.max_audio_ms,
                references=self.references[p.id],
                seed=seed,
            )  # fmt: skip
            for p, r in zip(batch, results)
        ]


def build_evaluation(
    cfg: EvalConfig, prompts: Sequence[EvalPrompt], device: torch.device, chars_per_second: float | None
) -> Evaluation:
    return Evaluation(cfg, prompts, EvaluatorSet(cfg.evaluators, EvalContext(device, chars_per_second)))
