"""The `quality` evaluator: DNSMOS P.835 (Reddy et al., ICASSP 2022), a non-intrusive MOS predictor.

Three metrics, each on the 1..5 MOS scale, higher is better: `sig` (the speech itself), `bak` (the
background: noise, hum), `ovrl` (overall). The ONNX model ships inside the `speechmos` package
(Microsoft, MIT) and runs offline with onnxruntime. Computed as `speechmos.dnsmos` computes them:
audio at 16 kHz, tiled to at least 9.01 s, 9.01 s windows every second, each window's raw scores
mapped through the P.835 polynomials, averaged over windows. speechmos's own `run` is not called:
it imports librosa for the P.808 score, which is not reported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from importlib.metadata import version

import attrs
import numpy as np

from csm_adapt import hookimpl
from csm_adapt.audio_io import SAMPLE_RATE
from csm_adapt.errors import CsmAdaptError
from csm_adapt.plugin_api import EvalContext, Evaluator, Utterance

DNSMOS_RATE = 16_000
WINDOW_S = 9.01
MODEL_FILE = "sig_bak_ovr.onnx"
# speechmos.dnsmos.DNSMOS.get_polyfit_val, non-personalized: raw model output -> P.835 MOS.
POLYNOMIALS = {
    "sig": np.poly1d([-0.08397278, 1.22083953, 0.0052439]),
    "bak": np.poly1d([-0.13166888, 1.60915514, -0.39604546]),
    "ovrl": np.poly1d([-0.06766283, 1.11546468, 0.04602535]),
}


@attrs.frozen(kw_only=True)
class QualityOptions:
    windows_per_batch: int = 16  # 9 s windows scored per onnxruntime call


class QualityEvaluator(Evaluator):
    metrics = ("sig", "bak", "ovrl")

    def __init__(self, options: QualityOptions, context: EvalContext):
        super().__init__(options, context)
        try:
            import onnxruntime
        except ImportError:
            raise CsmAdaptError(
                "evaluator quality needs onnxruntime and speechmos: pip install 'csm-adapt[eval]'"
            ) from None
        try:
            model = resources.files("speechmos") / "dnsmos_models" / MODEL_FILE
        except ModuleNotFoundError:
            raise CsmAdaptError("evaluator quality needs speechmos: pip install 'csm-adapt[eval]'") from None
        providers = ["CPUExecutionProvider"]
        if context.device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        with resources.as_file(model) as path:
            self.session = onnxruntime.InferenceSession(str(path), providers=providers)
        self.model_name = f"DNSMOS P.835 {MODEL_FILE} (speechmos {version('speechmos')})"

    def models(self) -> dict[str, str]:
        return {name: self.model_name for name in self.metrics}

    def evaluate(self, batch: Sequence[Utterance]) -> list[dict[str, float | str]]:
        return [self.score(u.audio) if u.audio.numel() else {} for u in batch]

    def score(self, audio_24k) -> dict[str, float]:
        """SIG, BAK and OVRL of one clip (a 1-D tensor at 24 kHz)."""
        import torchaudio.functional

        audio = torchaudio.functional.resample(audio_24k.float().cpu(), SAMPLE_RATE, DNSMOS_RATE).numpy()
        audio = np.clip(audio, -1.0, 1.0)
        window = int(WINDOW_S * DNSMOS_RATE)
        if audio.size < window:
            audio = np.tile(audio, -(-window // audio.size))  # speechmos doubles it until long enough
        hops = int(np.floor(audio.size / DNSMOS_RATE) - WINDOW_S) + 1
        windows = np.stack([audio[i * DNSMOS_RATE : i * DNSMOS_RATE + window] for i in range(hops)])
        windows = windows[[len(w) == window for w in windows]].astype(np.float32)
        size = self.options.windows_per_batch
        raw = np.concatenate(
            [self.session.run(None, {"input_1": windows[i : i + size]})[0] for i in range(0, len(windows), size)]
        )
        return {name: float(np.mean(POLYNOMIALS[name](raw[:, k]))) for k, name in enumerate(("sig", "bak", "ovrl"))}


@hookimpl
def register_evaluators(register):
    register("quality", QualityEvaluator, options=QualityOptions)
