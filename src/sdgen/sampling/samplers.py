"""The sampler registry: sdgen's names and A1111's display names -> diffusers schedulers.

Every request gets a fresh scheduler built from the model's own scheduler config
(``Class.from_config(config, **options)``), as diffusers' docs recommend when swapping schedulers,
so the model's training schedule (betas, prediction type, timestep spacing) always carries over.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sdgen.errors import InvalidRequest


@dataclass(frozen=True)
class Sampler:
    name: str  # sdgen's name, used on the command line and in the JSON metadata
    scheduler_class: str  # a class in diffusers.schedulers
    a1111_name: str  # A1111's "Sampler" value in the parameters text
    schedule_type: str | None = None  # A1111's "Schedule type" (v1.9+), None = Automatic
    options: dict[str, Any] = field(default_factory=dict)  # from_config overrides
    a1111_aliases: tuple[str, ...] = ()  # A1111's other names for it (its sampler table's)

    @property
    def display_name(self) -> str:
        """A1111's older combined name, e.g. "DPM++ 2M Karras"."""
        return f"{self.a1111_name} {self.schedule_type}" if self.schedule_type else self.a1111_name


SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in (
        Sampler("ddim", "DDIMScheduler", "DDIM"),
        Sampler("pndm", "PNDMScheduler", "PLMS", a1111_aliases=("plms",)),
        Sampler("lms", "LMSDiscreteScheduler", "LMS", a1111_aliases=("k_lms",)),
        Sampler("euler", "EulerDiscreteScheduler", "Euler", a1111_aliases=("k_euler",)),
        Sampler(
            "euler_a",
            "EulerAncestralDiscreteScheduler",
            "Euler a",
            a1111_aliases=("k_euler_a", "k_euler_ancestral"),
        ),
        Sampler("heun", "HeunDiscreteScheduler", "Heun", a1111_aliases=("k_heun",)),
        Sampler(
            "dpmpp_2m",
            "DPMSolverMultistepScheduler",
            "DPM++ 2M",
            options={"use_karras_sigmas": False},
            a1111_aliases=("k_dpmpp_2m",),
        ),
        Sampler(
            "dpmpp_2m_karras",
            "DPMSolverMultistepScheduler",
            "DPM++ 2M",
            schedule_type="Karras",
            options={"use_karras_sigmas": True},
            a1111_aliases=("k_dpmpp_2m_ka",),
        ),
        Sampler("unipc", "UniPCMultistepScheduler", "UniPC"),
    )
}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


# Every accepted spelling, normalised: sdgen's names, A1111's display names in any case
# ("Euler a", "DPM++ 2M Karras"), their combined "name + schedule type" form and A1111's
# aliases ("k_euler_a").
_ALIASES: dict[str, str] = {}
for _s in SAMPLERS.values():
    _ALIASES[_key(_s.name)] = _s.name
    _ALIASES[_key(_s.display_name)] = _s.name
    for _alias in _s.a1111_aliases:
        _ALIASES[_key(_alias)] = _s.name
_ALIASES[_key("PLMS")] = "pndm"


def resolve_sampler(name: str, field: str = "sampler") -> Sampler:
    """The sampler called ``name`` (sdgen or A1111 spelling, any case); an error names
    ``field``."""
    if not isinstance(name, str) or _key(name) not in _ALIASES:
        known = ", ".join(f"{s.name} ({s.display_name})" for s in SAMPLERS.values())
        raise InvalidRequest(field, name, f"one of {known}")
    return SAMPLERS[_ALIASES[_key(name)]]


def sampler_for_config(scheduler_config: dict) -> Sampler | None:
    """The registry entry a model's own scheduler config amounts to, if any."""
    class_name = scheduler_config.get("_class_name")
    karras = bool(scheduler_config.get("use_karras_sigmas"))
    for sampler in SAMPLERS.values():
        wants_karras = bool(sampler.options.get("use_karras_sigmas"))
        if sampler.scheduler_class == class_name and wants_karras == karras:
            return sampler
    return None


def make_scheduler(sampler: Sampler | None, scheduler_config: dict):
    """A fresh diffusers scheduler: ``sampler``'s class, or the model's own when ``None``."""
    import diffusers

    class_name = sampler.scheduler_class if sampler else scheduler_config["_class_name"]
    scheduler_class = getattr(diffusers, class_name)
    options = sampler.options if sampler else {}
    return scheduler_class.from_config(scheduler_config, **options)
