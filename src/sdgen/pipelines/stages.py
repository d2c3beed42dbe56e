"""The stages every pipeline shares: the request resolved against the model, a fresh scheduler,
text conditioning, and the result type.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image

from sdgen.conditioning.chunks import InversionLookup, inversion_lookup, named_inversions
from sdgen.conditioning.composition import composes
from sdgen.conditioning.networks import request_loras, split_loras, without_loras
from sdgen.conditioning.prompts import encode_prompts
from sdgen.conditioning.request_texts import check_prompt_lengths, read_texts
from sdgen.errors import GenerationStopped, InvalidRequest, SdgenError
from sdgen.media.images import decode_latents
from sdgen.models.devices import precision_name
from sdgen.models.fast_path import GraphedUNet
from sdgen.models.loaded import LoadedModel
from sdgen.models.lora_weights import AppliedLora, LoraSet
from sdgen.models.tiling import tiled_networks
from sdgen.params import GenerationRequest, check_size
from sdgen.sampling.embeddings import EmbeddingSchedule, TextEmbeddings
from sdgen.sampling.guidance import uses_guidance
from sdgen.sampling.loop import DenoisingState, TracedUNet, denoise_state
from sdgen.sampling.samplers import make_scheduler, resolve_sampler, sampler_for_config


@dataclass(frozen=True)
class GenerationResult:
    """The pictures of one request, in image order, and the request as it was run."""

    request: GenerationRequest  # every default filled in: seed, size, sampler where known
    images: list[Image.Image]
    # Stopped early (GenerationStopped): (steps done, of steps); the pictures are the clean
    # ones predicted at that step, not the request's finished pictures.
    stopped_at: tuple[int, int] | None = None
    # A1111's "Lora hashes" of the LoRAs the pictures were made with, "" for none: taken when
    # they ran (a file changed or removed since does not change what is recorded)
    lora_hashes: str = ""

    @property
    def seeds(self) -> list[int]:
        return [self.request.seed + i for i in range(len(self.images))]

    def image_request(self, index: int) -> GenerationRequest:
        """The single-picture request that gives image ``index`` alone."""
        prompt, negative = self.request.image_prompts()[index]
        return self.request.from_image(index, prompt=prompt, negative_prompt=negative, num_images=1)


OVERFLOW_GUIDANCE = 30  # above it, an overflow is put down to guidance (A1111's UI allows 30)


@dataclass(eq=False)  # compared by identity: the ticket a batch of requests hands out
class PreparedRequest:
    """A request ready to denoise: resolved, with its scheduler, noise and conditioning set up in
    a ``DenoisingState``. ``run_alone`` finishes it; the engine's batching shares its steps."""

    request: GenerationRequest  # every default filled in
    state: DenoisingState
    # The decoded pictures -> the request's output (inpainting pastes them back into the init
    # picture where its mask options ask).
    finish: Callable[[list[Image.Image]], list[Image.Image]] | None = None
    # The final latents of ``state`` -> the state of the request's next pass (the hires fix's
    # second pass), run before the pictures are decoded.
    next_pass: Callable[[torch.Tensor], DenoisingState] | None = None

    def __post_init__(self) -> None:
        self._loras_used = list(self.state.loras)  # every pass's, for the metadata

    def start_next_pass(self) -> bool:
        """Replace the finished ``state`` by the next pass's; False when there is none."""
        if self.next_pass is None:
            return False
        next_pass, self.next_pass = self.next_pass, None
        self.state = next_pass(self.state.latents)
        self._loras_used += self.state.loras
        return True

    def result(
        self, model: LoadedModel, stopped: GenerationStopped | None = None
    ) -> GenerationResult:
        """The pictures of the denoised state (of the clean latents predicted where it was
        ``stopped``); an error instead of black pictures when the denoising overflowed (NaN or
        infinity: one check, one read from the device)."""
        latents = self.state.latents
        if stopped is not None:
            latents = stopped.denoised
            if self.state.after_step is not None:  # e.g. inpainting's blending: as after the
                # last step, the kept part is the init picture's clean latents
                latents = self.state.after_step(len(self.state.run.timesteps) - 1, latents)
        if not bool(torch.isfinite(latents).all()):
            guidance = self.request.guidance_scale
            if abs(guidance) > OVERFLOW_GUIDANCE:
                raise InvalidRequest(
                    "guidance_scale",
                    guidance,
                    "a smaller value: at this guidance the denoising overflowed (NaN or infinity)",
                )
            raise SdgenError(
                f"the denoising overflowed (NaN or infinity) at precision "
                f"{self.request.precision}; fp32 may not"
            )
        stopped_at = None if stopped is None else (stopped.steps, stopped.total)
        pictures = decode_latents(request_vae(model, self.request), latents)
        if self.finish is not None:
            pictures = self.finish(pictures)
        hashes = format_lora_hashes(self._loras_used)
        return GenerationResult(self.request, pictures, stopped_at, lora_hashes=hashes)


