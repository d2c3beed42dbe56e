"""AUTOMATIC1111's API answers (v1.9/1.10 field names, shared/reference/a1111.md): what the
handler (``serving``) returns and the routes declare. The requests are ``protocol``'s."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class GenerationResponse(BaseModel):
    images: list[str]  # base64 PNGs with the "parameters" chunk
    parameters: dict[str, Any]  # the request as received, defaults filled in
    info: str  # a JSON string: seed, all_seeds, infotexts...


class PngInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: ProgressState
    current_image: str | None = None
    textinfo: str | None = None
    current_task: str | None = None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(BaseModel):
    """``GET /sdapi/v1/schedulers``: one schedule type, as A1111 describes it."""

    name: str
    label: str
    aliases: list[str] | None  # A1111 sends null where a type has none
    default_rho: float
    need_inner_model: bool


class SDModelItem(BaseModel):
    title: str
    model_name: str
    hash: str | None
    sha256: str | None
    filename: str
    config: str | None = None
