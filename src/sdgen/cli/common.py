"""What the commands share: the group, model-loading options, the progress bar, quiet libraries."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sdgen.params import FAST_PATH_MODES, PRECISIONS

FAST_PATH_HELP = (
    "channels-last, fused QKV, torch.compile and CUDA graphs: auto is on for CUDA in sdgen "
    "serve, off on the CPU and for one-off commands (compiling takes longer than it saves "
    "there); the first run of each shape compiles [SDGEN_FAST_PATH]"
)

USAGE_ERROR = 2


@click.group()
@click.version_option(package_name="sdgen")
def cli() -> None:
    """sdgen: Stable Diffusion image generation."""


def with_options(func, options: list):
    """``func`` decorated with click ``options``, the first listed shown first in --help."""
    for option in reversed(options):
        func = option(func)
    return func


def model_options(func):
    """Options that choose where and how the model runs, and where pictures go."""
    options = [
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N"),
        click.option(
            "--precision",
            type=click.Choice(PRECISIONS),
            help="auto (fp16 on CUDA, fp32 on CPU) for generate; as recorded for reproduce",
        ),
        click.option(
            "--fast-path",
            type=click.Choice(FAST_PATH_MODES),
            default="auto",
            show_default=True,
            help=FAST_PATH_HELP,
        ),
        click.option("--hf-token", envvar="HF_TOKEN", help="token for gated hub models [HF_TOKEN]"),
        click.option(
            "--allow-pickle",
            is_flag=True,
            help="load pickle checkpoints: .ckpt/.pt/.pth/.bin (with torch's weights-only loader)",
        ),
        click.option(
            "--embeddings",
            type=click.Path(file_okay=False, path_type=Path),
            help="a folder of textual inversion embeddings that prompts name by file name "
            "(A1111's embeddings folder)",
        ),
        click.option(
            "--lora-dir",
            type=click.Path(file_okay=False, path_type=Path),
            help="a folder of LoRA .safetensors files that prompts name as "
            "<lora:file name:weight> (A1111's Lora folder)",
        ),
        click.option(
            "--out",
            type=click.Path(file_okay=False, path_type=Path),
            default=Path("outputs"),
            show_default=True,
            help="folder for the PNGs",
        ),
    ]
    return with_options(func, options)


class ProgressBar:
    """A tqdm bar on stderr, quiet when stderr is not a terminal; a step callback."""

    def __enter__(self) -> ProgressBar:
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


def quiet_libraries() -> None:
    """diffusers and transformers chat on stderr (loading bars, notices); keep their errors only."""
    import diffusers
    import transformers

    for library in (diffusers, transformers):
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()
