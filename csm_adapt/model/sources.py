"""Where a checkpoint, tokenizer or codec comes from, and whether it can be had, checked cheaply.

A source is "offline" (bundled / fitted locally), a local path, or a hub id `owner/name`. A string
shaped like a hub id whose first part is an existing local folder (`runs/nope`) is taken as a
mistyped local path: it gets "no such file or directory", not advice about the network.

`check_reachable` answers without downloading: a local path exists; a hub file is in the Hugging
Face cache; else (unless HF_HUB_OFFLINE) one HEAD request asks the hub. Each failure is one line
saying which setting, why, and how to fix it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from csm_adapt.errors import CheckpointError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_local(source: str) -> bool:
    """True for a path (existing, or clearly meant as one), False for a hub id."""
    path = Path(source).expanduser()
    if path.exists() or not HUB_ID.match(source) or source.startswith((".", "/", "~")):
        return True
    return Path(source.split("/")[0]).is_dir()  # `runs/nope` with a local `runs/`: a mistyped path


def check_reachable(setting: str, source: str | None, hub_files: Sequence[str]) -> None:
    """Fail (CheckpointError) unless `source` can be loaded: `hub_files` are the candidates to look
    for in a hub repo (any one will do, e.g. config.json or the legacy ckpt.pt)."""
    if source is None or source == "offline":
        return
    if is_local(source):
        if not Path(source).expanduser().exists():
            raise CheckpointError(f"{setting}: {source}: no such file or directory")
        return
    _check_hub(setting, source, hub_files)


def _check_hub(setting: str, repo: str, files: Sequence[str]) -> None:
    import requests
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, RepositoryNotFoundError
    from huggingface_hub.utils import build_hf_headers, hf_raise_for_status

    if any(isinstance(try_to_load_from_cache(repo, name), str) for name in files):
        return
    local = "or give a local path instead of the hub id"
    if constants.HF_HUB_OFFLINE:
        raise CheckpointError(
            f"{setting}: {repo} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: "
            f"download it once with the network (unset HF_HUB_OFFLINE), {local}"
        )
    last: Exception | None = None
    for name in files:
        try:
            # One plain HEAD (huggingface_hub's own retries a dead network for half a minute); a
            # redirect to the file's storage is an answer too.
            url = f"{constants.ENDPOINT}/{repo}/resolve/main/{quote(name)}"
            hf_raise_for_status(requests.head(url, headers=build_hf_headers(), timeout=10, allow_redirects=False))
            return
        except EntryNotFoundError as e:
            last = e
            continue
        except GatedRepoError:
            raise CheckpointError(
                f"{setting}: {repo} is gated on the Hugging Face hub: accept its terms on "
                f"https://huggingface.co/{repo} and set HF_TOKEN, {local}"
            ) from None
        except RepositoryNotFoundError:
            raise CheckpointError(
                f"{setting}: {repo}: no such repository on the Hugging Face hub (or it is private: set HF_TOKEN), "
                f"{local}"
            ) from None
        except Exception as e:  # the network: DNS, refused, timeout, proxy
            raise CheckpointError(
                f"{setting}: cannot reach the Hugging Face hub for {repo} ({type(e).__name__}). Check the "
                f"network; offline, set HF_HUB_OFFLINE=1 with {repo} in the cache, {local}"
            ) from None
    raise CheckpointError(f"{setting}: {repo} has none of {', '.join(files)} on the Hugging Face hub") from last


def check_model_sources(checkpoint: str | None, text_tokenizer: str, audio_codec: str) -> None:
    """The three sources of a model, in the order a run loads them."""
    from csm_adapt.model.checkpoint import CONFIG, LEGACY_WEIGHTS
    from csm_adapt.model.text_tokenizer import TOKENIZER_FILE

    check_reachable("model.checkpoint", checkpoint, (CONFIG, LEGACY_WEIGHTS))
    check_reachable("model.text_tokenizer", text_tokenizer, (TOKENIZER_FILE,))
    if audio_codec != "offline" and not is_local(audio_codec):
        from moshi.models import loaders  # seconds to import: only for a hub codec

        check_reachable("model.audio_codec", audio_codec, (loaders.MIMI_NAME,))
    else:
        check_reachable("model.audio_codec", audio_codec, ())
