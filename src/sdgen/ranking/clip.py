"""Score pictures against a prompt with a CLIP model, as the diffusers tutorials rank them.

The score is CLIP's ``logits_per_image``: the scaled cosine similarity of the picture's and the
prompt's embeddings, exactly what transformers' ``CLIPModel`` gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image


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
        text = self.tokenizer(
            [prompt],
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        pixels = self.processor(images=images, return_tensors="pt").pixel_values
        output = self.model(
            input_ids=text.input_ids.to(self.device), pixel_values=pixels.to(self.device)
        )
        return output.logits_per_image[:, 0].tolist()

    def rank(self, prompt: str, images: list[Image.Image]) -> list[tuple[int, float]]:
        """(index, score) of every picture, best first."""
        scores = self.score(prompt, images)
        return sorted(enumerate(scores), key=lambda pair: -pair[1])


def load_ranker(
    folder: Path, *, tokenizer_folder: Path | None = None, device: str = "cpu"
) -> Ranker:
    """A CLIP model from a local folder (CLIPModel weights and an image processor config)."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    target = torch.device(device)
    model = CLIPModel.from_pretrained(folder, use_safetensors=True).to(target).eval()
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    return Ranker(model, tokenizer, CLIPImageProcessor.from_pretrained(folder), target)
