"""One CLI run of a request: the optional parts composed around the one pipeline call.

Step pictures and videos (step callbacks), the safety checker, CLIP ranking with
``--best-of``, the contact sheet, spreading the pictures over devices, and reproduce's checks
(the model's hash, the step a stopped picture was taken at). Used by generate, img2img,
inpaint and reproduce (``sdgen.cli.generate``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from sdgen.cli.common import ProgressBar, quiet_libraries
from sdgen.errors import InvalidRequest
from sdgen.params import GenerationRequest


@dataclass(frozen=True)
class RunOptions:
    """The CLI's options that are not part of the request."""

    out: Path
    token: str | None = None
    allow_pickle: bool = False
    best_of: int | None = None
    clip_model: str | None = None
    grid: bool = False
    save_steps: Path | None = None
    every: int | None = None  # None: not given (1)
    preview: str | None = None  # None: not given (x0)
    save_intermediates: Path | None = None
    devices: str | None = None
    safety_checker: str | None = None
    fast_path: str = "auto"
    model_hash: str | None = None  # reproduce: the loaded model must have this ``Model hash``
    embeddings: Path | None = None  # a folder of textual inversions (load_model's embeddings)
    ti_hashes: str | None = None  # reproduce: the embeddings the picture named (TI hashes)
    lora_dir: Path | None = None  # a folder of LoRAs (load_model's loras)
    lora_hashes: str | None = None  # reproduce: the LoRAs the picture named (Lora hashes)
    stop_at: int | None = None  # reproduce: end after this step, with its predicted pictures

    @classmethod
    def from_kwargs(cls, kwargs: dict) -> RunOptions:
        """From click's keyword arguments (``--hf-token`` arrives as ``hf_token``)."""
        kwargs = {**kwargs, "token": kwargs.get("hf_token")}
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in kwargs.items() if k in names})


def run(request: GenerationRequest, options: RunOptions) -> None:
    """Load, generate (with the step outputs as callbacks), check, rank, save, print paths."""
    from sdgen.api import save_result

    _check_options(request, options)
    quiet_libraries()
    # The checker and the ranker are loaded first, so a wrong name fails before generating.
    checker = _load_checker(options, request.device) if options.safety_checker else None
    ranker = _load_ranker(options, request.device) if options.best_of else None
    # Then the output folders: one that cannot be made fails before any picture is made.
    for folder in (options.out, options.save_intermediates):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
    recorders = _step_recorders(options)
    callbacks = [*recorders.values()]
    if options.stop_at is not None:
        callbacks.append(_stop_after(options.stop_at))
    with ProgressBar() as progress:
        result, model = _generate(request, options, callbacks=[progress, *callbacks])
    extras: dict[int, dict] = {i: {} for i in range(len(result.images))}
    if checker is not None:
        result = _check_safety(checker, result, extras)
    indices = None
    if ranker is not None:
        indices = _keep_best(ranker, result, options.best_of, extras)
    for path in save_result(result, model, options.out, indices=indices, extras=extras):
        click.echo(path)
    for path in _write_extras(result, model, options, recorders, indices):
        click.echo(path)


def _check_options(request: GenerationRequest, options: RunOptions) -> None:
    """Refuse option values the request's own validation does not cover, by flag name."""
    if options.best_of is not None and not 1 <= options.best_of <= request.total_images:
        raise InvalidRequest(
            "best_of", options.best_of, f"from 1 to the number of pictures ({request.total_images})"
        )
    for flag, given, needs, wanted in (  # an option for an output not asked for does nothing
        ("every", options.every, options.save_steps, "--save-steps"),
        (
            "preview",
            options.preview,
            options.save_steps or options.save_intermediates,
            "--save-steps or --save-intermediates",
        ),
        ("clip_model", options.clip_model, options.best_of, "--best-of"),
    ):
        if given is not None and needs is None:
            raise InvalidRequest(flag, given, f"given only with {wanted}, which it applies to")
    if options.every is not None and options.every < 1:
        raise InvalidRequest("every", options.every, "a whole number of steps, 1 or more")
    if options.save_steps is not None:
        from sdgen.media.video import check_video_path

        check_video_path(options.save_steps)
        if options.save_steps.exists():  # a video of an earlier run would be replaced
            raise InvalidRequest(
                "save_steps", str(options.save_steps), "a path where no file is yet"
            )
    if options.devices is not None and request.device != "auto":
        raise InvalidRequest(  # --devices says where every picture goes: one or the other
            "device", request.device, "auto (the default) when --devices is given"
        )
    folder = options.save_intermediates
    if folder is not None and folder.is_dir() and any(folder.glob("step-*.png")):
        raise InvalidRequest(  # its frames would be replaced, or mixed with this run's
            "save_intermediates", str(folder), "a new or empty folder (it holds a run's frames)"
        )


