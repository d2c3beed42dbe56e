"""The denoising loop, written once for every pipeline, the CLI and the server.

Each step: scale the latents for the scheduler, one batched UNet call (unconditional and text
halves together when guiding), guidance, the scheduler's update, then one callback with a
``Step``. Progress bars, previews, videos, cancellation and server events are all callbacks.
"""

from __future__ import annotations

import inspect
import logging
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, partial

import numpy as np
import torch
from torch.nn.modules import module as _nn_module  # its global hook registries

from sdgen.sampling.embeddings import EmbeddingSchedule, TextEmbeddings, predict_noise
from sdgen.sampling.guidance import compose, guide, uses_guidance

log = logging.getLogger(__name__)

MAX_TRACES = 32  # TorchScript traces a TracedUNet keeps, one per input signature


@dataclass(frozen=True)
class Step:
    """What a step callback receives. Tensors are (B, C, H/f, W/f) on the model's device.

    Nothing in it reads the GPU: a callback that only counts steps (a progress bar) costs no
    host-device synchronisation and no extra kernels.
    """

    index: int  # 0-based step number, counted as the user counts steps
    total: int  # number of steps in this run (img2img: those that strength leaves)
    timestep: float  # the scheduler's timestep for this step
    latents: torch.Tensor  # latents after this step, in the scheduler's own space
    predict_denoised: Callable[[], torch.Tensor] = field(repr=False, compare=False)

    @cached_property
    def denoised(self) -> torch.Tensor:
        """Predicted clean latents (x0) from this step's noise prediction, made on first use."""
        return self.predict_denoised()


StepCallback = Callable[[Step], None]  # raise GenerationCancelled inside it to stop
# (step index, latents after the scheduler's step) -> latents; inpainting's blending uses it.
AfterStep = Callable[[int, torch.Tensor], torch.Tensor]


def denoise_state(unet: torch.nn.Module, state: DenoisingState) -> torch.Tensor:
    """Run ``state``'s remaining iterations alone, one UNet call each (one per embedding
    length, ``predict_noise``); the final latents (B, C, h, w)."""
    while not state.done:
        model_input = state.unet_input()  # (copies x B, C', h, w)
        t = state.row_timesteps(model_input.shape[0])
        embeddings = state.embeddings.at(state.position)
        state.advance(predict_noise(unet, model_input, t, embeddings))
    return state.latents


@dataclass(frozen=True)
class DenoisingRun:
    """What stays fixed over one run of the loop; the per-step pieces below take it.

    ``denoise_state`` and the engine's cross-request batching (sdgen.engine.batching) both
    advance ``DenoisingState``s, so a request's steps are the same math whether its UNet call
    is alone or shared.
    """

    scheduler: object  # a diffusers scheduler with its timesteps set
    guidance_scale: float
    guided: bool  # [uncond; text] halves in the UNet call
    step_kwargs: dict  # generator / eta for scheduler.step
    timesteps: torch.Tensor  # the iterations to run
    timestep_values: tuple[float, ...]  # the same on the CPU, read once before the loop
    reports: dict[int, int]  # iteration -> user-counted step number, for the callback
    log_sigmas: np.ndarray  # for x0 previews
    prediction_type: str


def prepare_run(
    scheduler,
    *,
    guidance_scale: float,
    generators: list[torch.Generator],
    timesteps: torch.Tensor | None = None,
    steps: int | None = None,
    eta: float = 0.0,
) -> DenoisingRun:
    """The fixed parts of one run.

    Args:
        scheduler: a diffusers scheduler on which ``set_timesteps`` has been called.
        guidance_scale: classifier-free guidance weight; <= 1 means no guidance.
        generators: one CPU generator per image, for the sampler's own random draws.
        timesteps: the steps to run (img2img starts part-way); default all of the scheduler's.
        steps: how many steps ``timesteps`` make as the user counts them (default the
            scheduler's ``num_inference_steps``); the callback runs once per such step.
        eta: DDIM's eta (its step's fresh noise is drawn from ``generators``); schedulers
            without an eta take only 0 (``new_scheduler`` refuses the others).
    """
    timesteps = scheduler.timesteps if timesteps is None else timesteps
    return DenoisingRun(
        scheduler=scheduler,
        guidance_scale=guidance_scale,
        guided=uses_guidance(guidance_scale),
        step_kwargs=_step_kwargs(scheduler, generators, eta),
        timesteps=timesteps,
        timestep_values=tuple(float(t) for t in timesteps.tolist()),
        reports=_reported_iterations(scheduler, len(timesteps), steps),
        log_sigmas=_log_sigmas(scheduler.alphas_cumprod),
        prediction_type=scheduler.config.prediction_type,
    )


