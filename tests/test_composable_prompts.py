"""A1111's composable prompts (``a AND b :0.5``): the parts A1111's prompt_parser cuts, and
latents against diffusers' pipeline whose UNet's text prediction is replaced by A1111's
combination of the parts' predictions (``combine_denoised``)."""

from __future__ import annotations

import pytest
import torch
from helpers import batched_pictures, diffusers_pipeline, max_pixel_diff
from test_prompt_editing import REQUEST as EDITING_REQUEST

from sdgen.conditioning.composition import prompt_parts
from sdgen.errors import InvalidRequest
from sdgen.params import GenerationRequest
from sdgen.pipelines.generate import generate

# Worked by hand from A1111's re_AND and re_weight (get_multicond_prompt_list): the spec.
A1111_PARTS = {
    "a cat": None,  # one text, no weight: read as written
    "a cat AND a dog": (("a cat", 1.0), (" a dog", 1.0)),
    "a cat :1.5 AND a dog:0.5": (("a cat", 1.5), (" a dog", 0.5)),
    "a cat:-1": (("a cat", -1.0),),
    "a cat: .5 ": (("a cat", 0.5),),
    "a cat:1": (("a cat", 1.0),),  # a weight of 1 written: the text without it
    "ANDROID AND": (("ANDROID", 1.0), ("", 1.0)),  # AND as a whole word only
    "a cat and a dog": None,  # in capitals only
    "(a cat:1.2)": None,  # an emphasis weight is not a part's
    "[a:b:3]": None,
    "a cat:2\nmore": None,  # no weight over a line break
    "a cat:x": None,
}


@pytest.mark.parametrize(("prompt", "parts"), A1111_PARTS.items())
def test_parts_are_a1111s(prompt, parts):
    assert prompt_parts(prompt) == parts


REQUEST = EDITING_REQUEST.replace(negative_prompt="green")  # euler, 6 steps, 32 x 32, seed 5


def _final_latents(model, request) -> torch.Tensor:
    """sdgen's latents after the last step, (B, 4, h, w)."""
    final = {}
    generate(model, request, callback=lambda step: final.update(latents=step.latents))
    return final["latents"]


def _composed_latents(folder, parts, negative: str, guidance_scale: float) -> torch.Tensor:
    """diffusers' pipeline (euler, 6 steps, seed 5) whose UNet, called with [negative; text],
    returns [u; u + sum_k (c_k - u) w_k] (u, c_k: its predictions for the negative prompt and
    each part): the pipeline's guidance then makes A1111's u + sum_k (c_k - u) w_k g."""
    from sdgen.sampling.samplers import make_scheduler, resolve_sampler

    pipe = diffusers_pipeline(folder)
    pipe.scheduler = make_scheduler(resolve_sampler("euler"), pipe.scheduler.config)
    texts = [text for text, _ in parts]
    embeds, negative_embeds = pipe.encode_prompt(texts, "cpu", 1, True, [negative] * len(texts))
    unet_forward = pipe.unet.forward

    def composed(sample, timestep, encoder_hidden_states, **kwargs):
        rows = torch.cat([sample[:1]] * (len(parts) + 1))
        states = torch.cat([negative_embeds[:1], embeds])
        uncond, *predictions = unet_forward(rows, timestep, states, **kwargs)[0].chunk(
            len(parts) + 1
        )
        text = uncond.clone()
        for prediction, (_, weight) in zip(predictions, parts, strict=True):
            text += (prediction - uncond) * weight
        return (torch.cat([uncond, text]),)

    pipe.unet.forward = composed
    return pipe(
        prompt=texts[0],
        negative_prompt=negative,
        num_inference_steps=6,
        guidance_scale=guidance_scale,
        width=32,
        height=32,
        generator=torch.Generator().manual_seed(5),
        output_type="latent",
    ).images


def test_latents_are_a1111s_combination_of_the_parts(tiny_sd1, sd1_model):
    """Two weighted parts: diffusers' pipeline with A1111's combination of its UNet's
    predictions gives the same latents; the prompt read plainly (AND as a word), or either
    part alone, gives others."""
    prompt = "a red circle :1.3 AND a blue square:0.6"
    latents = _final_latents(sd1_model, REQUEST.replace(prompt=prompt))
    parts = (("a red circle", 1.3), (" a blue square", 0.6))
    reference = _composed_latents(tiny_sd1, parts, "green", 7.5)
    assert float((latents - reference).abs().max()) <= 1e-4
    others = [
        REQUEST.replace(prompt=prompt, emphasis="off"),
        REQUEST.replace(prompt="a red circle"),
        REQUEST.replace(prompt="a blue square"),
    ]
    for other in others:
        assert float((_final_latents(sd1_model, other) - latents).abs().max()) > 1e-2


