"""The optional safety checker: flag pictures as diffusers' StableDiffusionPipeline does.

Off by default, as in the diffusers tutorials that pass ``safety_checker=None``. When asked for,
it is diffusers' ``StableDiffusionSafetyChecker`` (a CLIP vision tower and concept embeddings) with
its ``CLIPImageProcessor``, run the way the pipeline's ``run_safety_checker`` runs them; a flagged
picture is replaced by a black picture of the same size, as the pipeline does.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from sdgen.errors import ModelNotFound
from sdgen.models.hub import folder_or_hub_snapshot

if TYPE_CHECKING:
    from sdgen.pipelines.stages import GenerationResult

FIELD = "safety_checker"  # the request field (and, as --safety-checker, the flag) errors name
ARCHITECTURE = "StableDiffusionSafetyChecker"  # what the checker's config.json lists
BATCH_SIZE = 16  # pictures per forward pass: bounds memory for ViT-L at 224 px with many pictures
# A checker repository (CompVis/stable-diffusion-safety-checker), or an SD pipeline repository's
# safety_checker/ and feature_extractor/: config, image processor, safetensors weights only.
_WEIGHTS = ["model.safetensors", "model.safetensors.index.json", "model-*.safetensors"]
HUB_PATTERNS = [
    "config.json",
    "preprocessor_config.json",
    *_WEIGHTS,
    "safety_checker/config.json",
    *(f"safety_checker/{name}" for name in _WEIGHTS),
    "feature_extractor/preprocessor_config.json",
]


@dataclass
class SafetyChecker:
    """A loaded safety checker with its image processor."""

    model: torch.nn.Module  # diffusers StableDiffusionSafetyChecker
    processor: object  # transformers CLIPImageProcessor (the pipeline's feature_extractor)
    device: torch.device

    @torch.no_grad()
    def check(self, images: list[Image.Image]) -> list[bool]:
        """Whether each picture is flagged (diffusers' ``nsfw_content_detected``)."""
        flagged: list[bool] = []
        for start in range(0, len(images), BATCH_SIZE):
            chunk = [image.convert("RGB") for image in images[start : start + BATCH_SIZE]]
            # As run_safety_checker: the processor gets the PIL pictures, the checker their
            # pixels (N, 3, 224, 224) and the pictures as arrays, which it blacks out in place.
            features = self.processor(chunk, return_tensors="pt")
            arrays = [np.asarray(image, dtype=np.float32) / 255.0 for image in chunk]
            _, has_nsfw_concept = self.model(
                images=arrays,
                clip_input=features.pixel_values.to(self.device, self.model.dtype),
            )
            flagged.extend(bool(flag) for flag in has_nsfw_concept)
        return flagged

    def apply(self, result: GenerationResult) -> tuple[GenerationResult, list[bool]]:
        """``result`` with its flagged pictures black (same size), and the flags in image order."""
        flagged = self.check(result.images)
        images = [
            Image.new(image.mode, image.size, "black") if is_flagged else image
            for image, is_flagged in zip(result.images, flagged, strict=True)
        ]
        return replace(result, images=images), flagged


def load_safety_checker(
    source: str | os.PathLike, *, token: str | None = None, device: str = "cpu"
) -> SafetyChecker:
    """Load a safety checker.

    Args:
        source: a folder with diffusers' ``StableDiffusionSafetyChecker`` (config.json,
            safetensors weights, preprocessor_config.json), an SD pipeline folder with it in
            ``safety_checker/`` and its image processor in ``feature_extractor/``, or a hub id
            such as ``CompVis/stable-diffusion-safety-checker`` (read from the Hugging Face
            cache first; HF_HUB_OFFLINE is honoured).
        token: Hugging Face token for gated hub models; defaults to ``HF_TOKEN``.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
    Returns:
        The checker in fp32 and eval mode on ``device``, with its image processor.
    """
    from sdgen.models.devices import resolve_device

    target = resolve_device(device)
    checker_folder, processor_folder = _split_folder(
        folder_or_hub_snapshot(
            str(source),
            token=token,
            field=FIELD,
            kind="safety checker",
            patterns=HUB_PATTERNS,
            flag="--safety-checker",
        )
    )
    _check_folders(checker_folder, processor_folder)
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    from sdgen.models.building import BUILD_LOCK

    try:
        with BUILD_LOCK:  # not two threads at once: sdgen.models.building
            model = StableDiffusionSafetyChecker.from_pretrained(
                checker_folder, use_safetensors=True, dtype=torch.float32
            )
        processor = CLIPImageProcessor.from_pretrained(processor_folder)
    except (OSError, ValueError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0]  # the message stays one line
        raise ModelNotFound(
            f"{FIELD}: {checker_folder} cannot be loaded as a safety checker ({reason})"
        ) from err
    model = model.to(target).eval().requires_grad_(False)
    return SafetyChecker(model, processor, target)


def _split_folder(folder: Path) -> tuple[Path, Path]:
    """(checker folder, image processor folder): a pipeline folder keeps them in two subfolders."""
    if (folder / "safety_checker" / "config.json").is_file():
        return folder / "safety_checker", folder / "feature_extractor"
    return folder, folder


def _check_folders(checker: Path, processor: Path) -> None:
    """Refuse, by field name, folders that lack a file a safety checker needs."""
    config = checker / "config.json"
    if not config.is_file():
        raise ModelNotFound(
            f"{FIELD}: {checker} is not a safety checker folder (it has no config.json, and no "
            "safety_checker/ subfolder with one)"
        )
    architectures = json.loads(config.read_text()).get("architectures") or []
    if ARCHITECTURE not in architectures:
        raise ModelNotFound(
            f"{FIELD}: {checker} holds a {', '.join(architectures) or 'model'}; expected "
            f"diffusers' {ARCHITECTURE}"
        )
    if not any((checker / name).is_file() for name in _WEIGHTS[:2]):
        raise ModelNotFound(
            f"{FIELD}: {checker} has no safetensors weights (model.safetensors); sdgen loads "
            "safetensors only"
        )
    if not (processor / "preprocessor_config.json").is_file():
        raise ModelNotFound(
            f"{FIELD}: {processor} has no image processor config (preprocessor_config.json)"
        )
