"""The optional safety checker: flags equal diffusers' pipeline's, black pictures, metadata, CLI.

A tiny random ``StableDiffusionSafetyChecker`` stands in for a real one (same classes and folder
layout). Its concept embeddings and thresholds are set so that it flags every picture, none, or
exactly one chosen picture, so the tests know what it must decide without trusting the code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from helpers import max_pixel_diff
from PIL import Image

from sdgen.cli import main
from sdgen.errors import ModelNotFound
from sdgen.media.metadata import parse_parameters
from sdgen.models.safety_checker import BATCH_SIZE, load_safety_checker
from sdgen.params import GenerationRequest
from sdgen.pipelines.stages import GenerationResult

REPO_ID = "sdgen-tests/tiny-safety-checker"
REVISION = "fedcba9876543210fedcba9876543210fedcba98"
NEVER, ALWAYS = 2.0, -2.0  # thresholds: a cosine similarity is never above 2, always above -2
GENERATE = ["--steps", 2, "--width", 64, "--height", 64, "--seed", 1, "--device", "cpu"]


def tiny_checker():
    """A random StableDiffusionSafetyChecker on 32 px pictures and its image processor."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(0)
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    config = CLIPConfig(
        text_config=tower,
        vision_config=dict(image_size=32, patch_size=8, **tower),
        projection_dim=16,
    )
    model = StableDiffusionSafetyChecker(config).eval()
    processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    return model, processor


def save_checker(folder: Path, model, processor) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return folder


def build_checker(folder: Path, flags: str) -> Path:
    """A checker that flags ``all`` pictures or ``none``, whatever they show."""
    model, processor = tiny_checker()
    model.concept_embeds_weights.data.fill_(ALWAYS if flags == "all" else NEVER)
    model.special_care_embeds_weights.data.fill_(NEVER)
    return save_checker(folder, model, processor)


def build_checker_flagging(folder: Path, pictures: list[Image.Image], index: int) -> Path:
    """A checker that flags ``pictures[index]`` and none of the others.

    Its first concept embedding points from the others' mean embedding towards that picture's, with
    the threshold halfway between that picture's cosine and the highest of the others'.
    """
    model, processor = tiny_checker()
    pixels = processor([p.convert("RGB") for p in pictures], return_tensors="pt").pixel_values
    with torch.no_grad():
        embeds = model.visual_projection(model.vision_model(pixels)[1])  # (N, projection_dim)
    units = torch.nn.functional.normalize(embeds)
    others = torch.cat([units[:index], units[index + 1 :]])
    concept = units[index] - others.mean(0)
    cosines = units @ torch.nn.functional.normalize(concept, dim=0)
    highest_other = torch.cat([cosines[:index], cosines[index + 1 :]]).max()
    assert cosines[index] - highest_other > 0.01, "the pictures are too alike to tell apart"
    model.concept_embeds.data[0] = concept
    model.concept_embeds_weights.data.fill_(NEVER)
    model.concept_embeds_weights.data[0] = (cosines[index] + highest_other) / 2
    model.special_care_embeds_weights.data.fill_(NEVER)
    return save_checker(folder, model, processor)


def noise_pictures(n: int, seed: int = 0, size: tuple[int, int] = (64, 64)) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)) for _ in range(n)
    ]


def as_result(pictures: list[Image.Image]) -> GenerationResult:
    return GenerationResult(request=GenerationRequest(prompt="a cat", seed=1), images=pictures)


def is_black(picture: Image.Image) -> bool:
    return int(np.asarray(picture).max()) == 0


