"""Evaluate a model on the shapes task: generate, read each picture back, score per attribute.

    python -m sdgen.miniature.evaluate [--model PATH] [--guidance 7.5] [--steps 50] [--seed 0]

Every prompt of the grammar (8 colours x 3 shapes x 7 backgrounds = 168) is generated once, each
picture is read by the deterministic detector, and the share of pictures whose shape, colour and
background match what the prompt asked for is reported.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from PIL import Image

from sdgen.miniature.detector import detect
from sdgen.miniature.shapes import ATTRIBUTES, Attributes, all_full_prompts, parse_prompt
from sdgen.models.loaded import LoadedModel
from sdgen.params import GenerationRequest
from sdgen.pipelines.txt2img import txt2img


@dataclass(frozen=True)
class Scores:
    """Per-attribute accuracy over ``count`` pictures (only attributes the prompts fixed)."""

    accuracy: dict[str, float]
    count: int

    def table(self) -> str:
        rows = [f"| {name} | {100 * value:.1f}% |" for name, value in self.accuracy.items()]
        return "\n".join(["| attribute | accuracy |", "| --- | --- |", *rows])


def matches(asked: Attributes, seen: Attributes) -> dict[str, bool]:
    """For each attribute the prompt fixes, whether the picture shows it."""
    return {
        name: getattr(seen, name) == getattr(asked, name)
        for name in ATTRIBUTES
        if getattr(asked, name) is not None
    }


def score_pictures(prompts: list[str], images: list[Image.Image]) -> Scores:
    totals: dict[str, list[bool]] = {name: [] for name in ATTRIBUTES}
    for prompt, image in zip(prompts, images, strict=True):
        for name, ok in matches(parse_prompt(prompt), detect(image)).items():
            totals[name].append(ok)
    accuracy = {name: sum(oks) / len(oks) for name, oks in totals.items() if oks}
    return Scores(accuracy=accuracy, count=len(images))


def generate_for(model: LoadedModel, prompts: list[str], **settings) -> list[Image.Image]:
    """One picture per prompt; image i has seed ``seed + i``, as any sdgen request."""
    request = GenerationRequest(prompt=tuple(prompts), **settings)
    return txt2img(model, request).images


def evaluate(model: LoadedModel, prompts: list[str] | None = None, **settings) -> Scores:
    """Accuracy of ``model`` on ``prompts`` (default: all 168 grammar prompts)."""
    prompts = prompts or all_full_prompts()
    return score_pictures(prompts, generate_for(model, prompts, **settings))


def main(argv: list[str] | None = None) -> None:
    from sdgen.models.loader import load_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="default: the embedded miniature model")
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--negative-prompt", default="")
    args = parser.parse_args(argv)
    model = load_model(args.model, device="cpu")
    scores = evaluate(
        model,
        guidance_scale=args.guidance,
        steps=args.steps,
        seed=args.seed,
        negative_prompt=args.negative_prompt,
    )
    print(f"{scores.count} prompts, guidance {args.guidance}, {args.steps} steps, seed {args.seed}")
    print(scores.table())


if __name__ == "__main__":
    main()