def run_alone(model: LoadedModel, prepared: PreparedRequest) -> GenerationResult:
    """Denoise ``prepared`` on its own (one UNet call per iteration) and decode it; a callback
    that raises GenerationStopped ends it with the pictures predicted at that step."""
    unet = denoising_unet(model, prepared.request.tiling)
    try:
        denoise_state(holding_loras(model, unet, prepared.state.loras), prepared.state)
        while prepared.start_next_pass():
            denoise_state(holding_loras(model, unet, prepared.state.loras), prepared.state)
    except GenerationStopped as stopped:
        return prepared.result(model, stopped)
    return prepared.result(model)


def resolve_request(model: LoadedModel, request: GenerationRequest) -> GenerationRequest:
    """Fill in the model's defaults (size, own sampler), the mode's strength and a seed; check
    the size."""
    own_sampler = sampler_for_config(model.scheduler_config)
    width, height = _output_size(model, request)
    request = request.with_seed().replace(
        width=width,
        height=height,
        sampler=request.sampler or (own_sampler.name if own_sampler else None),
        model=request.model or model.name,
        strength=request.default_strength if request.strength is None else request.strength,
        precision=precision_name(model.dtype),  # "auto" resolved: the picture depends on it
    )
    check_size(request.width, request.height, model.vae_scale_factor)
    request.seed_noise_size(model.vae_scale_factor)  # its sides checked too
    layers = model.text_encoder.config.num_hidden_layers
    if request.clip_skip > layers:
        raise InvalidRequest(
            "clip_skip", request.clip_skip, f"1 to {layers}: this model's text encoder's layers"
        )
    if request.hires is not None:  # the second pass's size, too
        request.hires.sizes(request.width, request.height, model.vae_scale_factor)
    return request


def named_loras(model: LoadedModel, request: GenerationRequest) -> LoraSet:
    """Every LoRA ``request``'s prompts name (the hires fix's prompt's too), each read, or
    refused naming its field: what a server's preflight checks and the pictures record."""
    loras = lora_set(model, request)
    if request.hires is not None and request.hires.prompt is not None:
        loras += _applied(
            model, "hires.prompt", split_loras("hires.prompt", request.hires.prompt)[1]
        )
    return loras


def lora_set(model: LoadedModel, request: GenerationRequest, field: str = "prompt") -> LoraSet:
    """The LoRAs ``request``'s prompts name, read from ``model``'s LoRA folder, with their
    multipliers: what the model's weights hold while the request's text is encoded and its
    UNet calls run (``sdgen.models.lora_weights``).

    Raises:
        InvalidRequest: a LoRA the folder does not have or that cannot serve the model.
    """
    return _applied(model, field, request_loras(request))


def _applied(model: LoadedModel, field: str, tags) -> LoraSet:
    """``tags`` (``LoraTag``s) as ``model``'s LoRAs with their multipliers."""
    return tuple(AppliedLora(model.loras.get(field, t.name), t.te, t.unet) for t in tags)


