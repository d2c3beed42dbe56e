"""The request type's validation: every refusal names the field and what is allowed."""

from __future__ import annotations

import math

import pytest
from PIL import Image

from sdgen.errors import InvalidRequest
from sdgen.params import GenerationRequest, InputPicture, check_size
from sdgen.sampling.samplers import SAMPLERS, resolve_sampler


@pytest.mark.parametrize(
    ("changes", "field", "hint"),
    [
        ({"steps": 0}, "steps", "from 1"),
        ({"steps": 2.5}, "steps", "whole number"),
        ({"num_images": 0}, "num_images", "from 1"),
        ({"guidance_scale": math.nan}, "guidance_scale", "finite"),
        ({"guidance_scale": math.inf}, "guidance_scale", "finite"),
        ({"sampler": "euler_x"}, "sampler", "dpmpp_2m_karras"),
        ({"precision": "fp8"}, "precision", "fp16"),
        ({"seed": -1}, "seed", "from 0"),
        ({"width": 0}, "width", "from 1"),
        ({"prompt": ["a", "b"], "negative_prompt": ["x"]}, "negative_prompt", "one per prompt"),
        ({"prompt": 3}, "prompt", "string"),
    ],
)
def test_bad_values_are_refused_by_name(changes, field, hint):
    fields = {"prompt": "a cat", **changes}
    with pytest.raises(InvalidRequest) as caught:
        GenerationRequest(**fields)
    assert caught.value.field == field
    assert field in str(caught.value) and hint in str(caught.value)


def test_size_must_be_a_multiple_of_the_latent_factor():
    check_size(512, 768, 8)
    with pytest.raises(InvalidRequest, match=r"width: 500 .*multiple of 8.*496 or 504"):
        check_size(500, 512, 8)
    with pytest.raises(InvalidRequest, match=r"height: 33 .*multiple of 2"):
        check_size(32, 33, 2)


@pytest.mark.parametrize(
    ("spelling", "name"),
    [
        ("Euler a", "euler_a"),
        ("euler A", "euler_a"),
        ("DPM++ 2M Karras", "dpmpp_2m_karras"),
        ("dpm++ 2m", "dpmpp_2m"),
        ("PLMS", "pndm"),
        ("UniPC", "unipc"),
        ("heun", "heun"),
        ("LMS", "lms"),
        ("DDIM", "ddim"),
    ],
)
def test_a1111_sampler_names_in_any_case(spelling, name):
    assert resolve_sampler(spelling).name == name
    assert GenerationRequest("x", sampler=spelling).sampler == name


def test_every_registered_sampler_builds_its_scheduler(sd1_model):
    from sdgen.sampling.samplers import make_scheduler

    for sampler in SAMPLERS.values():
        scheduler = make_scheduler(sampler, sd1_model.scheduler_config)
        assert type(scheduler).__name__ == sampler.scheduler_class
        assert scheduler.config.beta_schedule == "scaled_linear"  # the model's schedule carried
    karras = make_scheduler(SAMPLERS["dpmpp_2m_karras"], sd1_model.scheduler_config)
    assert karras.config.use_karras_sigmas


def test_seed_is_drawn_once_and_prompt_lists_order_images():
    request = GenerationRequest(["a", "b"], negative_prompt=["x", "y"], num_images=2)
    assert request.seed is None
    seeded = request.with_seed()
    assert seeded.seed is not None and seeded.with_seed().seed == seeded.seed
    assert seeded.image_prompts() == [("a", "x"), ("a", "x"), ("b", "y"), ("b", "y")]
    assert GenerationRequest.from_dict(seeded.to_dict()) == seeded


def test_unknown_fields_are_refused_when_read_back():
    with pytest.raises(InvalidRequest, match="cfg"):
        GenerationRequest.from_dict({"prompt": "x", "cfg": 7})


def test_strength_defaults_to_diffusers_default_for_the_mode(sd1_model):
    """img2img 0.8, inpainting 1.0 (diffusers' pipelines'): the CLI, API and library agree.
    The default is taken when the request is resolved, so a copy that changes the mode gets
    its own mode's default."""
    from sdgen.pipelines.stages import resolve_request

    picture = InputPicture.from_image(Image.new("RGB", (32, 32)))
    mask = InputPicture.from_image(Image.new("L", (32, 32)))
    img2img = GenerationRequest("x", init_image=picture)
    inpaint = img2img.replace(mask=mask)
    assert img2img.strength is None and inpaint.default_strength == 1.0
    assert resolve_request(sd1_model, img2img).strength == 0.8
    assert resolve_request(sd1_model, inpaint).strength == 1.0
    assert resolve_request(sd1_model, inpaint.replace(mask=None)).strength == 0.8
    assert resolve_request(sd1_model, inpaint.replace(strength=0.5)).strength == 0.5
