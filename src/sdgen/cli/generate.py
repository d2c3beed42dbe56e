"""``generate``, ``img2img``, ``inpaint`` and ``reproduce``: one request, one run, PNGs out.

All four build a GenerationRequest from their flags and hand it to ``sdgen.cli.running.run``
with the options that are not part of the request.
"""

from __future__ import annotations

from pathlib import Path

import click

from sdgen.cli.common import cli, model_options, with_options
from sdgen.cli.running import RunOptions, run
from sdgen.errors import InvalidRequest
from sdgen.hires import DEFAULT_HIRES_STRENGTH, HIRES_UPSCALERS, HiresFix
from sdgen.params import (
    DEFAULT_STRENGTH,
    EMPHASIS_MODES,
    INPAINT_STRENGTH,
    LONG_PROMPT_MODES,
    MASKED_CONTENTS,
    RESIZE_MODES,
    GenerationRequest,
)


def request_options(func):
    """The settings of a request, shared by generate, img2img and inpaint."""
    options = [
        click.option("--negative-prompt", default="", help="what the picture should not show"),
        click.option("--model", help="diffusers folder, .safetensors file or hub id"),
        click.option("--seed", type=int, help="seed of the first picture (random if not given)"),
        click.option("--num-images", type=int, default=1, show_default=True),
        click.option("--steps", type=int, default=50, show_default=True),
        click.option("--guidance", type=float, default=7.5, show_default=True, help="CFG scale"),
        click.option(
            "--sampler",
            help="e.g. euler_a, dpmpp_2m_karras, 'DPM++ 2M Karras' (default: the model's)",
        ),
        click.option(
            "--emphasis",
            type=click.Choice(EMPHASIS_MODES),
            default="off",
            show_default=True,
            help="read A1111's syntax in the prompts ((words:1.2), [from:to:when], [a|b], "
            "a AND b :0.5): original (A1111's), no_norm, none (A1111's None: brackets and BREAK "
            "are text) or off (all plain text, as diffusers)",
        ),
        click.option(
            "--long-prompt",
            type=click.Choice(LONG_PROMPT_MODES),
            default="truncate",
            show_default=True,
            help="a prompt past 75 tokens: truncate (read its first 75, as diffusers) or chunk "
            "(read it all in 75-token chunks, as A1111; BREAK starts one with --emphasis)",
        ),
        click.option(
            "--eta",
            type=float,
            default=0.0,
            show_default=True,
            help="DDIM's eta, 0..1: 0 is deterministic, 1 adds fresh noise every step",
        ),
        click.option(
            "--clip-skip",
            type=int,
            default=1,
            show_default=True,
            help="A1111's clip skip: read the prompts from the text encoder's N-th layer from "
            "the end (2 for NovelAI-based anime models; diffusers' clip_skip is N - 1)",
        ),
        click.option(
            "--variation-strength",
            type=float,
            default=0.0,
            show_default=True,
            help="A1111's variation seeds: move each picture's noise this far (0..1) toward "
            "the noise of its variation seed",
        ),
        click.option(
            "--variation-seed",
            type=int,
            help="the first picture's variation seed (random if not given)",
        ),
        click.option(
            "--tiling",
            is_flag=True,
            help="A1111's tiling: pictures whose edges continue each other, for textures",
        ),
        click.option(
            "--seed-resize-from",
            metavar="WxH",
            callback=_size_pair,
            help="A1111's resize seed from: keep, in the middle, the noise each seed gives at "
            "this size (its picture's composition at another size), e.g. 512x512",
        ),
        click.option("--width", type=int, help="default: the model's native size"),
        click.option("--height", type=int, help="default: the model's native size"),
    ]
    return with_options(func, options)


def output_options(func):
    """What else to do with a run: rank, check, sheet, video, devices."""
    options = [
        click.option(
            "--best-of", type=int, help="keep the K best pictures by CLIP score (of --num-images)"
        ),
        click.option(
            "--clip-model",
            help="CLIP model for --best-of: folder or hub id (default: the embedded model's)",
        ),
        click.option("--grid", is_flag=True, help="also write a contact sheet of the pictures"),
        click.option(
            "--save-steps",
            type=click.Path(dir_okay=False, path_type=Path),
            help="write the first picture's denoising as a video (.mp4, .gif or .webp)",
        ),
        click.option("--every", type=int, help="one --save-steps frame every K steps [default: 1]"),
        click.option(
            "--preview",
            type=click.Choice(["x0", "latents"]),
            help="--save-steps and --save-intermediates frames: the predicted clean picture, or "
            "the current latents (fast) [default: x0]",
        ),
        click.option(
            "--save-intermediates",
            type=click.Path(file_okay=False, path_type=Path),
            help="write every step's picture of the first picture as numbered PNGs here",
        ),
        click.option(
            "--devices",
            help="spread the pictures over devices, e.g. cuda:0,cuda:1, cpu,cpu or all",
        ),
        click.option(
            "--safety-checker",
            help="check pictures with this safety checker (folder or hub id); off by default",
        ),
    ]
    return with_options(func, options)


