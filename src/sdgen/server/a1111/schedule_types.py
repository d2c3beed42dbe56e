"""A1111's schedule types (its ``scheduler`` field, v1.9+) as far as sdgen has them.

A1111 splits a sampler into an algorithm ("DPM++ 2M") and a schedule type ("Karras"); sdgen's
sampler registry keeps its older combined names ("DPM++ 2M Karras"), one entry per pair it
really runs. So sdgen has "Automatic" (each sampler's own schedule, as A1111 chooses it: Karras
for DPM++ 2M) and the schedule types its registry names, each only with the samplers it names
it for: Karras with DPM++ 2M only, today.
A1111's others (uniform, exponential, polyexponential, sgm_uniform, ...) are refused with 422
naming ``scheduler``, where A1111 would fall back to Automatic without a word.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdgen.errors import InvalidRequest
from sdgen.sampling.samplers import SAMPLERS, Sampler, resolve_sampler


@dataclass(frozen=True)
class ScheduleType:
    """One schedule type as A1111 describes it (``modules/sd_schedulers.py``)."""

    name: str  # what clients send as ``scheduler``, e.g. "karras"
    label: str  # also accepted; the "Schedule type" of the parameters text, e.g. "Karras"
    default_rho: float = -1  # A1111's -1: the schedule has no rho
    need_inner_model: bool = False
    aliases: tuple[str, ...] = ()


AUTOMATIC = ScheduleType("automatic", "Automatic")
# A1111's entries for the schedule types sdgen's registry can name (Sampler.schedule_type is
# the label); a registry entry with a label missing here fails test_server_a1111.
A1111_SCHEDULE_TYPES: dict[str, ScheduleType] = {
    t.label: t for t in (AUTOMATIC, ScheduleType("karras", "Karras", default_rho=7.0))
}


# A1111's own schedule type for a sampler under "Automatic" (v1.9+'s samplers_k_diffusion
# options: DPM++ 2M runs Karras sigmas unless told otherwise), for the samplers sdgen has.
AUTOMATIC_SCHEDULES = {"DPM++ 2M": "Karras"}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def offered_schedule_types() -> list[ScheduleType]:
    """Automatic, then each schedule type the sampler registry names, in its order."""
    labels = dict.fromkeys(s.schedule_type for s in SAMPLERS.values() if s.schedule_type)
    return [AUTOMATIC, *(A1111_SCHEDULE_TYPES[label] for label in labels)]


def find_schedule_type(scheduler: str | None) -> ScheduleType:
    """The schedule type a ``scheduler`` field names (name, label or alias, any case; empty or
    missing: Automatic), or InvalidRequest naming ``scheduler``."""
    if scheduler is None or not scheduler.strip():
        return AUTOMATIC
    offered = offered_schedule_types()
    for schedule in offered:
        if _key(scheduler) in {_key(n) for n in (schedule.name, schedule.label, *schedule.aliases)}:
            return schedule
    names = ", ".join(schedule.name for schedule in offered)
    raise InvalidRequest("scheduler", scheduler, f"one of {names} on sdgen")


def sampler_with_schedule(sampler_name: str, scheduler: str | None) -> str:
    """A1111's sampler and schedule type as one name sdgen's registry knows.

    A sampler name that already carries its schedule type ("DPM++ 2M Karras") keeps it with
    Automatic or that same type, as in A1111. Raises InvalidRequest naming ``scheduler`` for a
    schedule type sdgen lacks or does not have with this sampler, or naming ``sampler`` for an
    unknown sampler.
    """
    schedule = find_schedule_type(scheduler)
    if schedule is AUTOMATIC:
        sampler = resolve_sampler(sampler_name)
        automatic = AUTOMATIC_SCHEDULES.get(sampler.a1111_name)
        if automatic is None or sampler.schedule_type:
            return sampler_name
        return f"{sampler.a1111_name} {automatic}"  # as A1111 runs it
    combined = f"{sampler_name} {schedule.label}"
    try:
        resolve_sampler(combined)
        return combined
    except InvalidRequest:
        sampler = resolve_sampler(sampler_name)  # an unknown sampler is named as such
    if sampler.schedule_type == schedule.label:
        return sampler_name
    raise InvalidRequest("scheduler", scheduler, _offered_with(sampler))


def _offered_with(sampler: Sampler) -> str:
    """The schedule types sdgen has for ``sampler``'s algorithm, e.g. "automatic or karras with
    DPM++ 2M"."""
    labels = [
        s.schedule_type or AUTOMATIC.label
        for s in SAMPLERS.values()
        if s.a1111_name == sampler.a1111_name
    ]
    names = " or ".join(A1111_SCHEDULE_TYPES[label].name for label in labels)
    return f"{names} with {sampler.a1111_name} on sdgen"
