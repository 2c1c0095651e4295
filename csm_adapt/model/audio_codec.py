"""Mimi, the audio codec: 24 kHz mono audio <-> 32 codebooks of codes at 12.5 frames/s.

`AudioCodec.load` takes a hub repo id (Mimi's weights file is downloaded), a local weights file,
or "offline": a random-init Mimi whose quantizer codebooks are fitted to the shipped demo speech,
so that tests and demos run without network access. A random-init Mimi's untouched quantizer
maps everything to code 0 (CSM's EOS frame); the fitted one gives codes that follow the audio.
Its decoder stays random: decoding offline codes gives noise-like audio.
"""

from __future__ import annotations

import hashlib
import math
import os
from importlib import metadata
from pathlib import Path

import torch
from moshi.models import loaders

from csm_adapt.errors import CsmAdaptError
from csm_adapt.model.sources import is_local

DEFAULT_SOURCE = loaders.DEFAULT_REPO
NUM_CODEBOOKS = 32

# The offline fit: fixed seeds and inputs, so every machine with the same torch/moshi gets the
# same codec. Every third demo clip (14 clips, all four voices) gives ~360 latent frames.
_SEED = 1234
# The demo clips ship inside the package (csm_adapt/recipes is the recipes/ folder), so the offline
# codec works from a wheel install as well as from a source checkout.
_DEMO_WAVS = Path(__file__).resolve().parents[1] / "recipes" / "demo_data" / "wavs"
_FIT_EVERY = 3
# Codebook entries are residual frames plus noise of the frames' own std: a frame's nearest entry
# is then not itself, so residuals keep their scale through all 32 layers instead of vanishing
# (with smaller noise the last layers shrank to float-rounding size and their codes flipped
# with the batch composition).
_JITTER = 1.0


class AudioCodec:
    """A Mimi model in eval mode with the sizes CSM uses."""

    sample_rate = 24_000
    frame_rate = 12.5
    samples_per_frame = 1920
    num_codebooks = NUM_CODEBOOKS
    codebook_size = 2048  # codes per codebook (the model's 2051-way heads add 3 unused ids)

    def __init__(self, mimi: torch.nn.Module, identity: str, device: torch.device | str):
        self.mimi = mimi
        self.identity = identity
        self.device = torch.device(device)

    @classmethod
    def load(cls, source: str = DEFAULT_SOURCE, device: torch.device | str = "cpu") -> AudioCodec:
        """Load Mimi from a hub repo id, a local `.safetensors` file, or "offline"."""
        if source == "offline":
            mimi = _offline_mimi()
            identity = f"mimi-offline-sha256:{_state_digest(mimi)}"
            return cls(mimi.to(device), identity, device)
        path = _weights_path(source)
        try:
            mimi = loaders.get_mimi(str(path), device=device, num_codebooks=NUM_CODEBOOKS)
        except Exception as e:  # safetensors and load_state_dict raise a variety of errors
            raise CsmAdaptError(f"{path}: not a Mimi weights file ({type(e).__name__}: {e})") from e
        return cls(mimi, f"mimi-sha256:{_file_digest(path)}", device)

    def encode(self, wavs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Codes of each 1-D 24 kHz clip, `LongTensor[32, ceil(len / 1920)]`, on the CPU.

        One batched forward: clips are zero-padded at the end to the longest. Mimi is causal and
        pads a clip's last partial frame with zeros itself, so the padding leaves a clip's codes
        unchanged (tested); only float reduction order in batched kernels could differ.
        """
        if not wavs:
            return []
        lengths = [w.shape[-1] for w in wavs]
        if min(lengths) == 0:
            raise ValueError("cannot encode an empty clip")
        batch = torch.zeros(len(wavs), 1, max(lengths), device=self.device)
        for i, wav in enumerate(wavs):
            batch[i, 0, : lengths[i]] = wav.to(self.device, torch.float32)
        with torch.inference_mode():
            codes = self.mimi.encode(batch).cpu()
        return [codes[i, :, : math.ceil(n / self.samples_per_frame)].clone() for i, n in enumerate(lengths)]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Audio `[B, F * 1920]` (float32, CPU) of codes `LongTensor[B, 32, F]`."""
        with torch.inference_mode():
            return self.mimi.decode(codes.to(self.device)).squeeze(1).float().cpu()


def _weights_path(source: str) -> Path:
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if source.endswith(".safetensors") or is_local(source):
        raise CsmAdaptError(f"{source}: Mimi weights file not found (no such file or directory)")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(source, loaders.MIMI_NAME))
    except (HfHubHTTPError, LocalEntryNotFoundError, HFValidationError, OSError) as e:
        raise CsmAdaptError(
            f"cannot get {loaders.MIMI_NAME} from {source!r} ({type(e).__name__}: {e}). "
            "Pass a local .safetensors file, set HF_HUB_OFFLINE=1 with the file already in the "
            'Hugging Face cache, or use the codec "offline" for tests and demos.'
        ) from e


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()[:16]