@dataclass(eq=False)  # compared by identity: a batch of requests holds one per request
class DenoisingState:
    """One run of the loop part-way through: everything its next iteration needs.

    ``denoise_state`` runs a state alone; the engine's cross-request batching
    (sdgen.engine.batching) advances several together, concatenating their ``unet_input``
    rows into one UNet call.
    """

    run: DenoisingRun  # its own scheduler, generators (in step_kwargs), timesteps, reports
    latents: torch.Tensor  # (B, C, h, w) after ``position`` iterations (at the start: already
    # multiplied by the scheduler's init_noise_sigma where it needs it)
    # 2B or B rows: [negative; prompt] when guiding ((K + 1)B with A1111's AND: its
    # ``part_weights``); an EmbeddingSchedule where the prompts change between steps
    # (``embeddings.at(position)`` is the iteration's)
    embeddings: TextEmbeddings | EmbeddingSchedule
    callback: StepCallback | None = None  # after every user-counted step, with a ``Step``
    # Each image's channels concatenated to the scaled UNet input (repeated as the latents
    # are, ``copies``), e.g. an inpainting UNet's mask and masked-picture latents: (B, 5, h, w).
    extra_channels: torch.Tensor | None = None
    after_step: AfterStep | None = None  # on the latents after each scheduler step
    # The LoRAs the model's weights must hold for its UNet calls (sdgen.models.lora_weights),
    # those its embeddings were encoded with; () for none
    loras: tuple = ()
    tiling: bool = False  # its UNet calls go to the circular copy (sdgen.models.tiling)
    position: int = 0  # iterations done
    _x_t: torch.Tensor | None = None  # the scaled input of the iteration under way

    @property
    def done(self) -> bool:
        return self.position >= len(self.run.timesteps)

    @property
    def timestep(self) -> torch.Tensor:
        """The timestep of the next iteration (0-dim, on the model's device)."""
        return self.run.timesteps[self.position]

    def row_timesteps(self, rows: int) -> torch.Tensor:
        """The next iteration's timestep for each of ``rows`` UNet input rows: (rows,) float32.

        Every UNet call, alone or shared with other requests, takes its timesteps in this one
        form, so a compiled or traced UNet sees one kind of timestep input, not also diffusers'
        0-dim one. The pictures are the same: the UNet's time embedding converts timesteps to
        float32 first either way (exact for SD's integer timesteps).
        """
        return self.timestep.to(torch.float32).reshape(1).repeat(rows)

    @property
    def signature(self) -> tuple:
        """What states must share to be advanced by shared UNet calls: the shape of a row of
        the UNet's input, the precision, the LoRAs and tiling (rows whose text embeddings
        differ in length are called apart, ``predict_noise``)."""
        channels = self.latents.shape[1]
        if self.extra_channels is not None:
            channels += self.extra_channels.shape[1]
        rows = (channels, *self.latents.shape[2:])
        return (rows, self.latents.dtype, self.loras, self.tiling)

    @property
    def copies(self) -> int:
        """How many times the latents are in a UNet call's rows: twice when guiding
        ([uncond; text]), K + 1 times for a prompt of K parts (A1111's AND), else once."""
        part_weights = self.embeddings.part_weights
        if part_weights is not None:
            return len(part_weights) + 1
        return 2 if self.run.guided else 1

    def unet_input(self) -> torch.Tensor:
        """The UNet input of the next iteration (``copies`` x B rows, C', h, w)."""
        model_input, self._x_t = scaled_input(
            self.run, self.latents, self.timestep, self.extra_channels, self.copies
        )
        return model_input

    def advance(self, noise_pred: torch.Tensor) -> None:
        """Finish the iteration whose input ``unet_input`` gave, with the UNet's prediction for
        those rows: guidance, scheduler step, after-step hook, callback.

        The state advances before the callback runs, so a callback that raises (a cancel)
        leaves it consistent.
        """
        if self._x_t is None:
            raise RuntimeError("advance() without unet_input() for this iteration")
        x_t, self._x_t = self._x_t, None
        run, index, t = self.run, self.position, self.timestep
        if (part_weights := self.embeddings.part_weights) is not None:
            noise_pred = compose(noise_pred, part_weights, run.guidance_scale)  # (B, C, h, w)
        elif run.guided:
            noise_pred = guide(noise_pred, run.guidance_scale)  # (B, C, h, w)
        latents = run.scheduler.step(noise_pred, t, self.latents, **run.step_kwargs).prev_sample
        if self.after_step is not None:
            latents = self.after_step(index, latents)
        self.latents, self.position = latents, index + 1
        if self.callback is not None and index in run.reports:
            t_value = run.timestep_values[index]  # from the CPU: no sync with the GPU
            alpha_bar = _alpha_bar_of_step(run.scheduler, t_value, run.log_sigmas)  # now: it
            # reads the scheduler's step index, which the next step moves on
            x0 = partial(predict_x0, x_t, noise_pred, alpha_bar, run.prediction_type)
            self.callback(Step(run.reports[index], len(run.reports), t_value, latents, x0))