def _size_pair(_context, param, value: str | None) -> tuple[int, int] | None:
    """A ``WxH`` flag as (width, height); the request checks the numbers."""
    if value is None:
        return None
    width, x, height = value.lower().partition("x")
    if not (x and width.strip().isdigit() and height.strip().isdigit()):
        raise click.BadParameter(f"{value!r} is not WxH, e.g. 512x512", param=param)
    return int(width), int(height)


def _request(prompt: str, kwargs: dict, **fields) -> GenerationRequest:
    """The request of a command's flags (``kwargs``) and its own ``fields`` (pictures, ...)."""
    return GenerationRequest(
        prompt=prompt,
        negative_prompt=kwargs["negative_prompt"],
        model=kwargs["model"],
        num_images=kwargs["num_images"],
        steps=kwargs["steps"],
        guidance_scale=kwargs["guidance"],
        sampler=kwargs["sampler"],
        eta=kwargs["eta"],
        emphasis=kwargs["emphasis"],
        long_prompt=kwargs["long_prompt"],
        clip_skip=kwargs["clip_skip"],
        width=kwargs["width"],
        height=kwargs["height"],
        seed=kwargs["seed"],
        variation_seed=kwargs["variation_seed"],
        variation_strength=kwargs["variation_strength"],
        seed_resize_from=kwargs["seed_resize_from"],
        tiling=kwargs["tiling"],
        precision=kwargs["precision"] or "auto",
        device=kwargs["device"],
        **fields,
    )


def _hires_options(func):
    """A1111's hires fix: a second pass at a larger size (on with a scale or a size)."""
    options = [
        click.option(
            "--hires-scale",
            type=float,
            help="add a second pass at this many times the size (A1111's hires fix), e.g. 2",
        ),
        click.option("--hires-width", type=int, help="or a second pass at this width"),
        click.option(
            "--hires-height",
            type=int,
            help="and/or height (both: scaled to cover the size, its middle cropped)",
        ),
        click.option(
            "--hires-steps", type=int, help="steps the second pass runs [default: --steps]"
        ),
        click.option(
            "--hires-strength",
            type=float,
            help=f"how much the upscaled picture is noised again, (0, 1] [default: "
            f"{DEFAULT_HIRES_STRENGTH}]",
        ),
        click.option(
            "--hires-upscaler",
            type=click.Choice(HIRES_UPSCALERS),
            help="upscale the latents (latent*) or the decoded pictures (lanczos, nearest) "
            "[default: latent]",
        ),
        click.option("--hires-sampler", help="the second pass's sampler [default: --sampler]"),
        click.option("--hires-prompt", help="the second pass's prompt [default: PROMPT]"),
        click.option(
            "--hires-negative-prompt",
            help="the second pass's negative prompt [default: --negative-prompt]",
        ),
    ]
    return with_options(func, options)


def _hires(kwargs: dict) -> HiresFix | None:
    """The hires fix the --hires-* flags ask for; None without a scale or size."""
    names = ("scale", "width", "height", "steps", "strength", "upscaler", "sampler", "prompt")
    names += ("negative_prompt",)
    given = {name: kwargs[f"hires_{name}"] for name in names if kwargs[f"hires_{name}"] is not None}
    if not given.keys() & {"scale", "width", "height"}:
        if given:
            name = next(iter(given))
            raise InvalidRequest(
                f"--hires-{name.replace('_', '-')}",
                given[name],
                "a second pass to apply to: --hires-scale, --hires-width or --hires-height",
            )
        return None
    if "scale" in given and given.keys() & {"width", "height"}:
        raise InvalidRequest(
            "--hires-scale", given["scale"], "nothing with --hires-width/--hires-height: one size"
        )
    return HiresFix(**given)


@cli.command()
@click.argument("prompt")
@request_options
@_hires_options
@model_options
@output_options
def generate(prompt, **kwargs) -> None:
    """Generate pictures from PROMPT and print their paths."""
    run(_request(prompt, kwargs, hires=_hires(kwargs)), RunOptions.from_kwargs(kwargs))