def _output_size(model: LoadedModel, request: GenerationRequest) -> tuple[int, int]:
    """The requested size; else the init picture's (img2img) or the model's native size (also
    where only the masked area is repainted: ``padding_mask_crop``, as diffusers).

    An init picture whose sides are not multiples of the latent factor is refused unless
    ``resize`` asks for the nearest valid size: nothing is rounded silently.
    """
    if request.init_image is None or request.padding_mask_crop is not None:
        return request.width or model.native_size, request.height or model.native_size
    factor = model.vae_scale_factor
    picture_width, picture_height = request.init_image.size
    if request.width is not None or request.height is not None:
        return request.width or picture_width, request.height or picture_height
    if request.resize:
        return _nearest(picture_width, factor), _nearest(picture_height, factor)
    if picture_width % factor or picture_height % factor:
        raise InvalidRequest(
            "init_image",
            f"{picture_width}x{picture_height}",
            f"a picture whose sides are multiples of {factor} (this model's latent factor); "
            f"resize=True (--resize) resizes it to "
            f"{_nearest(picture_width, factor)}x{_nearest(picture_height, factor)}",
        )
    return picture_width, picture_height


def _nearest(value: int, factor: int) -> int:
    return max(factor, round(value / factor) * factor)


def new_scheduler(model: LoadedModel, request: GenerationRequest):
    """A fresh scheduler for this request, from the model's own config, with its timesteps set."""
    sampler = resolve_sampler(request.sampler) if request.sampler else None
    scheduler = make_scheduler(sampler, model.scheduler_config)
    try:
        scheduler.set_timesteps(request.steps, device=model.device)
    except (ValueError, IndexError):  # e.g. PLMS with its Runge-Kutta warm-up: at least 4
        least = next((n for n in range(request.steps + 1, 101) if _takes(scheduler, n)), None)
        name = f"the {request.sampler} sampler" if request.sampler else "this model's sampler"
        allowed = f"at least {least} for {name}" if least else f"a number {name} can take"
        raise InvalidRequest("steps", request.steps, allowed) from None
    if request.eta and "eta" not in inspect.signature(scheduler.step).parameters:
        name = request.sampler or f"this model's sampler ({type(scheduler).__name__})"
        raise InvalidRequest("eta", request.eta, f"0 with {name}: eta is DDIM's (sampler ddim)")
    return scheduler


def schedule_steps(scheduler, steps: int) -> int:
    """The iterations a prompt's schedule is read over, for ``steps`` steps of ``scheduler``:
    the steps, twice them for second-order samplers (Heun), which call the UNet twice a step;
    A1111 counts its prompt schedules in UNet calls too."""
    return steps * scheduler.order


def _takes(scheduler, steps: int) -> bool:
    try:
        scheduler.set_timesteps(steps)
    except (ValueError, IndexError):
        return False
    return True


def text_conditioning(
    model: LoadedModel,
    request: GenerationRequest,
    steps: int | None = None,
    first_pass_steps: int | None = None,
) -> TextEmbeddings | EmbeddingSchedule:
    """Embeddings of 2B or B rows: [negative; prompt] in image order when guiding, encoded
    with the LoRAs the prompts name merged into the text encoder (their tags cut out); an
    ``EmbeddingSchedule`` over ``steps`` iterations (default: the request's steps) where the
    prompts change between steps (A1111's prompt editing: ``schedule_steps``), over a hires
    pass's after ``first_pass_steps`` (``sdgen.conditioning.schedules``)."""
    loras = lora_set(model, request)
    request = without_loras(request)
    check_prompt_lengths(model.tokenizer, request, inversions_of(model))
    # the negative prompts' cache is keyed by what changed the text encoder's weights
    text_weights = tuple(
        (a.lora.name, a.lora.short_hash, a.te)
        for a in loras
        if a.te and a.lora.touches("text_encoder")
    )
    with model.loras.holding(loras):
        return encode_prompts(
            model.tokenizer,
            model.text_encoder,
            request.image_prompts(),
            steps or request.steps,
            first_pass_steps,
            guided=uses_guidance(request.guidance_scale),
            device=model.device,
            dtype=model.dtype,
            negative_cache=model.caches.setdefault("negative_embeddings", {}),
            emphasis=request.emphasis,
            long_prompt=request.long_prompt,
            inversions=inversions_of(model),
            clip_skip=request.clip_skip,
            text_weights=text_weights,
        )