def _generate(request: GenerationRequest, options: RunOptions, callbacks: list):
    """Run the request on one model, or spread over ``--devices``; (result, a model)."""
    from sdgen.models.fast_path import for_one_off_command
    from sdgen.models.loader import load_model
    from sdgen.pipelines.generate import generate

    def load(device: str):
        return load_model(
            request.model,
            device=device,
            precision=request.precision,
            token=options.token,
            allow_pickle=options.allow_pickle,
            fast_path=for_one_off_command(options.fast_path),
            embeddings=options.embeddings,
            loras=options.lora_dir,
        )

    def callback(step) -> None:
        for one in callbacks:
            one(step)

    if options.devices:
        from sdgen.engine.devices import generate_on_devices, load_on_devices, parse_devices

        devices = parse_devices(options.devices)[: request.total_images]  # none left idle
        models = load_on_devices(devices, load)
        _check_recorded_weights(models[0], request, options)
        return generate_on_devices(request, models, callback), models[0]
    model = load(request.device)
    _check_recorded_weights(model, request, options)
    return generate(model, request, callback=callback), model


def _stop_after(steps: int):
    """A step callback that ends the run after ``steps`` steps, with their predicted pictures."""
    from sdgen.errors import GenerationStopped

    def stop(step) -> None:
        if step.index + 1 == steps:
            raise GenerationStopped(steps, step.total, step.denoised)

    return stop


def _check_recorded_weights(model, request: GenerationRequest, options: RunOptions) -> None:
    """Refuse to reproduce a picture with other weights than those it was made with: the
    model's, and the textual inversions and LoRAs its prompts named."""
    from sdgen.pipelines.stages import lora_hashes, ti_hashes

    expected = options.model_hash
    if expected is not None and model.short_hash != expected:
        raise InvalidRequest(
            "model",
            model.name,
            f"the weights recorded in the picture (Model hash {expected}; these are "
            f"{model.short_hash}), or --model to use another model on purpose",
        )
    folders = (  # (field, folder given, what, A1111's record, recorded, hashes now)
        ("embeddings", options.embeddings, "embeddings", "TI hashes", options.ti_hashes, ti_hashes),
        ("lora_dir", options.lora_dir, "LoRAs", "Lora hashes", options.lora_hashes, lora_hashes),
    )
    for field, folder, what, record, recorded, hashes in folders:
        if recorded is None:
            continue
        try:
            found = hashes(model, request)
        except InvalidRequest:  # a LoRA the folder (or no folder) does not have
            found = ""
        if found != recorded:
            raise InvalidRequest(
                field,
                str(folder) if folder else "none",
                f"the {what} the picture's prompts named ({record} {recorded}; these give "
                f"{found or 'none'}): --{field.replace('_', '-')} with them",
            )


def _step_recorders(options: RunOptions) -> dict:
    """Step callbacks that keep the first picture's frames for a video or numbered PNGs."""
    recorders = {}
    if options.save_steps is None and options.save_intermediates is None:
        return recorders
    from sdgen.media.video import StepFrames

    preview = options.preview or "x0"
    if options.save_steps is not None:
        recorders["video"] = StepFrames(every=options.every or 1, preview=preview)
    if options.save_intermediates is not None:
        recorders["intermediates"] = StepFrames(every=1, preview=preview)
    return recorders


def _load_checker(options: RunOptions, device: str):
    from sdgen.models.safety_checker import load_safety_checker

    return load_safety_checker(options.safety_checker, token=options.token, device=device)


def _load_ranker(options: RunOptions, device: str):
    from sdgen.ranking.clip import load_ranker

    return load_ranker(options.clip_model, token=options.token, device=device)


def _check_safety(checker, result, extras: dict[int, dict]):
    """Black out flagged pictures; record the verdict of every picture."""
    result, flagged = checker.apply(result)
    for index, is_flagged in enumerate(flagged):
        extras[index]["NSFW"] = is_flagged
    return result


def _keep_best(ranker, result, count: int, extras: dict[int, dict]) -> list[int]:
    """The ``count`` best pictures' indices, best first; their CLIP score and rank recorded."""
    from sdgen.conditioning.networks import split_loras
    from sdgen.ranking.clip import keep_best

    # scored against what the pictures show: the prompts without their LoRA tags
    prompts = [split_loras("prompt", p)[0] for p, _ in result.request.image_prompts()]
    kept = keep_best(ranker, prompts, result.images, count)
    for rank, (index, score) in enumerate(kept, start=1):
        extras[index].update({"CLIP score": round(score, 4), "CLIP rank": rank})
    return [index for index, _ in kept]


def _write_extras(result, model, options: RunOptions, recorders: dict, indices) -> list[Path]:
    """The contact sheet, the denoising video and the step PNGs; their paths."""
    from sdgen.api import free_path
    from sdgen.pipelines.stages import request_vae

    vae = request_vae(model, result.request)
    paths = []
    if options.grid:
        from sdgen.media.grid import contact_sheet

        images = result.images if indices is None else [result.images[i] for i in indices]
        path = free_path(options.out, f"{result.request.seed:010d}-grid")
        contact_sheet(images).save(path)
        paths.append(path)
    if "video" in recorders:
        from sdgen.media.video import write_video

        paths.append(write_video(recorders["video"].pictures(model, vae), options.save_steps))
    if "intermediates" in recorders:
        from sdgen.media.video import save_frames

        frames = recorders["intermediates"].pictures(model, vae)
        paths.extend(save_frames(frames, options.save_intermediates))
    return paths
