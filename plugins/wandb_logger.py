"""The `wandb` logger: scalars, audio samples with their prompt text, and the resolved recipe as the
run's config, to Weights & Biases.

Needs the optional extra: `pip install 'csm-adapt[wandb]'`. wandb's own settings apply
(`WANDB_MODE=offline` writes the run under `<run_dir>/wandb/` to `wandb sync` later; `WANDB_API_KEY`,
...). A resumed csm-adapt run continues the same W&B run: its id is kept in `<run_dir>/wandb-run-id`.
"""

from __future__ import annotations

import importlib.util
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import attrs

from csm_adapt import hookimpl
from csm_adapt.errors import PluginError
from csm_adapt.plugin_api import Logger, RunInfo

if TYPE_CHECKING:
    import torch

RUN_ID_FILE = "wandb-run-id"


@attrs.frozen(kw_only=True)
class WandbOptions:
    project: str = "csm-adapt"
    entity: str | None = None  # your W&B user or team; None: the default of your API key
    name: str | None = None  # None: the name of the run directory
    tags: tuple[str, ...] = ()
    mode: Literal["online", "offline", "disabled"] | None = None  # None: WANDB_MODE, else online


class WandbLogger(Logger):
    def __init__(self, options: WandbOptions, run_dir: Path):
        super().__init__(options, run_dir)
        if importlib.util.find_spec("wandb") is None:
            raise PluginError("the wandb logger needs the wandb package: pip install 'csm-adapt[wandb]'")
        self._run = None
        self._audio: dict[tuple[int, str], tuple[torch.Tensor, int]] = {}  # waiting for their text

    def begin(self, run: RunInfo) -> None:
        import wandb

        id_file = self.run_dir / RUN_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id + "\n")
        self._run = wandb.init(
            project=self.options.project,
            entity=self.options.entity,
            name=self.options.name or self.run_dir.absolute().name,
            tags=list(self.options.tags),
            mode=self.options.mode,
            dir=str(self.run_dir),
            id=run_id,
            resume="allow",
            config=run.recipe,
        )

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        self._run.log(dict(scalars), step=step)

    def log_audio(self, step: int, tag: str, wav: torch.Tensor, sample_rate: int) -> None:
        # Held until its text arrives (the trainer logs a sample's text right after its audio), so
        # the clip is shown with its prompt as the caption.
        self._flush_audio()
        self._audio[(step, tag)] = (wav, sample_rate)

    def log_text(self, step: int, tag: str, text: str) -> None:
        if (step, tag) in self._audio:
            wav, sample_rate = self._audio.pop((step, tag))
            self._log_audio(step, tag, wav, sample_rate, text)
        else:
            self._run.log({tag: text}, step=step)

    def log_hparams(self, hparams: dict, metrics: dict) -> None:
        self._flush_audio()
        self._run.config.update({"tuned": hparams}, allow_val_change=True)
        self._run.summary.update(metrics)

    def close(self) -> None:
        if self._run is not None:  # None when the run failed before it began
            self._flush_audio()
            self._run.finish()

    def _flush_audio(self) -> None:
        for (step, tag), (wav, sample_rate) in self._audio.items():
            self._log_audio(step, tag, wav, sample_rate, None)
        self._audio.clear()

    def _log_audio(self, step: int, tag: str, wav: torch.Tensor, sample_rate: int, caption: str | None) -> None:
        import wandb

        clip = wav.detach().float().clamp(-1, 1).cpu().reshape(-1).numpy()
        self._run.log({tag: wandb.Audio(clip, sample_rate=sample_rate, caption=caption)}, step=step)


@hookimpl
def register_loggers(register):
    register("wandb", WandbLogger, options=WandbOptions)
