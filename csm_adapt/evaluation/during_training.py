"""`[eval]` during training: the model being trained speaks the eval prompts every `eval.every` steps;
the means go to every logger as `eval/<metric>`, each prompt's audio (first seed) to the loggers
with the prompt text as its description.

Every rank evaluates (the same prompts, seeds and model, so the same figures): under FSDP choosing
the best checkpoint by an eval metric is a collective, and all ranks must make the same choice.
"""

from __future__ import annotations

import torch

from csm_adapt.audio_io import SAMPLE_RATE
from csm_adapt.config.schema import Recipe
from csm_adapt.data.format import INDEX, read_index
from csm_adapt.data.storage import open_store
from csm_adapt.evaluation.engine import PREFIX, EvalResult, build_evaluation
from csm_adapt.evaluation.prompts import read_prompts, val_prompts
from csm_adapt.model.audio_codec import AudioCodec
from csm_adapt.model.csm import CSM
from csm_adapt.model.synthesizer import Synthesizer
from csm_adapt.model.text_tokenizer import TextTokenizer
from csm_adapt.plugin_api import Logger


def recipe_evaluation(recipe: Recipe, device: torch.device, prompts_file=None):
    """The recipe's `[eval]` set up: prompts (a file, else validation utterances), evaluators built
    on `device`, the training set's speaking rate from the prepared data when there is one."""
    cfg = recipe.eval
    prompts_file = prompts_file or cfg.prompts
    data = open_store(recipe.data.out, recipe.data.storage_options)
    prompts = read_prompts(prompts_file) if prompts_file else val_prompts(data, cfg.max_prompts)
    chars_per_second = read_index(data).summary.get("chars_per_second") if data.exists(INDEX) else None
    return build_evaluation(cfg, prompts, device, chars_per_second)


class TrainingEvaluation:
    def __init__(self, recipe: Recipe, model: CSM, device: torch.device):
        self.evaluation = recipe_evaluation(recipe, device)
        self.synthesizer = Synthesizer(
            model, TextTokenizer.load(recipe.model.text_tokenizer), AudioCodec.load(recipe.model.audio_codec, device)
        )
        self.last: EvalResult | None = None

    def run(self, step: int, loggers: Logger) -> dict[str, float]:
        """Evaluate the model as it is now; returns (and logs) the `eval/<metric>` means."""
        self.last = result = self.evaluation.run(self.synthesizer)
        scalars = result.scalars()
        loggers.log_scalars(step, scalars)
        first_seed = self.evaluation.cfg.seeds[0]
        for item in result.items:
            u = item.utterance
            if u.seed == first_seed:
                loggers.log_audio(step, f"{PREFIX}{u.prompt_id}", u.audio, SAMPLE_RATE, description=u.text)
        return scalars
