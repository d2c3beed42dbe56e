"""Score pictures against a prompt with a CLIP model, as the diffusers tutorials rank them.

The score is CLIP's ``logits_per_image``: the scaled cosine similarity of the picture's and the
prompt's embeddings, exactly what transformers' ``CLIPModel`` gives. The model comes from the
embedded miniature model (the default), a local folder, or the Hugging Face hub.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from sdgen.errors import InvalidRequest, ModelNotFound
from sdgen.models.bundled import BUNDLED_MODELS, MINIATURE_MODEL
from sdgen.models.hub import folder_or_hub_snapshot
from sdgen.models.tokenizing import tokenize

FIELD = "clip_model"  # the request field (and, as --clip-model, the flag) errors name
BATCH_SIZE = 16  # pictures per forward pass: bounds memory for ViT-L at 224 px with many pictures
# What a CLIP repository on the hub needs to load: no pickle, TF or Flax weights, no open_clip copy.
HUB_PATTERNS = [
    "config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*.safetensors",
]


@dataclass
class Ranker:
    """A loaded CLIP model with its tokenizer and image processor."""

    model: torch.nn.Module  # transformers CLIPModel
    tokenizer: object
    processor: object
    device: torch.device

    @torch.no_grad()
    def score(self, prompt: str, images: list[Image.Image]) -> list[float]:
        """CLIP's logit of each picture against ``prompt``; higher is a better match."""
        # Padding after the end token changes nothing: the text tower is causal and pools at it.
        # A tokenizer config without model_max_length gives a huge one: the positions bound it.
        positions = self.model.config.text_config.max_position_embeddings
        text = tokenize(
            self.tokenizer,
            [prompt],
            padding="max_length",
            max_length=min(self.tokenizer.model_max_length, positions),
            truncation=True,
            return_tensors="pt",
        ).to(self.device)
        scores = []
        for start in range(0, len(images), BATCH_SIZE):
            chunk = images[start : start + BATCH_SIZE]
            pixels = self.processor(images=chunk, return_tensors="pt").pixel_values
            output = self.model(
                input_ids=text.input_ids,
                attention_mask=text.attention_mask,
                pixel_values=pixels.to(self.device, self.model.dtype),
            )
            scores.extend(output.logits_per_image[:, 0].tolist())  # (N, 1): one prompt
        return scores

    def rank(self, prompt: str, images: list[Image.Image]) -> list[tuple[int, float]]:
        """(index, score) of every picture, best first; ties keep the lower index first."""
        return _best_first(enumerate(self.score(prompt, images)))


def keep_best(
    ranker: Ranker, prompts: list[str], images: list[Image.Image], k: int
) -> list[tuple[int, float]]:
    """The ``k`` pictures that best match their own prompt (``prompts[i]`` for ``images[i]``).

    Args:
        ranker: the CLIP model that scores.
        prompts: one prompt per picture; pictures of the same prompt are scored in one batch.
        images: the pictures.
        k: how many to keep, from 1 to ``len(images)``.
    Returns:
        (index, score) of the kept pictures, best first; ties keep the lower index first.
    """
    if len(prompts) != len(images):
        raise ValueError(f"keep_best: {len(prompts)} prompts for {len(images)} pictures")
    if not 1 <= k <= len(images):
        raise InvalidRequest("best_of", k, f"from 1 to the number of pictures ({len(images)})")
    by_prompt: dict[str, list[int]] = {}
    for index, prompt in enumerate(prompts):
        by_prompt.setdefault(prompt, []).append(index)
    scores: dict[int, float] = {}
    for prompt, indices in by_prompt.items():
        scores.update(zip(indices, ranker.score(prompt, [images[i] for i in indices]), strict=True))
    return _best_first(sorted(scores.items()))[:k]


def _best_first(scored) -> list[tuple[int, float]]:
    """(index, score) pairs sorted by score, highest first; a stable sort keeps ties in order."""
    return sorted(scored, key=lambda pair: -pair[1])


def load_ranker(
    source: str | os.PathLike | None = None, *, token: str | None = None, device: str = "cpu"
) -> Ranker:
    """Load a CLIP model for ranking.

    Args:
        source: a folder with a transformers ``CLIPModel`` (safetensors weights, tokenizer and
            image processor config), a hub id such as ``openai/clip-vit-base-patch32`` (read
            from the Hugging Face cache first; HF_HUB_OFFLINE is honoured), or the name of a
            model sdgen ships. ``None`` is the embedded miniature model's CLIP.
        token: Hugging Face token for gated hub models; defaults to ``HF_TOKEN``.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
    Returns:
        The model in fp32 and eval mode on ``device``, with its tokenizer and image processor.
    """
    from sdgen.models.devices import resolve_device

    target = resolve_device(device)
    folder = _find_folder(MINIATURE_MODEL if source is None else str(source), token)
    _check_folder(folder)
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    from sdgen.models.building import BUILD_LOCK

    try:
        with BUILD_LOCK:  # not two threads at once: sdgen.models.building
            model = CLIPModel.from_pretrained(folder, use_safetensors=True, dtype=torch.float32)
        tokenizer = CLIPTokenizer.from_pretrained(folder)
        processor = CLIPImageProcessor.from_pretrained(folder)
    except (OSError, ValueError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0]  # the message stays one line
        raise ModelNotFound(
            f"{FIELD}: {folder} cannot be loaded as a CLIP model ({reason})"
        ) from err
    model = model.to(target).eval().requires_grad_(False)
    return Ranker(model, tokenizer, processor, target)


def _find_folder(name: str, token: str | None) -> Path:
    """The local folder of a shipped model's CLIP, a folder, or a hub id's cached snapshot."""
    if name in BUNDLED_MODELS:
        return BUNDLED_MODELS[name] / "clip"  # the miniature model ships its CLIP in clip/
    return folder_or_hub_snapshot(
        name,
        token=token,
        field=FIELD,
        kind="CLIP model",
        patterns=HUB_PATTERNS,
        flag="--clip-model",
    )


def _check_folder(folder: Path) -> None:
    """Refuse, by field name, a folder that lacks a file a CLIP ranker needs."""
    config = folder / "config.json"
    if not config.is_file():
        raise ModelNotFound(f"{FIELD}: {folder} is not a CLIP model folder (it has no config.json)")
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type != "clip":
        raise ModelNotFound(
            f"{FIELD}: {folder} holds a {model_type!r} model; expected a CLIP model ('clip')"
        )
    needs = {
        "safetensors weights (model.safetensors)": [
            "model.safetensors",
            "model.safetensors.index.json",
        ],
        "an image processor config": ["preprocessor_config.json"],
        "a tokenizer": ["tokenizer.json", "vocab.json"],
    }
    for what, names in needs.items():
        if not any((folder / name).is_file() for name in names):
            raise ModelNotFound(f"{FIELD}: {folder} has no {what}; expected {' or '.join(names)}")
