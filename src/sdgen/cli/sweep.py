"""The ``sweep`` command: one prompt, one or two settings varied, a labelled grid.

``generate``'s --guidance, --steps, --sampler and --clip-skip take comma-separated values
here, and --seeds and --strength (with --init-image) join them. A flag given several values is
an axis: the first such flag on the command line is the grid's columns, the second its rows. A
flag given one value just sets that setting for every cell. The model is loaded once; each cell
is one picture, saved with its metadata like ``generate``'s, then the grid is saved with the
sweep's layout as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from click.core import ParameterSource

from sdgen.cli.common import ProgressBar, cli, model_options, quiet_libraries, with_options
from sdgen.cli.generate import _request, request_options
from sdgen.errors import InvalidRequest
from sdgen.params import GenerationRequest

# Axis name (sdgen.pipelines.sweep.SWEEP_AXES) -> the name of the flag's parameter.
AXIS_FLAGS = {
    "guidance": "guidance",
    "steps": "steps",
    "seed": "seeds",
    "sampler": "sampler",
    "strength": "strength",
    "clip_skip": "clip_skip",
}
_ORDER_KEY = "sdgen.sweep.order"  # ctx.meta: the axis flags in command-line order


def _remember_order(ctx: click.Context, param: click.Parameter, value: object) -> object:
    """Note a flag given on the command line; Click runs callbacks in command-line order."""
    if ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE:
        ctx.meta.setdefault(_ORDER_KEY, []).append(param.name)
    return value


def sweep_options(func):
    """``request_options``, with comma lists for --guidance, --steps, --sampler and
    --clip-skip; --seeds, --strength, --init-image and --resize."""
    func = request_options(func)
    # request_options makes new Option objects on every call: changing them changes this command.
    changes = {
        "seed": {"help": "the seed of every cell (random if not given); see --seeds"},
        "num_images": {"hidden": True},  # one picture a cell; sweep_requests refuses others
    }
    for param in func.__click_params__:
        if param.name in ("guidance", "steps", "sampler", "clip_skip"):
            param.type = click.STRING  # parsed per axis by sdgen.pipelines.sweep.parse_axis
            param.callback = _remember_order
            param.help = f"{param.help or param.name}; comma-separated values to sweep"
        for attribute, value in changes.get(param.name, {}).items():
            setattr(param, attribute, value)
    options = [
        click.option(
            "--seeds",
            callback=_remember_order,
            help="seeds to sweep, e.g. 0,1,2 (default: one seed for every cell)",
        ),
        click.option(
            "--strength",
            callback=_remember_order,
            help="img2img strengths to sweep, e.g. 0.3,0.6 (needs --init-image)",
        ),
        click.option(
            "--init-image",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="start every cell from this picture (img2img)",
        ),
        click.option(
            "--resize",
            is_flag=True,
            help="resize the init picture to the output size, or the nearest valid one",
        ),
    ]
    return with_options(func, options)


@cli.command()
@click.argument("prompt")
@sweep_options
@model_options
def sweep(prompt, init_image, resize, **kwargs) -> None:
    """Generate PROMPT's pictures in a grid, varying one or two settings.

    Give a flag several comma-separated values to sweep it, e.g. --guidance 1.1,3,7,14: the
    first swept flag makes the columns, the second the rows. Every cell has the same seed unless
    --seeds is swept. Prints each cell's path (row by row), then the grid's.
    """
    from sdgen.models.fast_path import for_one_off_command
    from sdgen.models.loader import load_model
    from sdgen.pipelines.sweep import sweep_requests

    order = click.get_current_context().meta.get(_ORDER_KEY, [])
    base, axes = _plan(prompt, init_image, resize, kwargs, order)
    cells = sweep_requests(base, axes)
    quiet_libraries()
    model = load_model(
        base.model,
        device=base.device,
        precision=base.precision,
        token=kwargs["hf_token"],
        allow_pickle=kwargs["allow_pickle"],
        fast_path=for_one_off_command(kwargs["fast_path"]),
        embeddings=kwargs["embeddings"],
        loras=kwargs["lora_dir"],
    )
    _check_cells(model, cells)
    out: Path = kwargs["out"]
    pictures, paths = [], []
    for row in cells:
        pictures.append([])
        paths.append([])
        for request in row:
            picture, path = _generate_cell(model, request, out)
            click.echo(path)
            pictures[-1].append(picture)
            paths[-1].append(path)
    click.echo(_save_grid(cells, [name for name, _ in axes], pictures, paths, out))


def _plan(
    prompt: str, init_image: Path | None, resize: bool, kwargs: dict, order: list[str]
) -> tuple[GenerationRequest, list[tuple[str, list]]]:
    """The base request and the swept axes, in command-line order, from the flags."""
    from sdgen.pipelines.sweep import SWEEP_AXES, parse_axis

    texts = {axis: kwargs[flag] for axis, flag in AXIS_FLAGS.items() if kwargs[flag] is not None}
    values = {axis: parse_axis(axis, text) for axis, text in texts.items()}
    if "seed" in values and kwargs["seed"] is not None:
        raise InvalidRequest("seeds", texts["seed"], "give --seed or --seeds, not both")
    if init_image is None:
        for name, given in (("strength", "strength" in values), ("resize", resize)):
            if given:
                raise InvalidRequest(
                    name, texts.get(name, True), "needs an init picture: give --init-image"
                )
    pictures = {}
    if init_image is not None:
        from sdgen.media.images import read_picture

        pictures = {"init_image": read_picture(init_image, "init_image"), "resize": resize}
    # Each setting's first value (typed, under its flag's name for _request); a swept one is
    # replaced in every cell. --seeds and --strength are not _request's: set through the field.
    first = {axis: given[0] for axis, given in values.items()}
    typed = {AXIS_FLAGS[axis]: value for axis, value in first.items()}
    base = _request(prompt, {**kwargs, **typed}, **pictures)
    base = base.replace(**{SWEEP_AXES[axis].field: value for axis, value in first.items()})
    swept = [axis for axis, given in values.items() if len(given) > 1]
    given_order = {flag: index for index, flag in enumerate(order)}
    swept.sort(key=lambda axis: given_order.get(AXIS_FLAGS[axis], len(order)))
    return base, [(axis, values[axis]) for axis in swept]


def _check_cells(model, cells: list[list[GenerationRequest]]) -> None:
    """Refuse a cell the model cannot run (too few steps for PLMS, an eta with a sampler that
    has none) before the first picture is written, rather than after the cells before it."""
    from sdgen.pipelines.stages import new_scheduler, resolve_request

    for row in cells:
        for request in row:
            new_scheduler(model, resolve_request(model, request))


def _generate_cell(model, request: GenerationRequest, out: Path):
    """One cell's picture, saved with its metadata; (picture, path)."""
    from sdgen.api import save_result
    from sdgen.pipelines.generate import generate

    with ProgressBar() as progress:
        result = generate(model, request, callback=progress)
    (path,) = save_result(result, model, out)
    return result.images[0], path


def _save_grid(
    cells: list[list[GenerationRequest]],
    names: list[str],
    pictures: list[list],
    paths: list[list[Path]],
    out: Path,
) -> Path:
    """The labelled grid as ``sweep-{seed}.png``, with the sweep's JSON in its text chunk."""
    from PIL import PngImagePlugin

    from sdgen.api import free_path
    from sdgen.media.grid import labelled_grid
    from sdgen.pipelines.sweep import SWEEP_AXES, SWEEP_KEY, describe_axes, sweep_record

    axes = describe_axes(cells, names)
    columns, rows = axes[0], (axes[1] if len(axes) == 2 else None)
    grid = labelled_grid(
        pictures,
        rows["labels"] if rows else [""],
        columns["labels"],
        row_title=SWEEP_AXES[rows["name"]].title if rows else "",
        col_title=SWEEP_AXES[columns["name"]].title,
    )
    names = [[path.relative_to(out).as_posix() for path in row] for row in paths]
    info = PngImagePlugin.PngInfo()
    info.add_text(SWEEP_KEY, json.dumps(sweep_record(axes, names)))
    path = free_path(out, f"sweep-{cells[0][0].seed:010d}")
    grid.save(path, pnginfo=info)
    return path