def _init_options(default_strength: float):
    """--init-image, --strength (default: diffusers' for the pipeline), --resize and how."""
    options = [
        click.option(
            "--init-image",
            required=True,
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="the picture to start from",
        ),
        click.option(
            "--strength",
            type=float,
            default=default_strength,
            show_default=True,
            help="how much of the init picture is noised away (0..1)",
        ),
        click.option(
            "--resize",
            is_flag=True,
            help="resize the init picture (and mask) to the output size, or the nearest valid one",
        ),
        click.option(
            "--resize-mode",
            type=click.Choice(RESIZE_MODES),
            default="stretch",
            show_default=True,
            help="with --resize: stretch to the size, scale to cover it and crop the middle, or "
            "scale to fit it and fill the rest from the edges",
        ),
    ]

    return lambda func: with_options(func, options)


@cli.command()
@click.argument("prompt")
@_init_options(DEFAULT_STRENGTH)
@request_options
@model_options
@output_options
def img2img(prompt, init_image, strength, resize, resize_mode, **kwargs) -> None:
    """Generate pictures from PROMPT, starting from --init-image."""
    from sdgen.media.images import read_picture

    pictures = {"init_image": read_picture(init_image, "init_image")}
    sizing = {"resize": resize, "resize_mode": resize_mode}
    request = _request(prompt, kwargs, strength=strength, **sizing, **pictures)
    run(request, RunOptions.from_kwargs(kwargs))


def _mask_options(func):
    """--mask and how it is processed (A1111's inpainting settings; all off by default)."""
    options = [
        click.option(
            "--mask",
            required=True,
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="white where the picture is repainted, black where it is kept (or: opaque "
            "strokes on a transparent layer)",
        ),
        click.option(
            "--mask-blur",
            type=int,
            default=0,
            show_default=True,
            metavar="PIXELS",
            help="blur the mask's edge by this many pixels (A1111's default: 4), for "
            "--overlay, --padding-mask-crop or --masked-content",
        ),
        click.option(
            "--padding-mask-crop",
            type=int,
            metavar="PIXELS",
            help="repaint only the mask's bounding box grown by PIXELS, at --width x --height, "
            "and paste it back into the init picture (A1111's Only masked)",
        ),
        click.option(
            "--masked-content",
            type=click.Choice(MASKED_CONTENTS),
            default="original",
            show_default=True,
            help="what the masked part starts from: the picture, A1111's fill from the colours "
            "around it, random latents or zeros (the others need --strength below 1)",
        ),
        click.option(
            "--overlay",
            is_flag=True,
            help="paste the init picture back where the mask keeps it (A1111 always does)",
        ),
    ]
    return with_options(func, options)


@cli.command()
@click.argument("prompt")
@_init_options(INPAINT_STRENGTH)
@_mask_options
@request_options
@model_options
@output_options
def inpaint(prompt, init_image, mask, strength, resize, resize_mode, **kwargs) -> None:
    """Repaint the masked part of --init-image following PROMPT."""
    from sdgen.media.images import read_picture

    pictures = {
        "init_image": read_picture(init_image, "init_image"),
        "mask": read_picture(mask, "mask", mode="L"),
    }
    names = ("mask_blur", "padding_mask_crop", "masked_content", "overlay")
    processing = {name: kwargs[name] for name in names}
    sizing = {"resize": resize, "resize_mode": resize_mode}
    request = _request(prompt, kwargs, strength=strength, **sizing, **pictures, **processing)
    run(request, RunOptions.from_kwargs(kwargs))


@cli.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", help="use this model instead of the one recorded in IMAGE")
@click.option(
    "--init-image",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="the init picture of an img2img or inpainting IMAGE (checked against its hash)",
)
@click.option(
    "--mask",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="the mask of an inpainting IMAGE (checked against its hash)",
)
@model_options
def reproduce(image, model, init_image, mask, device, precision, **kwargs) -> None:
    """Generate IMAGE again from the request recorded in its metadata."""
    from sdgen.media.images import read_picture
    from sdgen.media.metadata import read_recorded

    pictures = {}
    if init_image is not None:
        pictures["init_image"] = read_picture(init_image, "init_image")
    if mask is not None:
        pictures["mask"] = read_picture(mask, "mask", mode="L")
    recorded = read_recorded(image, pictures)
    overrides = {"model": model, "precision": precision}
    request = recorded.request.replace(device=device, **{k: v for k, v in overrides.items() if v})
    options = {
        # The recorded model's weights must be the ones loaded (a folder or hub id may have
        # changed since); --model chooses another model on purpose.
        "model_hash": None if model else recorded.model_hash,
        # and so must the textual inversions its prompts named
        "ti_hashes": None if model else recorded.ti_hashes,
        "lora_hashes": None if model else recorded.lora_hashes,
        # A picture of a stopped generation (A1111's interrupt, the server's stop) is remade by
        # stopping at the same step.
        "stop_at": recorded.stopped_at,
    }
    run(request, RunOptions.from_kwargs({**kwargs, **options}))