def run(capsys, *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def read_png(path: Path) -> tuple[Image.Image, dict[str, str], dict]:
    """The picture, its A1111 parameters and the sdgen JSON chunk's "extra"."""
    with Image.open(path) as image:
        fields = parse_parameters(image.text["parameters"])
        extra = json.loads(image.text["sdgen"])["extra"]
        return image.convert("RGB"), fields, extra


@pytest.fixture(scope="module")
def diffusers_pipeline(tiny_sd1: Path):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        tiny_sd1, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_decision(pipe, folder: Path, pictures: list[Image.Image]):
    """diffusers' (pictures, nsfw_content_detected) for these decoded pictures, as its __call__."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    pipe.register_modules(
        safety_checker=StableDiffusionSafetyChecker.from_pretrained(folder).eval(),
        feature_extractor=CLIPImageProcessor.from_pretrained(folder),
    )
    # The VAE's output that decodes to exactly these pictures: (N, 3, H, W) in [-1, 1].
    arrays = np.stack([np.asarray(p, dtype=np.float32) for p in pictures])
    image = torch.from_numpy(arrays).permute(0, 3, 1, 2) / 255 * 2 - 1
    image, flags = pipe.run_safety_checker(image, "cpu", torch.float32)
    denormalize = [not flag for flag in flags]  # as __call__: flagged pictures stay black
    return pipe.image_processor.postprocess(image, "pil", do_denormalize=denormalize), flags


@pytest.mark.parametrize("flags", ["all", "none", "one"])
def test_flags_and_pictures_equal_the_diffusers_pipeline(flags, tmp_path, diffusers_pipeline):
    pictures = noise_pictures(BATCH_SIZE + 2)  # two forward passes in the checker
    if flags == "one":
        folder = build_checker_flagging(tmp_path / "checker", pictures, 5)
    else:
        folder = build_checker(tmp_path / "checker", flags)
    checker = load_safety_checker(folder)
    expected_pictures, expected_flags = diffusers_decision(diffusers_pipeline, folder, pictures)
    wanted = {"all": [True] * 18, "none": [False] * 18, "one": [i == 5 for i in range(18)]}
    assert expected_flags == wanted[flags]  # the checker was built right

    assert checker.check(pictures) == expected_flags
    result = as_result(pictures)
    checked, flagged = checker.apply(result)
    assert flagged == expected_flags
    assert checked.request == result.request and result.images == pictures  # a new result
    for picture, expected, original, flag in zip(
        checked.images, expected_pictures, pictures, flagged, strict=True
    ):
        assert picture.size == original.size and picture.mode == "RGB"
        assert max_pixel_diff(picture, expected) == 0
        assert is_black(picture) == flag
        assert (picture is original) != flag


def test_pictures_of_any_size_and_none(tmp_path):
    checker = load_safety_checker(build_checker(tmp_path, "all"))
    pictures = noise_pictures(1, size=(48, 32)) + noise_pictures(1, size=(40, 72))
    assert checker.check([]) == []
    checked, flagged = checker.apply(as_result(pictures))
    assert flagged == [True, True]
    assert [p.size for p in checked.images] == [(48, 32), (40, 72)]
    assert all(is_black(p) for p in checked.images)


def generate(capsys, tiny_sd1: Path, out: Path, *extra: object) -> list[Path]:
    code, stdout, err = run(
        capsys,
        "generate",
        "a cat",
        "--model",
        tiny_sd1,
        "--num-images",
        2,
        *GENERATE,
        "--out",
        out,
        *extra,
    )
    assert code == 0, err
    return [Path(line) for line in stdout.splitlines()]


def no_loading(*args, **kwargs):
    raise AssertionError("a safety checker was loaded")


def test_generate_blacks_out_flagged_pictures_and_says_so(capsys, monkeypatch, tmp_path, tiny_sd1):
    # Off by default: nothing is loaded, nothing said.
    monkeypatch.setattr("sdgen.models.safety_checker.load_safety_checker", no_loading)
    plain = [read_png(path) for path in generate(capsys, tiny_sd1, tmp_path / "plain")]
    assert all("NSFW" not in fields and "NSFW" not in extra for _, fields, extra in plain)
    monkeypatch.undo()
    pictures = [picture for picture, _, _ in plain]
    checkers = {
        "all": build_checker(tmp_path / "all", "all"),
        "none": build_checker(tmp_path / "none", "none"),
        "second": build_checker_flagging(tmp_path / "second", pictures, 1),
    }
    wanted = {"all": [True, True], "none": [False, False], "second": [False, True]}
    for name, folder in checkers.items():
        paths = generate(capsys, tiny_sd1, tmp_path / f"out-{name}", "--safety-checker", folder)
        assert [path.name for path in paths] == ["0000000001.png", "0000000002.png"]
        for path, original, flag in zip(paths, pictures, wanted[name], strict=True):
            picture, fields, extra = read_png(path)
            assert picture.size == (64, 64)
            assert fields["NSFW"] == str(flag) and extra == {"NSFW": flag}, name
            if flag:
                assert is_black(picture), name
            else:
                assert max_pixel_diff(picture, original) == 0, name


def test_generate_with_a_missing_checker_exits_2_naming_the_field(capsys, tmp_path, tiny_sd1):
    missing = tmp_path / "no-such-checker"
    code, out, err = run(
        capsys,
        "generate",
        "a cat",
        "--model",
        tiny_sd1,
        *GENERATE,
        "--out",
        tmp_path / "out",
        "--safety-checker",
        missing,
    )
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"sdgen: error: safety_checker: '{missing}'")
    assert not (tmp_path / "out").exists()  # no unchecked picture is saved


def fake_hub(monkeypatch, cache: Path) -> None:
    """Point huggingface_hub at ``cache`` (the hub/ folder of HF_HOME), offline."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_a_cached_hub_id_loads_offline(monkeypatch, tmp_path):
    pictures = noise_pictures(4, seed=1)
    folder = build_checker_flagging(tmp_path / "checker", pictures, 2)
    # The layout huggingface_hub writes: refs/main names a snapshot folder of the files.
    repo = tmp_path / "hub" / f"models--{REPO_ID.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / REVISION)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    fake_hub(monkeypatch, tmp_path / "hub")
    assert load_safety_checker(REPO_ID).check(pictures) == [False, False, True, False]


def test_a_missing_hub_id_fails_fast_with_what_to_do(capsys, monkeypatch, tmp_path, tiny_sd1):
    fake_hub(monkeypatch, tmp_path / "hub")
    code, out, err = run(
        capsys,
        "generate",
        "a cat",
        "--model",
        tiny_sd1,
        *GENERATE,
        "--out",
        tmp_path / "out",
        "--safety-checker",
        "someone/not-here",
    )
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("sdgen: error: safety_checker: 'someone/not-here'")
    assert "HF_HUB_OFFLINE" in err and "--safety-checker" in err


def test_a_pipeline_folder_with_a_checker_loads_it(tmp_path, tiny_sd1):
    pictures = noise_pictures(3, seed=2)
    folder = build_checker_flagging(tmp_path / "checker", pictures, 0)
    pipeline = tmp_path / "pipeline"
    shutil.copytree(tiny_sd1, pipeline)
    shutil.copytree(folder, pipeline / "safety_checker")
    shutil.copytree(folder, pipeline / "feature_extractor")
    (pipeline / "safety_checker" / "preprocessor_config.json").unlink()
    (pipeline / "feature_extractor" / "model.safetensors").unlink()
    (pipeline / "feature_extractor" / "config.json").unlink()
    assert load_safety_checker(pipeline).check(pictures) == [True, False, False]


def test_a_wrong_folder_names_the_field_and_what_is_missing(tmp_path, tiny_sd1):
    with pytest.raises(ModelNotFound, match="^safety_checker: '/no/such/folder'"):
        load_safety_checker("/no/such/folder")
    with pytest.raises(ModelNotFound, match="^safety_checker: .* no config.json"):
        load_safety_checker(tmp_path)
    with pytest.raises(ModelNotFound, match="^safety_checker: .* no config.json"):
        load_safety_checker(tiny_sd1)  # a pipeline without a safety checker
    with pytest.raises(ModelNotFound, match="^safety_checker: .* expected diffusers' Stable"):
        load_safety_checker(tiny_sd1 / "text_encoder")
    folder = build_checker(tmp_path / "checker", "none")
    weightless = shutil.copytree(folder, tmp_path / "weightless")
    (weightless / "model.safetensors").rename(weightless / "pytorch_model.bin")
    with pytest.raises(ModelNotFound, match="^safety_checker: .* no safetensors weights"):
        load_safety_checker(weightless)
    unprocessed = shutil.copytree(folder, tmp_path / "unprocessed")
    (unprocessed / "preprocessor_config.json").unlink()
    with pytest.raises(ModelNotFound, match="^safety_checker: .* no image processor config"):
        load_safety_checker(unprocessed)