def _state_digest(module: torch.nn.Module) -> str:
    """Hash of every weight and buffer: any change to the offline fit changes the identity."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _cache_dir() -> Path:
    return Path(os.environ.get("CSM_ADAPT_CACHE") or Path.home() / ".cache" / "csm-adapt")


def _offline_mimi() -> torch.nn.Module:
    """Random-init Mimi (seeded, built on the CPU so CUDA's RNG plays no part) with fitted codebooks.

    Encoding the demo clips is the slow part (seconds), so their latents are cached under
    `$CSM_ADAPT_CACHE` (default ~/.cache/csm-adapt), keyed by the clips, seed and library versions.
    """
    paths = sorted(_DEMO_WAVS.glob("*.wav"))[::_FIT_EVERY]
    if not paths:
        raise CsmAdaptError(
            f"{_DEMO_WAVS}: no demo clips to fit the offline codec to "
            "(regenerate them with recipes/demo_data/regenerate.py, or reinstall csm-adapt)"
        )
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream untouched
        torch.manual_seed(_SEED)
        mimi = loaders.get_mimi(None, device="cpu", num_codebooks=NUM_CODEBOOKS)
        latents = _cached_latents(mimi, paths)
        _fit_codebooks(mimi.quantizer, latents, torch.Generator().manual_seed(_SEED))
    return mimi


def _cached_latents(mimi: torch.nn.Module, paths: list[Path]) -> torch.Tensor:
    """Unquantized latents `[1, 512, frames]` of the clips, one after another."""
    key = hashlib.sha256()
    for part in (str(_SEED), metadata.version("moshi"), torch.__version__):
        key.update(part.encode())
    for path in paths:
        key.update(path.read_bytes())
    cache = _cache_dir() / f"offline-mimi-latents-{key.hexdigest()[:16]}.pt"
    if cache.is_file():
        return torch.load(cache, weights_only=True)
    from csm_adapt.audio_io import load_audio

    with torch.inference_mode():
        latents = torch.cat([mimi._encode_to_unquantized_latent(load_audio(p)[None, None]) for p in paths], -1)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    torch.save(latents, tmp)
    os.replace(tmp, cache)
    return latents


@torch.no_grad()
def _fit_codebooks(quantizer: torch.nn.Module, latents: torch.Tensor, gen: torch.Generator) -> None:
    """Fill every codebook of Mimi's split RVQ from the speech latents, layer after layer.

    There are fewer latent frames (~360) than codes per book (2048), so k-means (what moshi's
    training-mode init runs) would just return the frames; its 32 sequential inits also cost
    minutes on a CPU. Drawing the entries from the frames directly is the same result in
    milliseconds; the jitter keeps residuals non-zero so all 32 layers follow the audio.
    """
    for rvq in (quantizer.rvq_first, quantizer.rvq_rest):
        residual = rvq.input_proj(latents)[0].T  # [frames, 256]
        for layer in rvq.vq.layers:
            book = layer._codebook
            picks = torch.randint(residual.shape[0], (book.codebook_size,), generator=gen)
            noise = torch.randn(book.codebook_size, book.dim, generator=gen)
            entries = residual[picks] + _JITTER * residual.std(dim=0) * noise
            # moshi derives its codebook as embedding_sum / cluster_usage; usage 1 keeps it exact.
            book.embedding_sum.copy_(entries)
            book.cluster_usage.fill_(1.0)
            book._initialized.fill_(1.0)
            book.register_buffer("_embedding", None, persistent=False)  # drop moshi's cached copy
            residual = residual - book.embedding[book.encode(residual)]
