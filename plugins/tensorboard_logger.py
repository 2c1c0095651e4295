"""The `tensorboard` logger: scalars, audio samples, texts, the recipe and hparams for TensorBoard.

Writes event files under `<run_dir>/<subdir>/<name of run_dir>`, so that TensorBoard names the run
after its run directory: `tensorboard --logdir runs/demo/tensorboard` shows the run "demo".

TensorBoard shows tag groups (the part before the first "/") in alphabetical order and opens only
the first, so the tags are laid out for that: `loss/train`, `loss/val`, `loss/train_c0`, ... first;
then the final metrics (`summary/...`); `train/lr` and the throughput; and the 32 accuracies per
split out of the way in `train_accuracy/c00`.. and `val_accuracy/c00`... Each audio sample carries
its prompt text as its label.
"""

from __future__ import annotations

import io
import re
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
_LOSS = re.compile(r"^(\w+)/loss(_\w+)?$")  # train/loss, val/loss_c0, ...
_ACCURACY = re.compile(r"^(\w+)/acc/(c\d+)$")  # train/acc/c05


def tensorboard_tag(name: str) -> str:
    """Where a metric goes in TensorBoard: losses in the first group, accuracies in their own."""
    if match := _LOSS.match(name):
        return f"loss/{match.group(1)}{match.group(2) or ''}"
    if match := _ACCURACY.match(name):
        return f"{match.group(1)}_accuracy/{match.group(2)}"
    return name


@attrs.frozen(kw_only=True)
class TensorBoardOptions:
    subdir: str = "tensorboard"  # relative to the run directory


class TensorBoardLogger(Logger):
    def __init__(self, options: TensorBoardOptions, run_dir: Path):
        super().__init__(options, run_dir)
        self._writer: SummaryWriter | None = None
        self._step = 0  # the latest step logged: where the final hparams metrics go
        self._audio: dict[tuple[int, str], tuple[torch.Tensor, int]] = {}  # waiting for their text

    def begin(self, run: RunInfo) -> None:
        # A resumed run drops the events its killed predecessor wrote after the checkpoint it
        # resumes from, so the curves do not double back on themselves.
        from torch.utils.tensorboard import SummaryWriter

        purge_step = run.start_step + 1 if run.start_step else None
        self._writer = SummaryWriter(str(self.events_dir), purge_step=purge_step)
        self._step = run.start_step
        # Fenced: TensorBoard renders text as markdown, which would reflow the TOML.
        self._writer.add_text("recipe", f"```toml\n{run.recipe_toml}\n```", global_step=run.start_step)

    @property
    def events_dir(self) -> Path:
        return self.run_dir / self.options.subdir / self.run_dir.absolute().name

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        for name, value in scalars.items():
            self._writer.add_scalar(tensorboard_tag(name), value, global_step=step)
        self._step = step

    def log_audio(self, step: int, tag: str, wav: torch.Tensor, sample_rate: int, description: str = "") -> None:
        # A clip with a description is shown with it at once. One without is held until its text
        # arrives (the trainer logs a sample's text right after its audio), so the clip is shown
        # with what it says; it is written without a label otherwise.
        self._flush_audio()
        if description:
            self._write_audio(step, tag, wav, sample_rate, description)
        else:
            self._audio[(step, tag)] = (wav, sample_rate)

    def log_text(self, step: int, tag: str, text: str) -> None:
        if (step, tag) in self._audio:
            wav, sample_rate = self._audio.pop((step, tag))
            self._write_audio(step, tag, wav, sample_rate, text)
        self._writer.add_text(tag, text, global_step=step)

    def log_hparams(self, hparams: dict, metrics: dict) -> None:
        # run_name "." attaches them to this run instead of a timestamped sibling run; the
        # "summary/" group keeps the one-point final metrics after the loss curves.
        self._flush_audio()
        self._writer.add_hparams(
            flatten(hparams),
            {f"summary/{name}": float(value) for name, value in metrics.items()},
            run_name=".",
            global_step=self._step,
        )

    def close(self) -> None:
        if self._writer is not None:  # None when the run failed before it began
            self._flush_audio()
            self._writer.close()

    def _flush_audio(self) -> None:
        for (step, tag), (wav, sample_rate) in self._audio.items():
            self._write_audio(step, tag, wav, sample_rate, "")
        self._audio.clear()

    def _write_audio(self, step: int, tag: str, wav: torch.Tensor, sample_rate: int, label: str) -> None:
        """An audio summary in the audio plugin's tensor format, which (unlike add_audio) has a label."""
        import numpy as np
        import soundfile as sf
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.audio import metadata
        from tensorboard.util import tensor_util

        # 16-bit PCM, clipped quietly (TensorBoard would warn on every clipped sample). Empty audio
        # (a model that stops at once) cannot be encoded: silence stands for it.
        samples = wav.detach().float().clamp(-1, 1).cpu().reshape(-1)
        samples = samples if samples.numel() >= 2 else samples.new_zeros(2)
        buffer = io.BytesIO()
        sf.write(buffer, samples.numpy(), sample_rate, "PCM_16", format="WAV")
        tensor = tensor_util.make_tensor_proto(np.array([[buffer.getvalue(), label.encode()]], dtype=object))
        summary_metadata = metadata.create_summary_metadata(None, label, metadata.Encoding.Value("WAV"))
        summary = Summary(value=[Summary.Value(tag=tag, metadata=summary_metadata, tensor=tensor)])
        self._writer._get_file_writer().add_summary(summary, step)


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
