"""The `tensorboard` logger: scalars, audio samples, texts, the recipe and hparams for TensorBoard.

Writes event files under `<run_dir>/<subdir>`; view them with `tensorboard --logdir <run_dir>`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from csm_adapt import hookimpl
from csm_adapt.plugin_api import Logger, RunInfo

if TYPE_CHECKING:
    # Imported where used instead: every csm-adapt command (`plugins`, `validate`) imports the
    # plugins, and torch takes seconds to import.
    import torch
    from torch.utils.tensorboard import SummaryWriter

HPARAM_VALUE_TYPES = (bool, int, float, str)  # all that TensorBoard's hparams dashboard accepts


@attrs.frozen(kw_only=True)
class TensorBoardOptions:
    subdir: str = "tensorboard"  # relative to the run directory


class TensorBoardLogger(Logger):
    def __init__(self, options: TensorBoardOptions, run_dir: Path):
        super().__init__(options, run_dir)
        self._writer: SummaryWriter | None = None
        self._step = 0  # the latest step logged: where the final hparams metrics go

    def begin(self, run: RunInfo) -> None:
        # A resumed run drops the events its killed predecessor wrote after the checkpoint it
        # resumes from, so the curves do not double back on themselves.
        from torch.utils.tensorboard import SummaryWriter

        purge_step = run.start_step + 1 if run.start_step else None
        self._writer = SummaryWriter(str(self.run_dir / self.options.subdir), purge_step=purge_step)
        self._step = run.start_step
        # Fenced: TensorBoard renders text as markdown, which would reflow the TOML.
        self._writer.add_text("recipe", f"```toml\n{run.recipe_toml}\n```", global_step=run.start_step)

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        for name, value in scalars.items():
            self._writer.add_scalar(name, value, global_step=step)
        self._step = step

    def log_audio(self, step: int, tag: str, wav: torch.Tensor, sample_rate: int, description: str = "") -> None:
        # TensorBoard stores 16-bit PCM and warns on every clipped sample; clip quietly here.
        wav = wav.detach().float().clamp(-1, 1).cpu().reshape(-1)
        # A clip under 2 samples (a model that stops at once) cannot be encoded: silence stands for it.
        wav = wav if wav.numel() >= 2 else wav.new_zeros(2)
        from torch.utils.tensorboard.summary import audio

        # SummaryWriter.add_audio takes no description; TensorBoard shows the summary's own.
        summary = audio(tag, wav, sample_rate=sample_rate)
        summary.value[0].metadata.summary_description = description
        self._writer._get_file_writer().add_summary(summary, step)

    def log_text(self, step: int, tag: str, text: str) -> None:
        self._writer.add_text(tag, text, global_step=step)

    def log_hparams(self, hparams: dict, metrics: dict) -> None:
        # run_name "." attaches them to this run instead of a timestamped sibling run; the "hparam/"
        # prefix keeps the final metrics off the training curves they repeat.
        self._writer.add_hparams(
            flatten(hparams),
            {f"hparam/{name}": float(value) for name, value in metrics.items()},
            run_name=".",
            global_step=self._step,
        )

    def close(self) -> None:
        if self._writer is not None:  # None when the run failed before it began
            self._writer.close()


def flatten(tree: dict, prefix: str = "") -> dict:
    """Nested tables to dotted keys ("train.lr"), keeping only values TensorBoard can show."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        elif isinstance(value, HPARAM_VALUE_TYPES):
            flat[f"{prefix}{key}"] = value
    return flat


@hookimpl
def register_loggers(register):
    register("tensorboard", TensorBoardLogger, options=TensorBoardOptions)