def scaled_input(
    run: DenoisingRun,
    latents: torch.Tensor,
    t: torch.Tensor,
    extra_channels: torch.Tensor | None = None,
    copies: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The UNet input (copies x B, C + extra, h, w) for timestep ``t``, and x_t (B, C, h, w):
    ``latents`` and their ``extra_channels`` (B, extra, h, w) repeated ``copies`` times."""
    model_input = torch.cat([latents] * copies) if copies > 1 else latents
    model_input = run.scheduler.scale_model_input(model_input, t)
    # The scaled input is in x_t space for every scheduler; x0 previews start from it.
    x_t = model_input[: latents.shape[0]]
    if extra_channels is not None:
        extra = torch.cat([extra_channels] * copies) if copies > 1 else extra_channels
        model_input = torch.cat([model_input, extra], dim=1)
    return model_input, x_t


def _reported_iterations(scheduler, iterations: int, steps: int | None) -> dict[int, int]:
    """Loop iteration -> step number, for the iterations that end a user-counted step.

    Some schedulers run more iterations than steps: PLMS repeats its first timestep, Heun and
    other second-order solvers take two model calls per step. As diffusers' progress bar does,
    the warm-up iterations are not reported and a step ends every ``order`` iterations.
    """
    steps = steps or scheduler.num_inference_steps
    order = scheduler.order
    warmup = iterations - steps * order
    ends = [
        i
        for i in range(iterations)
        if i == iterations - 1 or (i + 1 > warmup and (i + 1) % order == 0)
    ]
    return {iteration: number for number, iteration in enumerate(ends)}


def predict_x0(
    x_t: torch.Tensor, model_output: torch.Tensor, alpha_bar: float, prediction_type: str
) -> torch.Tensor:
    """The clean latents implied by one prediction at noise level ``alpha_bar`` (DDPM x_t space)."""
    a, s = alpha_bar**0.5, (1.0 - alpha_bar) ** 0.5
    if prediction_type == "epsilon":
        return (x_t - s * model_output) / a
    if prediction_type == "v_prediction":
        return a * x_t - s * model_output
    return model_output  # "sample": the model predicts x0 itself


def _log_sigmas(alphas_cumprod: torch.Tensor) -> np.ndarray:
    """log sigma of every training timestep, sigma^2 = (1 - alpha_bar) / alpha_bar."""
    # on the model's device once DDIM's or PNDM's add_noise (img2img) has moved it there
    alphas = alphas_cumprod.detach().to("cpu", torch.float64).numpy()
    return 0.5 * np.log((1.0 - alphas) / alphas)


def _alpha_bar_of_step(scheduler, t: float, log_sigmas: np.ndarray) -> float:
    """alpha_bar of the step just taken, read after ``scheduler.step``.

    Sigma schedulers (Euler, Heun, LMS, DPM-Solver, UniPC) step along their own ``sigmas``, which
    Karras spacing puts between training timesteps; their step index has just moved past the one
    used. The others (DDIM, PNDM) step on integer training timesteps.
    """
    index, sigmas = getattr(scheduler, "step_index", None), getattr(scheduler, "sigmas", None)
    if index is not None and sigmas is not None and index >= 1:
        sigma = float(sigmas[index - 1])
        return 1.0 / (1.0 + sigma * sigma)  # sigma^2 = (1 - alpha_bar) / alpha_bar
    return _alpha_bar_at(t, log_sigmas)


def _alpha_bar_at(t: float, log_sigmas: np.ndarray) -> float:
    """alpha_bar at a possibly fractional timestep (Karras schedules interpolate log sigma)."""
    log_sigma = np.interp(t, np.arange(len(log_sigmas)), log_sigmas)
    return float(1.0 / (1.0 + np.exp(2.0 * log_sigma)))


def _step_kwargs(scheduler, generators: list[torch.Generator], eta: float) -> dict:
    """The generators and eta for the schedulers that take them."""
    accepted = inspect.signature(scheduler.step).parameters
    kwargs = {}
    if "generator" in accepted:
        kwargs["generator"] = generators
    if "eta" in accepted:
        kwargs["eta"] = eta
    return kwargs


class TracedUNet:
    """A UNet run as TorchScript traces, one per input signature: the same operators without
    Python between them.

    On the CPU a small UNet's step is mostly Python (diffusers' modules and attention processors
    call hundreds of operators of a few microseconds each); TorchScript's interpreter runs the
    recorded operators from C++ and gives bit-identical outputs (no fusion on the CPU), with
    about 40% less time per step on the embedded model (benchmarks/results/cpu_profile.md).
    torch.jit.trace is deprecated in favour of torch.export and torch.compile, but an exported
    graph still calls each operator from Python (~10% gained) and compiling changes the
    numerics; if tracing fails, the eager UNet is used.

    A trace records one input signature (shapes, dtypes: shape arithmetic and branches become
    constants), so each new signature is traced once, which costs one extra UNet call; the
    ``MAX_TRACES`` most recently used are kept (a server batching requests of many sizes sees
    many signatures; a trace's graph is small, the weights are shared). The
    UNet's weights are shared, not copied; a UNet whose modules change after loading (adapters,
    attention processors) needs a new ``TracedUNet``. Forward hooks are Python that a trace would
    skip: while the UNet or any of its modules has one, it runs eagerly.
    """

    def __init__(self, unet: torch.nn.Module):
        self.unet = unet
        self._modules = list(unet.modules())  # for the hook check: 25 us a step, not 190
        self._traces: OrderedDict[tuple, Callable] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        return_dict: bool = False,
    ) -> tuple[torch.Tensor]:
        """``(noise_pred,)`` as ``UNet2DConditionModel(..., return_dict=False)`` returns it."""
        if return_dict or not torch.is_tensor(timestep) or self._hooked():
            return self.unet(sample, timestep, encoder_hidden_states, return_dict=return_dict)
        inputs = (sample, timestep, encoder_hidden_states)
        key = tuple((tuple(x.shape), x.dtype, x.device) for x in inputs)
        with self._lock:  # workers on several devices may share one model's TracedUNet
            run = self._traces.get(key)
            if run is not None:
                self._traces.move_to_end(key)
        if run is None:
            run = self._trace(inputs)  # outside the lock: seconds; two threads may both trace
            with self._lock:
                self._traces[key] = run
                if len(self._traces) > MAX_TRACES:
                    self._traces.popitem(last=False)
        return (run(*inputs),)

    def _hooked(self) -> bool:
        if _nn_module._global_forward_hooks or _nn_module._global_forward_pre_hooks:
            return True
        return any(m._forward_hooks or m._forward_pre_hooks for m in self._modules)

    def _trace(self, inputs: tuple[torch.Tensor, ...]) -> Callable:
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # deprecation, and TracerWarnings about shapes
                return torch.jit.trace(_UNetCall(self.unet), inputs, check_trace=False)
        except Exception as err:  # noqa: BLE001 - any failure: run the UNet as it is
            log.warning("UNet tracing failed (%s); running it eagerly", err)
            return _UNetCall(self.unet)


class _UNetCall(torch.nn.Module):
    """``unet(sample, t, encoder_hidden_states)`` -> noise prediction, as one traceable call."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]
