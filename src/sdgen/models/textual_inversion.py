"""Textual inversion embeddings: learned token vectors that a prompt names, as A1111's
embeddings folder and diffusers' ``load_textual_inversion`` hold them.

A folder of embedding files is read as A1111 reads its ``embeddings`` folder: every file, in
subfolders too, is one embedding named after the file (``EasyNegative.safetensors`` is
"EasyNegative"), whatever its format: A1111's (``emb_params`` in safetensors,
``string_to_param`` in a .pt) or diffusers' (one token -> vector(s), as the concepts library
publishes them). A prompt that contains the name reads the embedding's vectors in its place
(``sdgen.conditioning.chunks``). Files that cannot serve the model are skipped with the reason:
vectors of another width (an SD 2.x embedding for SD 1.x), SDXL's pairs, pickle files unless
pickles are allowed (then through torch's weights-only loader), unreadable files.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from sdgen.errors import SdgenError
from sdgen.models.safety import load_pickle_state_dict

log = logging.getLogger(__name__)

SUFFIXES = (".safetensors", ".pt", ".bin")  # A1111 also reads embeddings hidden in pictures
PICKLE_SUFFIXES = (".pt", ".bin")
MAX_FILES = 10_000


@dataclass(frozen=True, eq=False)
class TextualInversion:
    """One embedding: its name in prompts and its vectors."""

    name: str
    vectors: torch.Tensor  # (n, D) fp32 on the CPU: n tokens' input embeddings
    sha256: str  # of the file

    @property
    def short_hash(self) -> str:
        """A1111's hash of an embedding in ``TI hashes``: 12 hex digits of the file's sha256."""
        return self.sha256[:12]


@dataclass(frozen=True)
class TextualInversions:
    """The embeddings of a folder that fit a model, by name, and the files skipped, with why."""

    by_name: dict[str, TextualInversion]
    skipped: dict[str, str]  # file name -> reason

    @classmethod
    def none(cls) -> TextualInversions:
        return cls({}, {})


def load_textual_inversions(
    folder: str | Path, hidden_size: int, max_vectors: int, *, allow_pickle: bool = False
) -> TextualInversions:
    """Every embedding in ``folder`` whose vectors are ``hidden_size`` wide (the text encoder's
    token embeddings) and at most ``max_vectors`` (the tokens of a prompt's window, 75), named
    after its file.

    Raises:
        SdgenError: ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SdgenError(f"embeddings: {folder} is not a folder of embedding files")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
    loaded: dict[str, TextualInversion] = {}
    skipped: dict[str, str] = {}
    for path in files[:MAX_FILES]:
        label = str(path.relative_to(folder))
        try:
            inversion = _load_file(path, hidden_size, max_vectors, allow_pickle)
        except _Skip as reason:
            skipped[label] = str(reason)
            continue
        if inversion.name in loaded:
            skipped[label] = f"the name {inversion.name!r} is taken by another file"
            continue
        loaded[inversion.name] = inversion
    for label, reason in skipped.items():
        log.warning("embedding %s skipped: %s", label, reason)
    return TextualInversions(loaded, skipped)


class _Skip(Exception):
    """Why a file is not loaded."""


def _load_file(
    path: Path, hidden_size: int, max_vectors: int, allow_pickle: bool
) -> TextualInversion:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise _Skip("a pickle file: convert it to .safetensors, or allow pickles")
        try:
            data = load_pickle_state_dict(path)
        except Exception as err:  # noqa: BLE001 - any unreadable file is skipped, named
            raise _Skip(f"not readable by torch's weights-only loader ({err})") from None
    else:
        from safetensors.torch import load_file

        try:
            data = load_file(path)
        except Exception as err:  # noqa: BLE001
            raise _Skip(f"not a safetensors file ({err})") from None
    vectors = _vectors(data)
    if vectors.shape[-1] != hidden_size:
        raise _Skip(
            f"vectors {vectors.shape[-1]} wide; the model's text encoder takes {hidden_size}"
        )
    if vectors.shape[0] > max_vectors:
        raise _Skip(f"{vectors.shape[0]} vectors; a prompt's window holds {max_vectors}")
    if not bool(torch.isfinite(vectors).all()):
        raise _Skip("vectors that are not finite")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return TextualInversion(path.stem, vectors.detach().float().cpu().contiguous(), digest)


def _vectors(data: object) -> torch.Tensor:
    """The (n, D) vectors of a loaded file, in any of the formats A1111 reads."""
    if not isinstance(data, dict):
        raise _Skip("not an embedding (no tensors by name)")
    if "string_to_param" in data:  # A1111's .pt: {"string_to_param": {"*": (n, D)}, ...}
        params = data["string_to_param"]
        tensors = list(params.values()) if isinstance(params, dict) else []
    elif "emb_params" in data:  # A1111's .safetensors
        tensors = [data["emb_params"]]
    elif "clip_l" in data or "clip_g" in data:
        raise _Skip("an SDXL embedding (clip_l and clip_g vectors)")
    else:  # diffusers': {token: (D,) or (n, D)}
        tensors = list(data.values())
    if len(tensors) != 1 or not isinstance(tensors[0], torch.Tensor):
        raise _Skip("not an embedding (one tensor of vectors expected)")
    vectors = tensors[0]
    if vectors.dim() == 1:
        vectors = vectors[None]
    if vectors.dim() != 2 or vectors.shape[0] < 1:
        raise _Skip(f"vectors of shape {tuple(vectors.shape)}, not (tokens, width)")
    return vectors
