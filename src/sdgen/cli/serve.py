"""``sdgen serve``: the HTTP server (native ``/v1`` API and A1111's ``/sdapi/v1``) on uvicorn.

FastAPI and uvicorn are imported when the command runs, so ``sdgen --help`` and the other
commands stay fast and work without the ``server`` extra.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sdgen.cli.common import FAST_PATH_HELP, cli, quiet_libraries
from sdgen.errors import SdgenError
from sdgen.models.bundled import MINIATURE_MODEL
from sdgen.params import FAST_PATH_MODES, PRECISIONS

SERVER_MISSING = 'sdgen serve needs the server extra: pip install "sdgen[server]"'


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=click.IntRange(0, 65535), default=7860, show_default=True)
@click.option(
    "--model",
    "models",
    multiple=True,
    help="a model requests may choose (folder, .safetensors or hub id; repeat for more); "
    f"the first is the default [default: {MINIATURE_MODEL}]",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("sdgen-data"),
    show_default=True,
    help="job database, uploaded pictures and outputs",
)
@click.option(
    "--api-key",
    envvar="SDGEN_API_KEY",
    help="require 'Authorization: Bearer KEY'; needed to listen beyond loopback [SDGEN_API_KEY]",
)
@click.option("--max-queue", type=int, default=64, show_default=True, help="queued jobs at most")
@click.option(
    "--max-batch",
    type=int,
    default=8,
    show_default=True,
    help="pictures a worker denoises together from several jobs of one model and size (1: none)",
)
@click.option(
    "--devices", help="one worker per device, e.g. cuda:0,cuda:1 or cpu,cpu (default: auto)"
)
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True)
@click.option(
    "--embeddings",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="a folder of textual inversion embeddings that prompts name by file name, for every "
    "model (A1111's embeddings folder; safetensors only)",
)
@click.option(
    "--lora-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="a folder of LoRA .safetensors files that prompts name as <lora:file name:weight>, "
    "for every model (A1111's Lora folder)",
)
@click.option(
    "--styles",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A1111's styles.csv (name,prompt,negative_prompt): the prompt styles A1111 calls name",
)
@click.option(
    "--fast-path",
    type=click.Choice(FAST_PATH_MODES),
    default="auto",
    show_default=True,
    help=FAST_PATH_HELP,
)
@click.option(
    "--warmup/--no-warmup",
    default=True,
    show_default=True,
    help="where the fast path compiles (CUDA), compile before serving: /health says loading "
    "until then",
)
@click.option("--max-steps", type=int, default=150, show_default=True)
@click.option("--max-images", type=int, default=16, show_default=True, help="per request")
@click.option("--max-pixels", type=int, default=2048 * 2048, show_default=True, help="per picture")
@click.option(
    "--max-body-mb",
    type=click.FloatRange(0, 1024, min_open=True),
    callback=lambda ctx, param, value: _finite(param, value),
    default=32.0,
    show_default=True,
    help="request body size, over 0 and at most 1024",
)
@click.option(
    "--metadata/--no-metadata",
    default=True,
    show_default=True,
    help="write the request into output PNGs (A1111 parameters and sdgen chunks)",
)
@click.option("--step-delay", type=float, default=0.0, hidden=True)  # tests: a slow job
def serve(
    host: str,
    port: int,
    models: tuple[str, ...],
    data_dir: Path,
    api_key: str | None,
    max_queue: int,
    max_batch: int,
    devices: str | None,
    precision: str,
    embeddings: Path | None,
    lora_dir: Path | None,
    styles: Path | None,
    fast_path: str,
    warmup: bool,
    max_steps: int,
    max_images: int,
    max_pixels: int,
    max_body_mb: float,
    metadata: bool,
    step_delay: float,
) -> None:
    """Serve generation over HTTP: jobs are queued, stored in --data-dir and survive restarts."""
    from sdgen.engine.limits import Limits
    from sdgen.server.config import ServerConfig, is_loopback  # light: no torch, no FastAPI

    if not is_loopback(host) and not api_key:
        raise SdgenError(
            f"host: listening on {host} (beyond this machine) needs --api-key (or SDGEN_API_KEY)"
        )
    try:
        import uvicorn

        from sdgen.server.app import create_app
        from sdgen.server.store import JobStore
    except ImportError as err:
        raise SdgenError(f"{SERVER_MISSING} ({err})") from err
    for name, value in (
        ("max-queue", max_queue),
        ("max-batch", max_batch),
        ("max-steps", max_steps),
    ):
        if value < 1:
            raise click.BadParameter(f"{value}: 1 or more", param_hint=f"--{name}")
    for name in models:
        _check_model(name)
    if styles is not None:  # a file that is not a styles CSV exits 2 before listening
        from sdgen.server.a1111.styles import read_styles

        read_styles(styles)
    config = ServerConfig(
        data_dir=data_dir,
        models=models or (MINIATURE_MODEL,),
        devices=tuple(_devices(devices)),
        precision=precision,
        embeddings=embeddings,
        lora_dir=lora_dir,
        styles=styles,
        fast_path=fast_path,
        warmup=warmup,
        host=host,
        port=port,
        api_key=api_key,
        max_queue=max_queue,
        max_batch=max_batch,
        max_body_bytes=int(max_body_mb * (1 << 20)),
        limits=Limits(max_steps=max_steps, max_images=max_images, max_pixels=max_pixels),
        step_delay=step_delay,
        metadata=metadata,
    )
    quiet_libraries()
    store = JobStore(data_dir)  # before listening: a data dir in use or unusable exits 2
    app = create_app(config, store=store)
    click.echo(f"sdgen: serving on http://{host}:{port} (docs at /docs)", err=True)
    sys.stderr.flush()
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30)


def _check_model(name: str) -> None:
    """Refuse at start a --model that cannot load: not bundled, no checkpoint file, not a
    diffusers folder (or one with pickle weights only: the server refuses pickles), nor a hub id
    (offline: one in the Hugging Face cache; online, workers fetch it as they start).
    """
    from huggingface_hub import constants

    from sdgen.errors import PickleRefused
    from sdgen.models.hub import download_model
    from sdgen.models.loader import check_model_source

    try:
        kind, _ = check_model_source(name)
    except PickleRefused as err:  # its message names --allow-pickle, which serve does not have
        raise SdgenError(
            f"model: {name} holds pickle weights, which can run code when loaded; the server "
            "loads safetensors only: convert them to .safetensors"
        ) from err
    if kind == "hub" and constants.HF_HUB_OFFLINE:  # only the cache can have it: look now
        download_model(name, token=None, allow_pickle=False)


def _devices(text: str | None) -> list[str]:
    """The ``--devices`` list; default one worker on the best device here."""
    if not text:
        from sdgen.models.devices import resolve_device

        return [str(resolve_device("auto"))]
    from sdgen.engine.devices import parse_devices

    return parse_devices(text)


def _finite(param: click.Parameter, value: float) -> float:
    """click's FloatRange lets nan through (every comparison with it is false)."""
    if value != value:
        raise click.BadParameter(f"{value} is not a number", param=param)
    return value
