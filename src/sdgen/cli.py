"""The ``sdgen`` command line: flags -> a GenerationRequest -> the library -> paths on stdout.

Pictures' paths go to stdout, one per line in image order, so scripts can consume them; logs and
the progress bar go to stderr. A user mistake exits with status 2 and one line on stderr.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from sdgen.errors import SdgenError
from sdgen.params import PRECISIONS, GenerationRequest

log = logging.getLogger("sdgen")
USAGE_ERROR = 2


@click.group()
@click.version_option(package_name="sdgen")
def cli() -> None:
    """sdgen: Stable Diffusion image generation."""


def _model_options(func):
    """Options that choose and load the model, shared by generate and reproduce."""
    options = [
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N"),
        click.option(
            "--precision",
            type=click.Choice(PRECISIONS),
            help="auto (fp16 on CUDA, fp32 on CPU) for generate; as recorded for reproduce",
        ),
        click.option("--hf-token", envvar="HF_TOKEN", help="token for gated hub models [HF_TOKEN]"),
        click.option(
            "--allow-pickle",
            is_flag=True,
            help="load .ckpt/.bin checkpoints (through torch's weights-only loader)",
        ),
        click.option(
            "--out",
            type=click.Path(file_okay=False, path_type=Path),
            default=Path("outputs"),
            show_default=True,
            help="folder for the PNGs",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@cli.command()
@click.argument("prompt")
@click.option("--negative-prompt", default="", help="what the picture should not show")
@click.option("--model", help="diffusers folder, .safetensors file or hub id")
@click.option("--seed", type=int, help="seed of the first picture (random if not given)")
@click.option("--num-images", type=int, default=1, show_default=True)
@click.option("--steps", type=int, default=50, show_default=True)
@click.option("--guidance", type=float, default=7.5, show_default=True, help="CFG scale")
@click.option(
    "--sampler", help="e.g. euler_a, dpmpp_2m_karras, 'DPM++ 2M Karras' (default: the model's)"
)
@click.option("--width", type=int, help="default: the model's native size")
@click.option("--height", type=int, help="default: the model's native size")
@_model_options
def generate(
    prompt,
    negative_prompt,
    model,
    seed,
    num_images,
    steps,
    guidance,
    sampler,
    width,
    height,
    device,
    precision,
    hf_token,
    allow_pickle,
    out,
) -> None:
    """Generate pictures from PROMPT and print their paths."""
    request = GenerationRequest(
        prompt=prompt,
        negative_prompt=negative_prompt,
        model=model,
        num_images=num_images,
        steps=steps,
        guidance_scale=guidance,
        sampler=sampler,
        width=width,
        height=height,
        seed=seed,
        precision=precision or "auto",
        device=device,
    )
    _run(request, out=out, token=hf_token, allow_pickle=allow_pickle)


@cli.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", help="use this model instead of the one recorded in IMAGE")
@_model_options
def reproduce(image, model, device, precision, hf_token, allow_pickle, out) -> None:
    """Generate IMAGE again from the request recorded in its metadata."""
    from sdgen.media.metadata import read_request

    request = read_request(image)
    overrides = {"model": model, "precision": precision}
    request = request.replace(device=device, **{k: v for k, v in overrides.items() if v})
    _run(request, out=out, token=hf_token, allow_pickle=allow_pickle)


def _run(request: GenerationRequest, *, out: Path, token: str | None, allow_pickle: bool) -> None:
    from sdgen.api import save_result
    from sdgen.models.loader import load_model
    from sdgen.pipelines.txt2img import txt2img

    _quiet_libraries()
    model = load_model(
        request.model,
        device=request.device,
        precision=request.precision,
        token=token,
        allow_pickle=allow_pickle,
    )
    with _ProgressBar() as progress:
        result = txt2img(model, request, callback=progress)
    for path in save_result(result, model, out):
        click.echo(path)


class _ProgressBar:
    """A tqdm bar on stderr, quiet when stderr is not a terminal; a step callback."""

    def __enter__(self) -> _ProgressBar:
        self.bar = None
        return self

    def __call__(self, step) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=step.total, unit="step", disable=not sys.stderr.isatty())
        self.bar.update(1)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the CLI and turns user mistakes into one line and exit status 2."""
    logging.basicConfig(level=logging.WARNING, format="sdgen: %(message)s", stream=sys.stderr)
    try:
        cli.main(args=argv, prog_name="sdgen", standalone_mode=False)
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.ClickException as err:  # bad flag, missing argument, unparsable number
        click.echo(f"sdgen: error: {err.format_message()}", err=True)
        return USAGE_ERROR
    except SdgenError as err:
        click.echo(f"sdgen: error: {err}", err=True)
        return USAGE_ERROR
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("sdgen: interrupted", err=True)
        return 130
    return 0


def _quiet_libraries() -> None:
    """diffusers and transformers chat on stderr (loading bars, notices); keep their errors only."""
    import diffusers
    import transformers

    for library in (diffusers, transformers):
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
