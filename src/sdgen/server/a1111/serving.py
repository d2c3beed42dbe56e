"""AUTOMATIC1111's API on sdgen's job service: the same queue and store as native jobs.

A txt2img or img2img call becomes a job (``api: a1111``) and waits for it, then answers as
A1111 does: base64 PNGs with the ``parameters`` chunk, the request echoed, and ``info`` as a
JSON string. ``interrupt`` ends the running A1111 jobs with the pictures of their last step
(never a native API's job); ``skip`` ends the one ``progress`` shows (A1111's "current job").
"""

from __future__ import annotations

import io
import json
import re
import time
from datetime import datetime
from typing import Any

from PIL import Image
from starlette.concurrency import run_in_threadpool

from sdgen.errors import InvalidRequest
from sdgen.media.metadata import parse_parameters
from sdgen.pipelines.inpaint import INPAINTING_CHANNELS
from sdgen.sampling.samplers import SAMPLERS, resolve_sampler

from ..config import ServerConfig
from ..pictures import decode_base64, encode_base64
from ..service import JobService
from ..serving import ApiError
from ..store import JobRecord
from .protocol import Img2ImgRequest, Txt2ImgRequest, a1111_error
from .responses import (
    GenerationResponse,
    PngInfoResponse,
    ProgressResponse,
    ProgressState,
    SamplerItem,
    SchedulerItem,
    SDModelItem,
)
from .schedule_types import offered_schedule_types
from .settings import (
    CHANGEABLE,
    EMPHASIS_LABELS,
    FIXED_SETTINGS,
    check_fixed_setting,
    clip_skip_setting,
    emphasis_mode,
)
from .styles import read_styles

ORIGIN = "a1111"