@pytest.mark.parametrize(
    ("prompt", "guidance", "plain_guidance"),
    [
        ("a red circle AND a red circle", 3.0, 6.0),  # two pulls of the same part
        ("a red circle :0.5", 8.0, 4.0),  # half a pull
        ("a red circle AND a red circle", 1.0, 2.0),  # at 1 the parts' sum still guides
    ],
)
def test_weights_scale_the_guidance(sd1_model, prompt, guidance, plain_guidance):
    """u + sum_k w_k g (c - u) for one text c is plain guidance at scale g * sum_k w_k."""
    composed = _final_latents(sd1_model, REQUEST.replace(prompt=prompt, guidance_scale=guidance))
    plain = _final_latents(sd1_model, REQUEST.replace(guidance_scale=plain_guidance))
    assert float((composed - plain).abs().max()) <= 1e-4


def test_composed_requests_batched_with_others_get_their_pictures_alone(sd1_model):
    """Across requests (the engine's batching) and within one (a prompt list whose prompts
    have 2 parts and 1: the shorter padded with weight 0)."""
    requests = [
        REQUEST.replace(prompt="a red circle AND a blue square :0.7"),
        REQUEST,
        REQUEST.replace(prompt="a [red|green] circle AND grey", seed=9, guidance_scale=1.0),
    ]
    alone = [generate(sd1_model, r).images[0] for r in requests]
    batched = batched_pictures(sd1_model, requests)
    for picture, own in zip(batched, alone, strict=True):
        assert max_pixel_diff(picture, own) <= 1
    listed = generate(sd1_model, REQUEST.replace(prompt=(requests[0].prompt, "a red circle")))
    assert max_pixel_diff(listed.images[0], alone[0]) <= 1
    second = generate(sd1_model, REQUEST.replace(seed=6)).images[0]  # image 1: seed + 1
    assert max_pixel_diff(listed.images[1], second) <= 1


def test_an_inpainting_unet_gets_its_extra_channels_for_every_part(inpaint_folder):
    from PIL import Image

    from sdgen.models.loader import load_model
    from sdgen.params import InputPicture

    model = load_model(inpaint_folder, device="cpu")
    picture = Image.new("RGB", (32, 32), (200, 40, 40))
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 24, 24))
    request = REQUEST.replace(
        init_image=InputPicture.from_image(picture),
        mask=InputPicture.from_image(mask),
        guidance_scale=6.0,
    )
    plain = _final_latents(model, request)
    composed = request.replace(prompt="a red circle AND a red circle", guidance_scale=3.0)
    assert float((_final_latents(model, composed) - plain).abs().max()) <= 1e-4


def test_parts_are_read_and_checked_one_by_one(sd1_model):
    """Each part is its own text: a part's weight is checked, tokens are counted per part,
    and parts of other chunk counts are padded with their last vector (A1111)."""
    from sdgen.conditioning.prompts import encode_prompts
    from sdgen.conditioning.request_texts import truncation_warnings

    with pytest.raises(InvalidRequest, match=r"prompt\[1\]: 'a dog :1000'.*from -100 to 100"):
        GenerationRequest(("x", "a cat AND a dog :1000"), emphasis="original")
    assert GenerationRequest("a dog :1000", emphasis="off").prompt == "a dog :1000"
    with pytest.raises(InvalidRequest, match=r"prompt: '33 parts'.*at most 32 \(cut at AND\)"):
        GenerationRequest(" AND ".join(["x"] * 33), emphasis="original")
    assert GenerationRequest(" AND ".join(["x"] * 32), emphasis="original")
    half = " ".join(["red"] * 50)
    long = REQUEST.replace(prompt=f"{half} AND {half}")
    assert truncation_warnings(sd1_model.tokenizer, long) == []
    assert truncation_warnings(sd1_model.tokenizer, long.replace(emphasis="off")) == [
        "prompt: 103 tokens, truncated to 77"
    ]
    embeddings = encode_prompts(
        sd1_model.tokenizer,
        sd1_model.text_encoder,
        [(f"a cat AND {half} {half}", "")],
        6,
        guided=False,
        device="cpu",
        dtype=torch.float32,
        emphasis="original",
        long_prompt="chunk",
    )
    negative, short, chunked = embeddings.rows  # the negative read at any guidance scale
    assert embeddings.part_weights == ((1.0,), (1.0,))
    assert negative.shape[0] == 77 and short.shape[0] == chunked.shape[0] == 154
    assert torch.equal(short[77:], short[76:77].expand(77, -1))
