"""The miniature model's training command, on a few steps: it exports a loadable model, logs
its losses, and a resumed stage continues exactly where an uninterrupted one would be."""

from __future__ import annotations

import dataclasses

import diffusers
import pytest
import torch

from sdgen.miniature import train
from sdgen.miniature.tokenizer import learn_merges, write_clip_tokenizer

QUICK = train.TrainConfig(
    dataset_size=256,
    clip_steps=6,
    clip_batch=16,
    vae_steps=6,
    vae_batch=8,
    unet_steps=6,
    unet_batch=8,
    checkpoint_every=3,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("training")
    return out, train.train(out, QUICK, torch.device("cpu"))


def test_training_exports_a_model_sdgen_and_diffusers_load(trained):
    from sdgen.models.loader import load_model
    from sdgen.params import GenerationRequest
    from sdgen.pipelines.txt2img import txt2img

    out, folder = trained
    model = load_model(folder, device="cpu")
    assert model.vae_scale_factor == 8 and model.native_size == 64
    assert model.tokenizer.model_max_length == 16
    assert model.vae.config.scaling_factor != 0.18215  # measured from its own latents
    image = txt2img(model, GenerationRequest("a red circle", steps=2, seed=0)).images[0]
    assert image.size == (64, 64)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        folder, safety_checker=None, requires_safety_checker=False
    )
    assert isinstance(pipe.scheduler, diffusers.DDIMScheduler)
    for stage in ("clip", "vae", "unet"):
        lines = (out / "logs" / f"{stage}.csv").read_text().splitlines()
        assert lines[0] == "step,loss,seconds"
        assert (out / "checkpoints" / f"{stage}.pt").is_file()
    weights = sum(f.stat().st_size for f in folder.rglob("*.safetensors"))
    assert weights < 25 * 2**20


def test_a_resumed_stage_equals_an_uninterrupted_one(tmp_path):
    data = train.load_data(dataclasses.replace(QUICK, dataset_size=64))
    tokenizer = write_clip_tokenizer(learn_merges(["a red circle"] * 4), tmp_path / "tok")
    # Stop after 3 of 6 steps (the checkpoint interval), then resume in a fresh process state.
    halves = dataclasses.replace(QUICK, clip_steps=3)
    torch.manual_seed(0)
    train.train_clip(tmp_path / "resumed", data, tokenizer, halves, torch.device("cpu"))
    torch.manual_seed(1)  # a different initialisation: resuming must restore the weights
    resumed, _ = train.train_clip(tmp_path / "resumed", data, tokenizer, QUICK, torch.device("cpu"))
    torch.manual_seed(0)
    straight, _ = train.train_clip(
        tmp_path / "straight", data, tokenizer, QUICK, torch.device("cpu")
    )
    for (name, a), b in zip(
        resumed.state_dict().items(), straight.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_tokenizer_keeps_caption_words_whole(tmp_path):
    from sdgen.miniature.shapes import all_full_prompts

    tokenizer = write_clip_tokenizer(learn_merges(all_full_prompts()), tmp_path)
    ids = tokenizer("a purple triangle on a black background").input_ids
    assert tokenizer.convert_ids_to_tokens(ids)[1:-1] == [
        "a</w>",
        "purple</w>",
        "triangle</w>",
        "on</w>",
        "a</w>",
        "black</w>",
        "background</w>",
    ]
