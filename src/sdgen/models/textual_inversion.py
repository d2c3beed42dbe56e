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

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sdgen.errors import SdgenError

log = logging.getLogger(__name__)

SUFFIXES = (".safetensors", ".pt", ".bin")  # A1111 also reads embeddings hidden in pictures
PICKLE_SUFFIXES = (".pt", ".bin")
MAX_FILES = 10_000
MAX_FILE_BYTES = 16 << 20  # an embedding is kilobytes (75 x 1024 fp32 vectors: 300 KB)


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
    skipped: dict[str, str]  # file (relative to the folder) -> reason
    # embeddings of another width, by name -> (width, vectors): what A1111 lists as skipped
    other_width: dict[str, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def none(cls) -> TextualInversions:
        return cls({}, {})


def load_textual_inversions(
    folder: str | Path,
    hidden_size: int,
    max_vectors: int,
    *,
    allow_pickle: bool = False,
    max_value: float = float("inf"),
) -> TextualInversions:
    """Every embedding in ``folder`` whose vectors are ``hidden_size`` wide (the text encoder's
    token embeddings), at most ``max_vectors`` (the tokens of a prompt's window, 75) and at
    most ``max_value`` in size (the model's precision's largest number), named after its file.

    Raises:
        SdgenError: ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SdgenError(f"embeddings: {folder} is not a folder of embedding files")
    files = _embedding_files(folder)
    loaded: dict[str, TextualInversion] = {}
    spelled: dict[str, str] = {}  # name as prompts spell it (CLIP lowercases) -> name
    skipped: dict[str, str] = {}
    if len(files) > MAX_FILES:  # one line for them all, from the first one left out
        first = str(files[MAX_FILES].relative_to(folder))
        after = len(files) - MAX_FILES - 1
        skipped[first] = f"past the first {MAX_FILES} files, as are the {after} after it"
    other_width: dict[str, tuple[int, int]] = {}
    for path in files[:MAX_FILES]:
        label = str(path.relative_to(folder))
        try:
            inversion = _load_file(path, hidden_size, max_vectors, allow_pickle, max_value)
        except _OtherWidth as mismatch:
            other_width[path.stem] = (mismatch.width, mismatch.count)
            skipped[label] = str(mismatch)
            continue
        except _Skip as reason:
            skipped[label] = str(reason)
            continue
        if inversion.name.lower() in spelled:
            taken = spelled[inversion.name.lower()]
            skipped[label] = f"prompts spell its name as {taken!r}'s, loaded from another file"
            continue
        loaded[inversion.name] = inversion
        spelled[inversion.name.lower()] = inversion.name
    for label, reason in skipped.items():
        log.warning("embedding %s skipped: %s", label, reason)
    return TextualInversions(loaded, skipped, other_width)


def _embedding_files(folder: Path) -> list[Path]:
    """The embedding files under ``folder``, through linked folders too (as A1111's walk), each
    real folder once."""
    files, seen = [], set()
    for root, folders, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a link back up the tree
            folders[:] = []
            continue
        seen.add(real)
        folders.sort()
        files += [Path(root) / n for n in sorted(names) if Path(n).suffix.lower() in SUFFIXES]
    return [path for path in files if path.is_file()]


class _Skip(Exception):
    """Why a file is not loaded."""


class _OtherWidth(_Skip):
    """An embedding made for a text encoder of another width (e.g. SD 2.x's for SD 1.x)."""

    def __init__(self, width: int, count: int, hidden_size: int):
        super().__init__(f"vectors {width} wide; the model's text encoder takes {hidden_size}")
        self.width, self.count = width, count


def _load_file(
    path: Path, hidden_size: int, max_vectors: int, allow_pickle: bool, max_value: float
) -> TextualInversion:
    if path.stat().st_size > MAX_FILE_BYTES:  # a checkpoint, not an embedding: not read
        raise _Skip(f"{path.stat().st_size >> 20} MB, too large for an embedding")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise _Skip(
                "a pickle file: convert it to .safetensors (or, on the command line, "
                "pass --allow-pickle)"
            )
        data = _load_pickle(path)
    else:
        from safetensors.torch import load_file

        try:
            data = load_file(path)
        except Exception as err:  # noqa: BLE001 - any unreadable file is skipped, named
            raise _Skip(f"not a safetensors file ({_first_line(err)})") from None
    vectors = _vectors(data)
    if vectors.shape[-1] != hidden_size:
        raise _OtherWidth(vectors.shape[-1], vectors.shape[0], hidden_size)
    if vectors.shape[0] > max_vectors:
        raise _Skip(f"{vectors.shape[0]} vectors; a prompt's window holds {max_vectors}")
    vectors = vectors.detach().float().cpu().contiguous()
    if not bool(torch.isfinite(vectors).all()) or vectors.abs().max() > max_value:
        raise _Skip("vectors that are not finite, or too large for the model's precision")
    from sdgen.models.loaded import sha256_file  # imported here: loaded imports this module

    return TextualInversion(path.stem, vectors, sha256_file(path))


def _load_pickle(path: Path) -> dict:
    """A pickle embedding through torch's weights-only loader; A1111's older .pt files hold
    their vectors in a ParameterDict, the one class allowed besides tensors (as A1111's own
    safe unpickler allows it)."""
    try:
        with torch.serialization.safe_globals([torch.nn.ParameterDict]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise _Skip(f"not readable by torch's weights-only loader ({_first_line(err)})") from None
    return data


def _first_line(error: Exception) -> str:
    """An error's first line, without terminal escapes (torch's messages carry some)."""
    import re

    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return re.sub(r"\x1b\[[0-9;]*m", "", line)[:200]


def _vectors(data: object) -> torch.Tensor:
    """The (n, D) vectors of a loaded file, in any of the formats A1111 reads."""
    if not isinstance(data, dict):
        raise _Skip("not an embedding (no tensors by name)")
    if "string_to_param" in data:  # A1111's .pt: {"string_to_param": {"*": (n, D)}, ...}
        params = data["string_to_param"]
        is_dict = isinstance(params, dict | torch.nn.ParameterDict)
        tensors = list(params.values()) if is_dict else []
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
