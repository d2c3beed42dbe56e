"""Batching across requests: one shared UNet call per step for every request in flight.

Requests that share a model, a latent shape and a precision are denoised together, step by step.
Each keeps its own scheduler, generators, text embeddings, guidance scale, timesteps and
callback; only the UNet call is shared. A step concatenates every request's input, [uncond;
text] when it guides, else [text], with each row's own timestep as a (N,) tensor, which
diffusers' UNet accepts. Then each request applies its own guidance and scheduler step: the same
pieces of ``sdgen.sampling.loop`` that ``denoise`` runs, so a request's pictures are the ones it
gets alone, up to the CPU kernels' batch-size-dependent rounding (<= 1/255 measured, see
tests/test_batching.py).

A request joins at any step boundary (``Batcher.add``) and leaves when its last step is done,
decoded into a ``GenerationResult``. Only txt2img requests are batched for now: img2img and
inpainting differ only in their start (noised init latents, fewer timesteps, extra channels and
an after-step hook), which ``DenoisingState`` already carries, but their set-up is not shared
with their pipelines yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sdgen.errors import InvalidRequest
from sdgen.media.images import decode_latents
from sdgen.models.loaded import LoadedModel
from sdgen.params import GenerationRequest
from sdgen.pipelines.stages import (
    GenerationResult,
    denoising_unet,
    new_scheduler,
    resolve_request,
    text_conditioning,
)
from sdgen.pipelines.txt2img import noise_latents
from sdgen.sampling.loop import (
    AfterStep,
    DenoisingRun,
    StepCallback,
    finish_step,
    prepare_run,
    scaled_input,
)
from sdgen.sampling.noise import image_generators


@dataclass(eq=False)  # compared by identity: it is the ticket a caller holds for its request
class DenoisingState:
    """One request part-way through its denoising: everything its next step needs."""

    request: GenerationRequest  # resolved: seed, size, sampler filled in
    run: DenoisingRun  # its own scheduler, generators (in step_kwargs), timesteps, reports
    latents: torch.Tensor  # (B, C, h, w) after ``position`` iterations
    embeddings: torch.Tensor  # (2B or B, 77, D): [negative; prompt] when guiding
    callback: StepCallback | None = None
    extra_channels: torch.Tensor | None = None  # inpainting UNets: (2B or B, 5, h, w)
    after_step: AfterStep | None = None
    position: int = 0  # iterations done

    @property
    def done(self) -> bool:
        return self.position >= len(self.run.timesteps)

    @property
    def timestep(self) -> torch.Tensor:
        """The timestep of the next iteration (0-dim, on the model's device)."""
        return self.run.timesteps[self.position]

    @property
    def signature(self) -> tuple:
        """What a request must share with the others to join their UNet calls."""
        return (tuple(self.latents.shape[1:]), self.latents.dtype, tuple(self.embeddings.shape[1:]))


def txt2img_state(
    model: LoadedModel, request: GenerationRequest, callback: StepCallback | None = None
) -> DenoisingState:
    """The state of a txt2img request before its first step: steps 1-3 of ``txt2img``."""
    if request.mode != "txt2img":
        raise InvalidRequest("init_image", "given", "only txt2img requests are batched for now")
    request = resolve_request(model, request)
    scheduler = new_scheduler(model, request)
    embeddings = text_conditioning(model, request)  # (2B or B, 77, D)
    generators = image_generators(request.seed, request.total_images)
    latents = noise_latents(model, request, generators, scheduler)  # (B, C, H/f, W/f)
    run = prepare_run(scheduler, guidance_scale=request.guidance_scale, generators=generators)
    return DenoisingState(request, run, latents, embeddings, callback)


@dataclass(frozen=True)
class Finished:
    """A request that left the batch: its result, or the error that stopped it."""

    state: DenoisingState
    result: GenerationResult | None = None
    error: BaseException | None = None  # from its callback, e.g. GenerationCancelled


class Batcher:
    """The requests in flight on one model, denoised together one step at a time.

    Not thread-safe: one worker owns it, adding requests between calls to ``step``.
    """

    def __init__(self, model: LoadedModel):
        self.model = model
        self.unet = denoising_unet(model)
        self.active: list[DenoisingState] = []

    def add(
        self, request: GenerationRequest, callback: StepCallback | None = None
    ) -> DenoisingState:
        """Start ``request`` at the next step; returned, its state identifies it in ``Finished``.

        Raises:
            InvalidRequest: the request is not txt2img, or its size differs from the size of the
                requests in flight (its latents could not share their UNet calls).
        """
        with torch.inference_mode():
            state = txt2img_state(self.model, request, callback)
        if self.active and state.signature != self.active[0].signature:
            first = self.active[0].request
            raise InvalidRequest(
                "width/height",
                f"{state.request.width}x{state.request.height}",
                f"the size of the requests in this batch, {first.width}x{first.height}; "
                "run it in a batch of its own",
            )
        self.active.append(state)
        return state

    def compatible(self, request: GenerationRequest) -> bool:
        """Whether ``request`` can join now (txt2img, and the size of the requests in flight)."""
        if request.mode != "txt2img":
            return False
        if not self.active:
            return True
        resolved, first = resolve_request(self.model, request), self.active[0].request
        return (resolved.width, resolved.height) == (first.width, first.height)

    @torch.inference_mode()
    def step(self) -> list[Finished]:
        """One iteration for every request in flight: one shared UNet call, then each its own
        guidance, scheduler step and callback. Returns the requests that left the batch."""
        states = [s for s in self.active if not s.done]
        finished = [Finished(s, self._result(s)) for s in self.active if s.done]
        if states:
            inputs = [scaled_input(s.run, s.latents, s.timestep, s.extra_channels) for s in states]
            noise_preds = self._shared_unet_call(states, [model_input for model_input, _ in inputs])
            for state, (_, x_t), noise_pred in zip(states, inputs, noise_preds, strict=True):
                try:
                    state.latents = finish_step(
                        state.run,
                        state.position,
                        state.timestep,
                        x_t,
                        state.latents,
                        noise_pred,
                        after_step=state.after_step,
                        callback=state.callback,
                    )
                except Exception as err:  # noqa: BLE001 - its own callback stops only this request
                    finished.append(Finished(state, error=err))
                    continue
                state.position += 1
                if state.done:
                    finished.append(Finished(state, self._result(state)))
        gone = {id(f.state) for f in finished}
        self.active = [s for s in self.active if id(s) not in gone]
        return finished

    def run_until_done(self) -> list[Finished]:
        """Step until no request is left; the finished ones in the order they left."""
        finished = []
        while self.active:
            finished.extend(self.step())
        return finished

    def _shared_unet_call(
        self, states: list[DenoisingState], model_inputs: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """One UNet call over every state's rows; each state's slice of the prediction."""
        rows = [x.shape[0] for x in model_inputs]
        # Each row its own request's timestep; the UNet's time embedding casts them to float32.
        timesteps = torch.cat(
            [
                s.timestep.to(torch.float32).reshape(1).expand(n)
                for s, n in zip(states, rows, strict=True)
            ]
        )  # (N,)
        sample = torch.cat(model_inputs)  # (N, C', h, w)
        embeddings = torch.cat([s.embeddings for s in states])  # (N, 77, D)
        noise_pred = self.unet(
            sample, timesteps, encoder_hidden_states=embeddings, return_dict=False
        )
        return list(noise_pred[0].split(rows))  # each (2B or B, C, h, w)

    def _result(self, state: DenoisingState) -> GenerationResult:
        return GenerationResult(state.request, decode_latents(self.model.vae, state.latents))
