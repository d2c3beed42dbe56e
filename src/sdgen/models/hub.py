"""Models from the Hugging Face hub, through its cache (HF_HOME, HF_HUB_OFFLINE, HF_TOKEN).

The cache is read first and the network only asked when the model is not there, so a cached
model loads offline and a missing one fails at once with what to do instead of hanging.
"""

from __future__ import annotations

import re
from pathlib import Path

from sdgen.errors import ModelNotFound

# A diffusers SD repository holds far more than the pipeline needs: single-file checkpoints at
# the top, EMA and fp16 duplicates, a safety checker. Only the pipeline's own files are fetched.
_PATTERNS = ["model_index.json", "*/config.json", "scheduler/*.json", "tokenizer/*"]
_WEIGHTS = ["unet/*.safetensors", "vae/*.safetensors", "text_encoder/*.safetensors"]
_PICKLE_WEIGHTS = ["unet/*.bin", "vae/*.bin", "text_encoder/*.bin"]
_IGNORE = ["*.fp16.*", "*non_ema*", "*.ckpt", "safety_checker/*", "feature_extractor/*"]
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def is_hub_id(name: str) -> bool:
    """Whether ``name`` reads as a hub id (owner/name) rather than a relative or absolute path."""
    return bool(_HUB_ID.fullmatch(name)) and not name.startswith((".", "/", "~"))


def download_model(
    repo_id: str,
    *,
    token: str | None,
    allow_pickle: bool,
    field: str = "model",
    patterns: list[str] | None = None,
    instead: str = "pass --model with a local folder or .safetensors file",
) -> Path:
    """A local snapshot folder of ``repo_id``: from the cache, else downloaded into it.

    The defaults fetch an SD pipeline for ``--model``; other models (the CLIP ranker) give the
    request field their errors name, the files to fetch, and what the user can do ``instead``.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    if patterns is None:
        patterns = _PATTERNS + _WEIGHTS + (_PICKLE_WEIGHTS if allow_pickle else [])
    kwargs = dict(allow_patterns=patterns, ignore_patterns=_IGNORE, token=token)
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, **kwargs))
    except LocalEntryNotFoundError:
        pass  # not cached: download it, unless offline
    how = (
        f"download it on a machine with network access (`hf download {repo_id}`) and copy the "
        f"cache here, or {instead}"
    )
    if constants.HF_HUB_OFFLINE:
        raise ModelNotFound(
            f"{field}: {repo_id!r} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) "
            f"and HF_HUB_OFFLINE is set; {how}"
        )
    try:
        return Path(snapshot_download(repo_id, etag_timeout=10, **kwargs))
    except GatedRepoError as err:
        raise ModelNotFound(
            f"{field}: {repo_id!r} is gated: accept its licence on the hub, then give a token "
            "with --hf-token or HF_TOKEN"
        ) from err
    except RepositoryNotFoundError as err:
        raise ModelNotFound(
            f"{field}: {repo_id!r} does not exist on the hub (or is private)"
        ) from err
    except (LocalEntryNotFoundError, OSError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0]  # the message stays one line
        raise ModelNotFound(f"{field}: {repo_id!r} could not be fetched ({reason}); {how}") from err


def folder_or_hub_snapshot(
    name: str, *, token: str | None, field: str, kind: str, patterns: list[str], flag: str
) -> Path:
    """A local folder as it is, or a hub id's snapshot (safetensors only) through the cache.

    For the auxiliary models (CLIP ranker, safety checker): ``kind`` names what was expected in
    the error, ``flag`` the option that takes a local folder instead.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists() or not is_hub_id(name):
        raise ModelNotFound(
            f"{field}: {name!r} is neither a {kind} folder nor a hub id (owner/name)"
        )
    return download_model(
        name,
        token=token,
        allow_pickle=False,
        field=field,
        patterns=patterns,
        instead=f"pass {flag} with a local folder",
    )