class A1111Handler:
    def __init__(self, service: JobService, config: ServerConfig):
        self.service, self.config = service, config
        # A1111's state.interrupted / state.skipped: set when interrupt / skip stopped a job,
        # cleared when the next A1111 job is accepted (A1111 clears them as a job begins).
        self.stopped = {"interrupted": False, "skipped": False}
        # A1111's current checkpoint, set by POST /sdapi/v1/options (kept in memory: a restart
        # goes back to the server's first model); None: the server's first model.
        self.checkpoint: str | None = None
        self.emphasis = "original"  # A1111's default emphasis mode, until POST /options
        self.clip_skip = 1  # A1111's CLIP_stop_at_last_layers, until POST /options
        # A1111's prompt styles (sdgen serve --styles), read once
        self.styles = read_styles(config.styles) if config.styles is not None else {}

    async def txt2img(self, body: Txt2ImgRequest) -> GenerationResponse:
        return await self._generate(body)

    async def img2img(self, body: Img2ImgRequest) -> GenerationResponse:
        return await self._generate(body)

    async def _generate(self, body: Txt2ImgRequest) -> GenerationResponse:
        override = (body.override_settings or {}).get("sd_model_checkpoint")
        model = self._model_name(override, "override_settings.sd_model_checkpoint")
        model = model or self.checkpoint
        if body.batch_size >= 1 and body.n_iter >= 1:  # below 1: to_request names the field
            # pictures = batch_size x n_iter: named after the one that was raised
            field = "n_iter" if body.batch_size == 1 and body.n_iter > 1 else "batch_size"
            self.config.limits.check_counts(body.steps, body.batch_size * body.n_iter, field)
        # Off the event loop: decoding the pictures, the mask processing's checks and a first
        # model load take from milliseconds to seconds, while progress calls must be answered.
        record = await run_in_threadpool(self._submit, body, model)
        self.stopped = {"interrupted": False, "skipped": False}
        record = await self.service.wait(record.id)
        return await run_in_threadpool(self._response, body, record)  # reads and encodes PNGs

    def _submit(self, body: Txt2ImgRequest, model: str | None) -> JobRecord:
        limit = self.config.max_input_pixels
        request = body.to_request(model, limit, self.emphasis, self.clip_skip, self.styles)
        try:
            return self.service.submit(request, origin=ORIGIN)
        except InvalidRequest as err:
            overridden = "CLIP_stop_at_last_layers" in (body.override_settings or {})
            if err.field == "clip_skip" and not overridden:  # the POST /options setting's
                allowed = f"{err.allowed} (set by POST /sdapi/v1/options)"
                raise InvalidRequest("CLIP_stop_at_last_layers", err.value, allowed) from err
            raise a1111_error(err) from err

    def _response(self, body: Txt2ImgRequest, record: JobRecord) -> GenerationResponse:
        if record.status == "failed":
            error = record.error or {}
            # the request's fault 422, a model that cannot load 503 (as before accepting), else 500
            status = {"invalid_request": 422, "model_load": 503}.get(error.get("kind"), 500)
            raise ApiError(
                status, error.get("kind", "internal"), error.get("message", ""), error.get("field")
            )
        images = [self.service.store.image_bytes(image.id) for image in record.images]
        encoded = [encode_base64(png) for png in images if png is not None]
        return GenerationResponse(
            images=encoded if body.send_images else [],
            parameters=_echoed(body),
            info=json.dumps({**self._info(record), "styles": body.styles or []}),
        )

    def _info(self, record: JobRecord) -> dict[str, Any]:
        """A1111's ``info`` (modules/processing.py ``Processed.js``) for a finished job."""
        request = record.request
        sampler = resolve_sampler(request["sampler"]) if request.get("sampler") else None
        seeds = [image.seed for image in record.images] or [request["seed"]]
        prompts = request["prompt"] if isinstance(request["prompt"], list) else [request["prompt"]]
        negatives = request["negative_prompt"]
        negatives = negatives if isinstance(negatives, list) else [negatives] * len(prompts)
        per_image = request["num_images"]
        all_prompts = [p for p in prompts for _ in range(per_image)]
        all_negatives = [n for n in negatives for _ in range(per_image)]
        model = self.service.engine.models.any(request["model"], self.service.engine.devices[0])
        return {
            "prompt": all_prompts[0],
            "all_prompts": all_prompts,
            "negative_prompt": all_negatives[0],
            "all_negative_prompts": all_negatives,
            "seed": seeds[0],
            "all_seeds": seeds,
            **_subseeds(request, seeds),
            "width": request["width"],
            "height": request["height"],
            "sampler_name": sampler.a1111_name if sampler else None,
            "cfg_scale": request["guidance_scale"],
            "steps": request["steps"],
            "batch_size": per_image,
            "restore_faces": False,
            "face_restoration_model": None,
            "sd_model_name": model.display_name,
            "sd_model_hash": model.short_hash,
            "sd_vae_name": None,
            "sd_vae_hash": None,
            **_seed_resize_from(request),
            "denoising_strength": _denoising_strength(request),
            "extra_generation_params": {"Schedule type": sampler.schedule_type}
            if sampler and sampler.schedule_type
            else {},
            "index_of_first_image": 0,
            "infotexts": [image.parameters for image in record.images],
            "styles": [],  # the call's: set by _response
            "job_timestamp": _job_timestamp(record),
            "clip_skip": request.get("clip_skip", 1),
            # A1111's: the model is an inpainting one (its UNet sees the mask), not "a mask given"
            "is_using_inpainting_conditioning": model.unet.config.in_channels
            == INPAINTING_CHANNELS,
            "version": "sdgen",
            "warnings": record.warnings,  # sdgen's: e.g. a prompt truncated to 77 tokens
            "job_id": record.id,
            "status": record.status,
        }

    def progress(self, skip_current_image: bool) -> ProgressResponse:
        """The running job made through this API that started first, as A1111's single current
        job: the one ``interrupt`` and ``skip`` stop (native jobs are not A1111's to stop)."""
        queued = self.service.engine.queue_depth
        current = self.service.current(origin=ORIGIN)
        if current is None:
            state = ProgressState(job_count=queued, **self.stopped)
            return ProgressResponse(progress=0.0, eta_relative=0.0, state=state)
        job_id, live = current
        fraction = live.step / live.total if live.total else 0.0
        elapsed = time.monotonic() - live.started
        eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
        record = self.service.store.get(job_id)
        state = ProgressState(
            job=f"task({job_id})",
            job_timestamp=_job_timestamp(record) if record is not None else "0",
            job_count=queued + len(self.service.engine.running()),
            sampling_step=live.step,
            sampling_steps=live.total,
            **self.stopped,
        )
        return ProgressResponse(
            progress=fraction,
            eta_relative=eta,
            state=state,
            current_image=None if skip_current_image else live.preview,
            current_task=job_id,
        )

    def interrupt(self) -> dict:
        """End the job ``progress`` shows (A1111's current job) at its next step, with the
        pictures predicted there: its txt2img/img2img call answers with those pictures, as
        A1111's does (it decodes the last step's predicted clean latents), and the metadata says
        ``Stopped at step: k/n``. Other A1111 jobs running beside it (those A1111 would have
        queued behind it: other clients' calls), queued and native jobs are left alone."""
        self._end_current("interrupted")
        return {}

    def skip(self) -> None:
        """End the job ``progress`` shows, as ``interrupt`` would; other A1111 jobs go on.

        A1111's skip ends the picture being made and goes on with the next iteration
        (``n_iter``). sdgen has no next iteration: it runs all of an A1111 request's pictures,
        ``batch_size`` x ``n_iter``, as one job denoised in one batch. So every skip here is
        A1111's skip of the last iteration, which ends the job with the pictures of its last
        step, the same as interrupt for it. Running A1111 jobs batched beside it, and queued
        ones, are left alone. Returns None: A1111 answers ``null``.
        """
        self._end_current("skipped")

    def _end_current(self, how: str) -> None:
        """End A1111's current job with its pictures; ``progress`` then says ``how``."""
        current = self.service.current(origin=ORIGIN)
        if current is not None and self.service.finish(current[0]):
            self.stopped[how] = True

    def png_info(self, image: str) -> PngInfoResponse:
        """A picture's text chunks and its parsed ``parameters``; the picture is only read."""
        if not image:
            raise InvalidRequest("image", "", "a base64 picture")
        data = decode_base64(image, "image")
        try:
            with Image.open(io.BytesIO(data)) as picture:
                width, height = picture.size
                if width * height > self.config.max_input_pixels:
                    raise InvalidRequest("image", f"{width}x{height}", "a smaller picture")
                picture.load()
                items = {k: v for k, v in picture.info.items() if isinstance(v, str)}
                comment = _exif_user_comment(picture)
                if comment and "parameters" not in items:  # A1111's JPEG and WebP pictures
                    items["parameters"] = comment
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            if isinstance(err, InvalidRequest):
                raise
            raise InvalidRequest("image", "bytes", f"a PNG, JPEG or WebP picture ({err})") from err
        text = items.pop("parameters", "")
        try:
            parameters = _as_a1111_parses(parse_parameters(text)) if text else {}
        except (ValueError, IndexError):  # uploaded metadata is never trusted to be well-formed
            parameters = {}
        return PngInfoResponse(info=text, items=items, parameters=parameters)

    def samplers(self) -> list[SamplerItem]:
        return [
            SamplerItem(
                name=s.display_name, aliases=[*s.a1111_aliases, s.name], options=dict(s.options)
            )
            for s in SAMPLERS.values()
        ]

    def schedulers(self) -> list[SchedulerItem]:
        """The schedule types a txt2img/img2img ``scheduler`` field may name: Automatic and
        those sdgen's sampler registry has (each only with its samplers)."""
        return [
            SchedulerItem(
                name=t.name,
                label=t.label,
                aliases=list(t.aliases) or None,
                default_rho=t.default_rho,
                need_inner_model=t.need_inner_model,
            )
            for t in offered_schedule_types()
        ]

    def sd_models(self) -> list[SDModelItem]:
        models = self.service.engine.models
        loaded = {name: device for name, device in models.loaded()}
        items = []
        for name in models.names:
            short_hash = None
            if name in loaded:
                short_hash = models.get(name, loaded[name]).short_hash
            title = f"{name} [{short_hash}]" if short_hash else name
            items.append(
                SDModelItem(
                    title=title, model_name=name, hash=short_hash, sha256=None, filename=name
                )
            )
        return items

    def prompt_styles(self) -> list[dict]:
        """``GET /sdapi/v1/prompt-styles``: the server's styles (``sdgen serve --styles``)."""
        return [
            {"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt}
            for s in self.styles.values()
        ]

    def embeddings(self) -> dict:
        """``GET /sdapi/v1/embeddings``: the textual inversions prompts can name with the
        current checkpoint (``sdgen serve --embeddings``), and as A1111's "skipped" those made
        for a text encoder of another width. Files that could not be read are not listed, as
        in A1111: the server's log names them with the reason."""
        inversions = self.service.engine.model(self.checkpoint).textual_inversions
        loaded = {
            name: _embedding_item(*inversion.vectors.shape[::-1])
            for name, inversion in inversions.by_name.items()
        }
        skipped = {
            name: _embedding_item(width, count)
            for name, (width, count) in inversions.other_width.items()
        }
        return {"loaded": loaded, "skipped": skipped}

    def loras(self) -> list[dict]:
        """``GET /sdapi/v1/loras``: the LoRAs of the current checkpoint's folder, each with its
        file's training metadata. The path is the file's within the folder: the server does
        not show its file system. The alias is the name: prompts name LoRAs by file name."""
        library = self.service.engine.model(self.checkpoint).loras
        files = library.files  # one listing, also while a refresh replaces it
        return [
            {
                "name": name,
                "alias": name,
                "path": str(files[name].relative_to(library.folder)),
                "metadata": library.metadata(files[name]),
            }
            for name in sorted(files, key=str.lower)
        ]

    def refresh_loras(self) -> None:
        """``POST /sdapi/v1/refresh-loras``: each loaded model reads its LoRA folder again."""
        models = self.service.engine.models
        for name, device in models.loaded():
            models.get(name, device).loras.refresh()

    def options(self) -> dict:
        models = self.sd_models()
        current = next((m for m in models if m.model_name == self.checkpoint), models[0])
        fixed = {key: values[0] for key, values in FIXED_SETTINGS.items()}
        emphasis = next(k for k, v in EMPHASIS_LABELS.items() if v == self.emphasis)
        return {
            "sd_model_checkpoint": current.title,
            "emphasis": emphasis,
            "CLIP_stop_at_last_layers": self.clip_skip,
            **fixed,
        }

    def set_options(self, options: dict[str, Any]) -> None:
        """``POST /sdapi/v1/options``: the checkpoint, emphasis mode and clip skip A1111 calls
        use from now on; any other setting only at the value sdgen runs with
        (``FIXED_SETTINGS``). All are checked before any is set."""
        for key, value in options.items():
            if key not in CHANGEABLE:
                check_fixed_setting(key, key, value)
        emphasis, checkpoint, clip_skip = self.emphasis, self.checkpoint, self.clip_skip
        if "emphasis" in options:
            emphasis = emphasis_mode("emphasis", options["emphasis"])
        if "CLIP_stop_at_last_layers" in options:
            key = "CLIP_stop_at_last_layers"
            clip_skip = clip_skip_setting(key, options[key])
        if "sd_model_checkpoint" in options:
            checkpoint = self._model_name(options["sd_model_checkpoint"], "sd_model_checkpoint")
        self.emphasis, self.checkpoint, self.clip_skip = emphasis, checkpoint, clip_skip

    def _model_name(self, checkpoint: Any, field: str) -> str | None:
        """A1111 names checkpoints by title, "name [hash]"; a served model's name is its own."""
        if checkpoint is None:
            return None
        if not isinstance(checkpoint, str):
            raise InvalidRequest(field, checkpoint, "a model's name")
        names = self.service.engine.models.names
        bare = checkpoint.rsplit(" [", 1)[0] if checkpoint.endswith("]") else checkpoint
        if bare in names:
            return bare
        raise InvalidRequest(field, checkpoint, f"one of the served models: {', '.join(names)}")


def _seed_resize_from(request: dict) -> dict:
    """A1111's seed resize fields: the size the seeds' noise was kept from, else -1."""
    width, height = request.get("seed_resize_from") or (-1, -1)
    return {"seed_resize_from_w": width, "seed_resize_from_h": height}


def _subseeds(request: dict, seeds: list[int]) -> dict[str, Any]:
    """A1111's subseed fields: the variation seeds of the pictures, where they were varied (else
    the seeds, as an A1111 call without variation reports some)."""
    first = request.get("variation_seed")
    subseeds = seeds if first is None else [first + i for i in range(len(seeds))]
    strength = request.get("variation_strength", 0)
    return {"subseed": subseeds[0], "all_subseeds": subseeds, "subseed_strength": strength}


def _denoising_strength(request: dict) -> float | None:
    """img2img's strength or the hires fix's, A1111's one ``denoising_strength``."""
    if request.get("init_image"):
        return request["strength"]
    return request["hires"]["strength"] if request.get("hires") else None


def _job_timestamp(record: JobRecord) -> str:
    """A1111's ``job_timestamp``: when the job began, as YYYYmmddHHMMSS in local time."""
    began = record.started_at if record.started_at is not None else record.created_at
    return datetime.fromtimestamp(began).strftime("%Y%m%d%H%M%S")


def _embedding_item(width: int, vectors: int) -> dict:
    """One embedding as A1111's /embeddings lists it (sdgen records no training step)."""
    return {
        "step": None,
        "sd_checkpoint": None,
        "sd_checkpoint_name": None,
        "shape": int(width),
        "vectors": int(vectors),
    }


def _echoed(body: Txt2ImgRequest) -> dict[str, Any]:
    """The request as A1111 echoes it: an img2img call's pictures left out (null) unless
    ``include_init_images`` asks for them."""
    echoed = body.model_dump()
    if isinstance(body, Img2ImgRequest) and not body.include_init_images:
        echoed.update(init_images=None, mask=None)
    return echoed


# What A1111's parse_generation_parameters fills in when an infotext lacks it (the ones that
# describe sdgen's pictures too).
_PARSED_DEFAULTS = {"Clip skip": "1", "Schedule type": "Automatic", "RNG": "GPU"}
_SIZE = re.compile(r"^(\d+)x(\d+)$")


def _as_a1111_parses(fields: dict[str, Any]) -> dict[str, Any]:
    """Parsed infotext fields as A1111's png-info gives them: a "WxH" value split into
    ``Key-1`` and ``Key-2`` (clients read the size from ``Size-1``/``Size-2``), and A1111's
    defaults for keys it lacks."""
    parsed = {}
    for key, value in fields.items():
        size = _SIZE.match(value) if isinstance(value, str) else None
        if size:
            parsed[f"{key}-1"], parsed[f"{key}-2"] = size.groups()
        else:
            parsed[key] = value
    return {**parsed, **{k: v for k, v in _PARSED_DEFAULTS.items() if k not in parsed}}


def _exif_user_comment(picture: Image.Image) -> str:
    """The EXIF UserComment where A1111 writes a JPEG's or WebP's parameters: 8 bytes naming
    the encoding ("UNICODE" is UTF-16, big-endian as piexif writes it), then the text."""
    try:
        raw = picture.getexif().get_ifd(0x8769).get(0x9286)  # Exif IFD, UserComment
    except Exception:  # noqa: BLE001 - uploaded metadata is never trusted to be well-formed
        return ""
    if not isinstance(raw, bytes) or len(raw) < 8:
        return raw if isinstance(raw, str) else ""
    prefix, body = raw[:8], raw[8:]
    codec = "utf_16_be" if prefix.startswith(b"UNICODE") else "utf-8"
    return body.decode(codec, errors="replace").rstrip("\x00")