def ti_hashes(model: LoadedModel, request: GenerationRequest) -> str:
    """A1111's ``TI hashes`` of the textual inversions that ``request``'s prompts (and its
    negative prompts, when it guides) place: "name: hash, ..." in the order they are first
    named, without the ":" and "," A1111 also drops from names; "" for none."""
    lookup = inversions_of(model)
    guided = uses_guidance(request.guidance_scale) or composes(request)
    # the texts read (LoRA tags cut out, each of a schedule), the hires fix's too
    texts = [t for field, t in read_texts(request) if guided or "negative_prompt" not in field]
    named: dict[str, str] = {}
    for text in texts:
        reading = (request.emphasis, request.long_prompt, lookup)
        for inversion in named_inversions(model.tokenizer, text, *reading):
            name = inversion.name.replace(":", "").replace(",", "")
            named.setdefault(name, inversion.short_hash)
    return ", ".join(f"{name}: {short}" for name, short in named.items())


def lora_hashes(model: LoadedModel, request: GenerationRequest) -> str:
    """A1111's ``Lora hashes`` of the LoRAs ``request``'s prompts name in ``model``'s folder
    now (the hires fix's too), as ``format_lora_hashes`` writes them."""
    return format_lora_hashes(named_loras(model, request))


def format_lora_hashes(loras) -> str:
    """A1111's ``Lora hashes`` of ``loras`` (``AppliedLora``s): "name: hash, ..." in the order
    first named, without the ":" and "," A1111 also drops from names; "" for none."""
    named: dict[str, str] = {}
    for applied in loras:
        name = applied.lora.name.replace(":", "").replace(",", "")
        named.setdefault(name, applied.lora.short_hash)
    return ", ".join(f"{name}: {short}" for name, short in named.items())


def inversions_of(model: LoadedModel) -> InversionLookup:
    """Where prompts name ``model``'s textual inversions, worked out once per model."""
    if "inversion_lookup" not in model.caches:
        inversions = model.textual_inversions.by_name
        model.caches["inversion_lookup"] = inversion_lookup(model.tokenizer, inversions)
    return model.caches["inversion_lookup"]


def denoising_unet(model: LoadedModel, tiling: bool = False):
    """The UNet the denoising loop calls: traced on the CPU, where a step is mostly Python.

    Traced and eager UNets give bit-identical predictions; on CUDA, launch overhead wants CUDA
    graphs rather than tracing, so the UNet runs as loaded there (compiled by the fast path),
    and so does a UNet the fast path compiled on the CPU. ``tiling``: the circular copy
    (``sdgen.models.tiling``), traced on the CPU, eager elsewhere.
    """
    if tiling:
        unet = tiled_networks(model)[0]
        if model.device.type != "cpu":
            return unet
        if "traced_tiled_unet" not in model.caches:
            model.caches["traced_tiled_unet"] = TracedUNet(unet)
        return model.caches["traced_tiled_unet"]
    if "cuda_graphs" in model.fast_path:
        if "graphed_unet" not in model.caches:
            model.caches["graphed_unet"] = GraphedUNet(model.unet)
        return model.caches["graphed_unet"]
    if model.device.type != "cpu" or "compile" in model.fast_path:
        return model.unet
    if "traced_unet" not in model.caches:
        model.caches["traced_unet"] = TracedUNet(model.unet)
    return model.caches["traced_unet"]


def request_vae(model: LoadedModel, request: GenerationRequest) -> torch.nn.Module:
    """The VAE that encodes and decodes ``request``'s pictures: the circular copy when it
    tiles (``sdgen.models.tiling``)."""
    return tiled_networks(model)[1] if request.tiling else model.vae


def holding_loras(model: LoadedModel, unet, loras: LoraSet):
    """``unet`` whose every call runs with ``loras`` merged into ``model``'s weights; ``unet``
    itself for a model without a LoRA folder."""
    if model.loras.folder is None:
        return unet

    def call(*args, **kwargs):
        with model.loras.holding(loras):
            return unet(*args, **kwargs)

    return call
