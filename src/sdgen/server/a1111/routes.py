"""AUTOMATIC1111's routes (``/sdapi/v1``): thin, the handler in ``app.state.a1111_handler``."""

from __future__ import annotations

from fastapi import APIRouter, Request

from sdgen.hires import LATENT_UPSCALERS

from ..serving import ApiError
from .hires import HIRES_UPSCALER_NAMES
from .protocol import Img2ImgRequest, PngInfoRequest, Txt2ImgRequest
from .responses import (
    GenerationResponse,
    PngInfoResponse,
    ProgressResponse,
    SamplerItem,
    SchedulerItem,
    SDModelItem,
)
from .serving import A1111Handler

router = APIRouter(prefix="/sdapi/v1", tags=["a1111"])


def handler(request: Request) -> A1111Handler:
    return request.app.state.a1111_handler


@router.post("/txt2img", response_model=GenerationResponse)
async def txt2img(body: Txt2ImgRequest, request: Request) -> GenerationResponse:
    """Queue a txt2img job and answer when it has ended, as A1111 does."""
    return await handler(request).txt2img(body)


@router.post("/img2img", response_model=GenerationResponse)
async def img2img(body: Img2ImgRequest, request: Request) -> GenerationResponse:
    """Queue an img2img (or, with ``mask``, inpainting) job and answer when it has ended."""
    return await handler(request).img2img(body)


@router.get("/progress", response_model=ProgressResponse)
def progress(request: Request, skip_current_image: bool = False) -> ProgressResponse:
    return handler(request).progress(skip_current_image)


@router.post("/interrupt")
def interrupt(request: Request) -> dict:
    return handler(request).interrupt()


@router.post("/skip")
def skip(request: Request) -> None:
    """Stop the A1111 job ``progress`` shows: all its iterations (sdgen runs them as one)."""
    return handler(request).skip()


@router.post("/png-info", response_model=PngInfoResponse)
def png_info(body: PngInfoRequest, request: Request) -> PngInfoResponse:
    return handler(request).png_info(body.image)


@router.get("/samplers", response_model=list[SamplerItem])
def samplers(request: Request) -> list[SamplerItem]:
    return handler(request).samplers()


@router.get("/schedulers", response_model=list[SchedulerItem])
def schedulers(request: Request) -> list[SchedulerItem]:
    return handler(request).schedulers()


@router.get("/sd-models", response_model=list[SDModelItem])
def sd_models(request: Request) -> list[SDModelItem]:
    return handler(request).sd_models()


@router.get("/options")
def options(request: Request) -> dict:
    return handler(request).options()


@router.post("/options")
def set_options(options: dict, request: Request) -> None:
    """Switch the model A1111 calls use (``sd_model_checkpoint``), as A1111 clients do."""
    handler(request).set_options(options)


@router.get("/scripts")
def scripts(request: Request) -> dict:
    """No scripts: A1111 clients look here for extensions (ControlNet, ADetailer)."""
    return {"txt2img": [], "img2img": []}


@router.get("/upscalers")
def upscalers() -> list[dict]:
    """The hires fix's picture upscalers, as A1111 lists its built-in ones (no models)."""
    names = [n for n, upscaler in HIRES_UPSCALER_NAMES.items() if upscaler not in LATENT_UPSCALERS]
    return [
        {"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
        for name in names
    ]


@router.get("/latent-upscale-modes")
def latent_upscale_modes() -> list[dict]:
    """The hires fix's latent upscalers, under A1111's names."""
    names = [n for n, upscaler in HIRES_UPSCALER_NAMES.items() if upscaler in LATENT_UPSCALERS]
    return [{"name": name} for name in names]


# A1111's lists of what sdgen has none of (VAEs, hypernetworks ...). Clients read them when they
# connect (SillyTavern reads upscalers, latent upscale modes and VAEs), so they answer empty, as an
# A1111 without them would, rather than 404; using any of them is refused in the generation
# calls.
NONE_OF = (
    "sd-vae",
    "hypernetworks",
    "face-restorers",
    "realesrgan-models",
)


def _none() -> list:
    return []


for _name in NONE_OF:
    router.add_api_route(f"/{_name}", _none, methods=["GET"], name=_name)


@router.get("/prompt-styles")
def prompt_styles(request: Request) -> list[dict]:
    """A1111's prompt styles: those of ``sdgen serve --styles FILE`` (none without it)."""
    return handler(request).prompt_styles()


@router.get("/embeddings")
def embeddings(request: Request) -> dict:
    """The textual inversions of the current checkpoint (``sdgen serve --embeddings``)."""
    return handler(request).embeddings()


@router.get("/loras")
def loras(request: Request) -> list[dict]:
    """The LoRAs prompts can name with the current checkpoint (``sdgen serve --lora-dir``), as
    A1111's bundled Lora extension lists them."""
    return handler(request).loras()


@router.post("/refresh-loras")
def refresh_loras(request: Request) -> None:
    """Read the LoRA folder's file list again, for every loaded model (A1111's rescan)."""
    handler(request).refresh_loras()


@router.post("/refresh-checkpoints")
def refresh_checkpoints() -> None:
    """Nothing to rescan: sdgen serves the models it was started with (``--model``)."""


@router.post("/refresh-vae")
def refresh_vae() -> None:
    """Nothing to rescan: each model uses its own VAE."""


@router.get("/cmd-flags")
def cmd_flags() -> dict:
    """A1111's command-line flags: sdgen has none of them (``sdgen serve --help`` has its own)."""
    return {}


@router.get("/script-info")
def script_info() -> list:
    return []


@router.get("/extensions")
def extensions() -> list:
    return []


# A1111 features that are whole endpoints, which sdgen does not have: a clear answer naming the
# feature instead of a bare 404.
NOT_SUPPORTED = {
    "/interrogate": "sdgen has no CLIP interrogator (picture -> prompt)",
    "/extra-single-image": "sdgen has no upscalers or face restoration (A1111's extras)",
    "/extra-batch-images": "sdgen has no upscalers or face restoration (A1111's extras)",
    "/unload-checkpoint": "sdgen keeps its models loaded: it does not unload them",
    "/reload-checkpoint": "sdgen keeps its models loaded: there is nothing to reload",
}


def _not_supported(message: str):
    def answer() -> None:
        raise ApiError(501, "not_supported", message)

    return answer


for _path, _message in NOT_SUPPORTED.items():
    router.add_api_route(_path, _not_supported(_message), methods=["POST"], name=_path.strip("/"))
