"""A worker's warm-up: compiling before the first job, where the model compiles.

With the fast path's ``torch.compile`` (on by default on CUDA) the first calls of each shape
compile for minutes on SD 1.5; a worker runs ``WARMUP_REQUESTS`` through the path jobs take
(a ``Batcher``) while the server reports "loading", so the first users' jobs do not wait.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sdgen.engine.batching import Batcher, StartFn
from sdgen.errors import GenerationCancelled
from sdgen.models.loaded import LoadedModel
from sdgen.params import GenerationRequest

log = logging.getLogger(__name__)

# At the model's default size, 2 steps each: 1 picture with guidance compiles the UNet and the
# VAE decoder; 2 pictures, a new batch size, make torch.compile recompile them with a dynamic
# batch dimension, which other batch sizes reuse (CUDA graphs are recorded per size, which is
# fast); 1 picture without guidance is one UNet row, a size torch.compile always specializes
# on. All UNet calls take the same timestep form, alone or shared.
WARMUP_REQUESTS = (
    GenerationRequest("warm-up", num_images=1, steps=2, seed=0),
    GenerationRequest("warm-up", num_images=2, steps=2, seed=0),
    GenerationRequest("warm-up", num_images=1, steps=2, seed=0, guidance_scale=1.0),
)


def warm_up(
    model: LoadedModel,
    device: str,
    start: StartFn | None,
    stopping: threading.Event,
    free_memory: Callable[[], None],
) -> None:
    """Run ``WARMUP_REQUESTS`` on ``model`` (set up by ``start``, as the engine's jobs are);
    ends at the next step once ``stopping`` is set. A failure is logged and memory freed: the
    worker serves anyway, and its first jobs compile what is missing."""
    log.info("worker on %s: warming up the compiled networks", device)
    started = time.perf_counter()

    def until_stopped(step) -> None:
        if stopping.is_set():
            raise GenerationCancelled()

    try:
        batcher = Batcher(model, start=start)
        for request in WARMUP_REQUESTS:
            batcher.add(request, until_stopped)
            for finished in batcher.run_until_done():
                if finished.error is not None:
                    raise finished.error
    except GenerationCancelled:
        return
    except Exception:
        log.exception("worker on %s: the warm-up failed", device)
        free_memory()
        return
    log.info("worker on %s: warmed up in %.1f s", device, time.perf_counter() - started)
