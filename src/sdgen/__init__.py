"""sdgen: Stable Diffusion image generation as a library, a command line and a server.

    import sdgen
    model = sdgen.load_model("stable-diffusion-v1-5/stable-diffusion-v1-5")
    result = sdgen.txt2img(model, sdgen.GenerationRequest("a red circle", seed=42))
    sdgen.save_result(result, model, Path("outputs"))

Names are imported on first use, so ``import sdgen`` stays light (no torch, no diffusers).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "GenerationRequest": "sdgen.params",
    "HiresFix": "sdgen.hires",
    "load_model": "sdgen.models.loader",
    "LoadedModel": "sdgen.models.loaded",
    "txt2img": "sdgen.pipelines.txt2img",
    "GenerationResult": "sdgen.pipelines.stages",
    "Step": "sdgen.sampling.loop",
    "save_result": "sdgen.api",
    "SdgenError": "sdgen.errors",
    "InvalidRequest": "sdgen.errors",
    "ModelNotFound": "sdgen.errors",
    "PickleRefused": "sdgen.errors",
    "GenerationCancelled": "sdgen.errors",
    "GenerationStopped": "sdgen.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sdgen' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
