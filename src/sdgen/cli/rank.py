"""The ``rank`` command: pictures on disk, best match to a prompt first, by CLIP score."""

from __future__ import annotations

from pathlib import Path

import click

from sdgen.cli.common import cli, quiet_libraries


@cli.command()
@click.argument("prompt")
@click.argument(
    "images",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option(
    "--clip-model",
    help="CLIP model: folder or hub id, e.g. openai/clip-vit-base-patch32 "
    "(default: the embedded model's)",
)
@click.option("--hf-token", envvar="HF_TOKEN", help="token for gated hub models [HF_TOKEN]")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto")
def rank(prompt, images, clip_model, hf_token, device) -> None:
    """Rank IMAGES by how well they match PROMPT (CLIP score), best first.

    Prints one line per picture: the score with 4 decimals, two spaces, and the path as given.
    """
    from sdgen.media.images import read_picture
    from sdgen.ranking.clip import load_ranker

    # Every picture is read before the model is loaded, so a bad file fails at once.
    pictures = [read_picture(path, "image").image for path in images]
    quiet_libraries()
    ranker = load_ranker(clip_model, token=hf_token, device=device)
    for index, score in ranker.rank(prompt, pictures):
        click.echo(f"{score:.4f}  {images[index]}")
