"""Audio samples during training: the recipe's prompts spoken by the model being trained."""

from __future__ import annotations

from pathlib import Path

import torch

from csm_adapt.audio_io import SAMPLE_RATE, load_audio, save_wav
from csm_adapt.config.schema import Recipe
from csm_adapt.model.audio_codec import AudioCodec
from csm_adapt.model.csm import CSM
from csm_adapt.model.synthesizer import Segment, Synthesizer
from csm_adapt.model.text_tokenizer import TextTokenizer
from csm_adapt.plugin_api import Logger
from csm_adapt.training.step import autocast


class SampleWriter:
    """Writes `<run_dir>/samples/step-NNNNNN/<i>.wav` and hands each clip to the loggers."""

    def __init__(self, recipe: Recipe, model: CSM, device: torch.device, run_dir: Path, is_main: bool = True):
        self.prompts = recipe.samples.prompts
        self.cfg = recipe.samples
        self.seed = recipe.train.seed
        self.run_dir, self.is_main = Path(run_dir), is_main
        self.device, self.bf16_base = torch.device(device), recipe.train.frozen_dtype == "bf16"
        self.synthesizer = Synthesizer(
            model,
            TextTokenizer.load(recipe.model.text_tokenizer),
            AudioCodec.load(recipe.model.audio_codec, device=device),
        )

    def write(self, step: int, loggers: Logger) -> list[Path]:
        model = self.synthesizer.model
        was_training = model.training
        model.eval()
        paths = []
        try:
            for i, prompt in enumerate(self.prompts):
                context = [
                    Segment(
                        prompt.speaker if t.speaker is None else t.speaker,
                        t.text,
                        load_audio(t.audio, start=t.start, end=t.end),
                    )
                    for t in prompt.context
                ]
                # Same seed each time: differences between steps come from the weights, not the dice.
                # A bf16 frozen base next to fp32 adapter weights needs autocast to mix them.
                with autocast(self.device, "bf16" if self.bf16_base else "fp32"):
                    [result] = self.synthesizer.generate(
                        [prompt.text], prompt.speaker, context=context, max_audio_ms=self.cfg.max_audio_ms,
                        temperature=self.cfg.temperature, topk=self.cfg.topk, seed=self.seed + i,
                    )  # fmt: skip
                if not self.is_main:
                    continue
                path = self.run_dir / "samples" / f"step-{step:06d}" / f"{i}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                save_wav(path, result.audio)
                paths.append(path)
                loggers.log_audio(step, f"samples/{i}", result.audio, SAMPLE_RATE)
                loggers.log_text(step, f"samples/{i}", f"[{prompt.speaker}] {prompt.text} -> {path}")
        finally:
            model.train(was_training)
        return paths
