"""Batching across requests: one shared UNet call per step for every request in flight.

Requests on one model are denoised together, step by step; those of one latent shape share a
UNet call (the engine's workers join requests of the batch's size; a hires fix's second pass is
larger, and is called apart while it runs; so are requests that name other LoRAs, each
call with its set merged into the weights). Each keeps its own scheduler, generators, text
embeddings, guidance scale, timesteps and callback; only the UNet call is shared. A step
concatenates every request's UNet input, [uncond; text] when it guides, else [text], with each
row's own timestep as a (N,) tensor, which diffusers' UNet accepts; rows whose text embeddings
differ in length (prompts read in 75-token chunks) are called one length at a time
(``sdgen.sampling.embeddings``). Then each request applies its own guidance and scheduler step
(``DenoisingState.advance``, what ``denoise_state`` runs for a request alone), so a request's
pictures are the ones it gets alone, up to the CPU kernels' batch-size-dependent rounding
(<= 1/255 measured, see tests/test_batching.py).

txt2img, img2img and inpainting requests mix freely: each is set up by its own pipeline's
``start`` (img2img's noised init latents and shorter timesteps, inpainting's extra channels or
blending hook live in its ``DenoisingState``). A request joins at any step boundary
(``Batcher.add``) and leaves when its last step is done, decoded into a ``GenerationResult``;
one with a next pass (the hires fix) starts it then, at the same step boundary, instead.
A shared call that runs out of device memory is retried one request at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch

from sdgen.conditioning.networks import request_loras
from sdgen.errors import GenerationStopped, InvalidRequest
from sdgen.models.devices import empty_cuda_cache
from sdgen.models.loaded import LoadedModel
from sdgen.params import GenerationRequest
from sdgen.pipelines.generate import start as start_request
from sdgen.pipelines.stages import (
    GenerationResult,
    PreparedRequest,
    denoising_unet,
    resolve_request,
)
from sdgen.sampling.embeddings import TextEmbeddings, predict_noise
from sdgen.sampling.loop import StepCallback

# start(model, request, callback): a request set up to denoise (sdgen.pipelines.generate.start).
StartFn = Callable[[LoadedModel, GenerationRequest, StepCallback | None], PreparedRequest]


@dataclass(frozen=True)
class Finished:
    """A request that left the batch: its result, or the error that stopped it."""

    prepared: PreparedRequest  # the ticket ``Batcher.add`` returned
    result: GenerationResult | None = None
    error: BaseException | None = None  # from its callback, e.g. GenerationCancelled


class Batcher:
    """The requests in flight on one model, denoised together one step at a time.

    Not thread-safe: one worker owns it, adding requests between calls to ``step``.
    """

    def __init__(self, model: LoadedModel, *, start: StartFn | None = None):
        self.model = model
        self._start = start or start_request
        self.unet = denoising_unet(model)
        self.active: list[PreparedRequest] = []
        # The running states' embeddings joined, kept while the same states run: rows of
        # several lengths are grouped once, not at every step.
        self._joined: dict[tuple, tuple[tuple, tuple, TextEmbeddings]] = {}

    def add(
        self, request: GenerationRequest, callback: StepCallback | None = None
    ) -> PreparedRequest:
        """Start ``request`` at the next step; the returned ticket identifies it in ``Finished``.
        A request of another size than those in flight joins too, but shares no UNet call with
        them (``compatible`` says whether it would).

        Raises:
            InvalidRequest: the request is invalid for the model.
        """
        prepared = self._start(self.model, request, callback)
        self.active.append(prepared)
        return prepared

    def compatible(self, request: GenerationRequest) -> bool:
        """Whether ``request`` can join now: it has the size of the requests in flight (on one
        model that also fixes the channels and the precision) and names the same LoRAs (a
        batch of several sets would change the weights at every step). False for a request
        whose size is invalid: run alone, it fails with the reason."""
        if not self.active:
            return True
        try:
            resolved = resolve_request(self.model, request)
        except InvalidRequest:
            return False
        first = self.active[0].request
        same_loras = request_loras(resolved) == request_loras(first)
        return (resolved.width, resolved.height) == (first.width, first.height) and same_loras

    @torch.inference_mode()
    def step(self) -> list[Finished]:
        """One iteration for every request in flight: one shared UNet call, then each its own
        guidance, scheduler step and callback. Returns the requests that left the batch."""
        finished = [f for p in self.active if p.state.done and (f := self._next_pass(p))]
        gone = {id(f.prepared) for f in finished}
        running = [p for p in self.active if not p.state.done and id(p) not in gone]
        if running:
            noise_preds = self._unet_calls(running, finished)
            for prepared, noise_pred in zip(running, noise_preds, strict=True):
                if noise_pred is None:  # out of memory even alone: in ``finished`` already
                    continue
                try:
                    prepared.state.advance(noise_pred)
                except GenerationStopped as stopped:  # ends now, with this step's pictures
                    finished.append(self._finish(prepared, stopped))
                    continue
                except Exception as err:  # noqa: BLE001 - its own callback stops only this request
                    finished.append(Finished(prepared, error=err))
                    continue
                if prepared.state.done and (ended := self._next_pass(prepared)):
                    finished.append(ended)
        gone = {id(f.prepared) for f in finished}
        self.active = [p for p in self.active if id(p) not in gone]
        if not self.active:
            self._joined = {}  # nothing of the finished requests is kept
        return finished

    def run_until_done(self) -> list[Finished]:
        """Step until no request is left; the finished ones in the order they left."""
        finished = []
        while self.active:
            finished.extend(self.step())
        return finished

    def _next_pass(self, prepared: PreparedRequest) -> Finished | None:
        """A request whose pass is done: None when its next pass (the hires fix's) starts,
        else finished; a next pass that cannot start ends it with the error."""
        try:
            if prepared.start_next_pass():
                return None
        except Exception as err:  # noqa: BLE001 - e.g. out of memory upscaling: this request only
            return Finished(prepared, error=_without_frames(err))
        return self._finish(prepared)

    def _finish(
        self, prepared: PreparedRequest, stopped: GenerationStopped | None = None
    ) -> Finished:
        """A request whose last step is done (or that was ``stopped``): its pictures, or why
        they could not be decoded."""
        try:
            return Finished(prepared, prepared.result(self.model, stopped))
        except Exception as err:  # noqa: BLE001 - e.g. out of memory in the VAE: this request only
            return Finished(prepared, error=_without_frames(err))

    def _unet_calls(
        self, running: list[PreparedRequest], finished: list[Finished]
    ) -> list[torch.Tensor | None]:
        """Each request's prediction from one shared UNet call; when that runs out of device
        memory, from one call per request, and a request that runs out alone is ``finished``
        with the error (None in its place): one large request does not sink the others."""
        try:
            return self._shared_unet_call(running)
        except torch.cuda.OutOfMemoryError:
            if len(running) == 1:
                raise
        empty_cuda_cache()
        predictions: list[torch.Tensor | None] = []
        for prepared in running:
            try:
                predictions.append(self._shared_unet_call([prepared])[0])
            except torch.cuda.OutOfMemoryError as err:
                finished.append(Finished(prepared, error=_without_frames(err)))
                empty_cuda_cache()
                predictions.append(None)
        return predictions

    def _shared_unet_call(self, running: list[PreparedRequest]) -> list[torch.Tensor]:
        """Each request's prediction, from one UNet call per latent shape among them (a hires
        fix's second pass is larger); a shape's rows called together, ``_same_shape_call``."""
        groups: dict[tuple, list[int]] = {}
        for i, prepared in enumerate(running):
            groups.setdefault(prepared.state.signature, []).append(i)
        predictions: list[torch.Tensor] = [None] * len(running)  # type: ignore[list-item]
        for indices in groups.values():
            states = [running[i].state for i in indices]
            for i, prediction in zip(indices, self._same_shape_call(states), strict=True):
                predictions[i] = prediction
        return predictions

    def _same_shape_call(self, states: list) -> list[torch.Tensor]:
        """One UNet call over the rows of ``states`` of one latent shape (one per embedding
        length, when their prompts' lengths differ: ``predict_noise``); each state's slice of
        the prediction."""
        model_inputs = [s.unet_input() for s in states]  # each (copies x B, C', h, w)
        rows = [x.shape[0] for x in model_inputs]
        # (N,): each row its own request's timestep, in the form ``denoise_state`` passes it
        timesteps = torch.cat([s.row_timesteps(n) for s, n in zip(states, rows, strict=True)])
        sample = torch.cat(model_inputs)  # (N, C', h, w)
        embeddings = self._joined_embeddings(states)  # N rows
        unet = self._tiled_unet if states[0].tiling else self.unet
        with self.model.loras.holding(states[0].loras):  # one set: part of the signature
            noise_pred = predict_noise(unet, sample, timesteps, embeddings)
        return list(noise_pred.split(rows))  # each (copies x B, C, h, w)

    @cached_property
    def _tiled_unet(self):
        """The UNet of tiled requests' calls (``denoising_unet``'s circular copy), found once."""
        return denoising_unet(self.model, tiling=True)

    def _joined_embeddings(self, states: list) -> TextEmbeddings:
        """The text embeddings of ``states``' rows at their steps, one after another; the same
        object while the same states run with the same embeddings (keyed by the states' and
        the embeddings' ids: the entry holds both, so none is freed and its id reused).
        Entries of states that no longer run, or whose prompts have changed since (prompt
        editing), are dropped when another set is joined."""
        embeddings = [s.embeddings.at(s.position) for s in states]  # a prompt may change
        key = tuple((id(s), id(e)) for s, e in zip(states, embeddings, strict=True))
        if key not in self._joined:
            now = {(id(p.state), id(p.state.embeddings.at(p.state.position))) for p in self.active}
            self._joined = {k: v for k, v in self._joined.items() if now.issuperset(k)}
            joined = TextEmbeddings.cat(embeddings)
            self._joined[key] = (tuple(states), tuple(embeddings), joined)
        return self._joined[key][2]


def _without_frames(error: Exception) -> Exception:
    """An out-of-memory error without its traceback: the traceback's frames hold the tensors of
    the failed call, which would stay allocated for as long as the error is kept."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return error.with_traceback(None)
    return error
