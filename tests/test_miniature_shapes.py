"""The miniature dataset (scenes, pictures, captions) and the detector that reads pictures back."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageFilter

from sdgen.errors import InvalidRequest
from sdgen.miniature.detector import Detection, detect
from sdgen.miniature.shapes import (
    ATTRIBUTES,
    CAPTION_TEMPLATES,
    COLORS,
    SHAPE_KINDS,
    SHAPES,
    Attributes,
    Scene,
    all_attributes,
    all_full_prompts,
    caption,
    format_caption,
    full_caption,
    iter_dataset,
    make_dataset,
    parse_prompt,
    random_scene,
    render,
    stack_images,
)


def _scenes(n: int, seed: int, image_size: int = 64) -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [random_scene(rng, image_size) for _ in range(n)]


def _degrade(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """What a small generative model does: soft edges, a colour shift, a little noise."""
    blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(1)), dtype=np.float64)
    shift = rng.integers(-20, 21, size=3)  # one shift per channel for the whole picture
    noisy = blurred + shift + rng.normal(0, 10, blurred.shape)
    return Image.fromarray(np.clip(np.round(noisy), 0, 255).astype(np.uint8))


def _accuracy(scenes: list[Scene], pictures: list[Image.Image]) -> dict[str, float]:
    """The fraction of pictures whose detected shape, colour and background are the scene's."""
    pairs = [(detect(picture), scene) for picture, scene in zip(pictures, scenes, strict=True)]
    return {
        field: sum(getattr(seen, field) == getattr(scene, field) for seen, scene in pairs)
        / len(pairs)
        for field in ATTRIBUTES
    }


# --- dataset -----------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_samples() -> None:
    first, again = make_dataset(24, seed=7), make_dataset(24, seed=7)
    assert [s.caption for s in first] == [s.caption for s in again]
    assert stack_images(first).tobytes() == stack_images(again).tobytes()
    assert [s.scene for s in first] == [s.scene for s in again]
    other = make_dataset(24, seed=8)
    assert stack_images(other).tobytes() != stack_images(first).tobytes()


def test_sample_does_not_depend_on_dataset_length() -> None:
    short, long = make_dataset(3, seed=1), make_dataset(10, seed=1)
    assert [s.scene for s in short] == [s.scene for s in long[:3]]
    stream = iter_dataset(seed=1, start=8)
    assert [next(stream).caption for _ in range(2)] == [s.caption for s in long[8:]]


def test_stack_images_is_uint8_batch() -> None:
    pixels = stack_images(make_dataset(5, seed=0, image_size=32))
    assert pixels.shape == (5, 32, 32, 3) and pixels.dtype == np.uint8


@pytest.mark.parametrize("image_size", [32, 64, 128])
def test_scenes_respect_the_constraints(image_size: int) -> None:
    for scene in _scenes(2000, seed=image_size, image_size=image_size):
        assert scene.color != scene.background
        assert image_size / 3 <= scene.size <= 2 * image_size / 3
        left, top, right, bottom = scene.box
        assert 0 <= left and 0 <= top and right <= image_size and bottom <= image_size


def test_render_draws_the_scene_colours() -> None:
    for scene in _scenes(50, seed=3):
        pixels = np.asarray(render(scene))
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        assert (border == COLORS[scene.background]).all()
        # The centre of every shape is deep inside it, far from the smoothed edges.
        assert tuple(pixels[int(scene.cy), int(scene.cx)]) == COLORS[scene.color]


def test_templates_match_the_drawing() -> None:
    """The detector's template of each shape covers what render() draws, and its constants."""
    for shape in SHAPES:
        scene = Scene(shape, "white", "black", cx=128.0, cy=128.0, size=160.0)
        drawn = np.asarray(render(scene, 256))[..., 0] > 127
        centres = np.arange(256) + 0.5
        u, v = (centres[None, :] - 48) / 160, (centres[:, None] - 48) / 160
        template = SHAPE_KINDS[shape].covers(u, v)
        assert (drawn & template).sum() / (drawn | template).sum() > 0.98, shape
        grid = (np.arange(400) + 0.5) / 400
        inside = SHAPE_KINDS[shape].covers(grid[None, :], grid[:, None])
        assert inside.mean() == pytest.approx(SHAPE_KINDS[shape].fill, abs=0.01)
        depth = np.broadcast_to(grid[:, None], inside.shape)[inside].mean()
        assert depth == pytest.approx(SHAPE_KINDS[shape].depth, abs=0.01)


def test_every_combination_is_reachable() -> None:
    seen = {scene.attributes for scene in _scenes(5000, seed=11)}
    assert seen == set(all_attributes())
    assert len(seen) == len(SHAPES) * 8 * 7 == 168


def test_random_scene_keeps_the_given_attributes() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        scene = random_scene(rng, shape="triangle", color="white")
        assert (scene.shape, scene.color) == ("triangle", "white") and scene.background != "white"
        scene = random_scene(rng, background="orange")
        assert scene.background == "orange" and scene.color != "orange"


def test_invalid_scenes_name_the_field() -> None:
    with pytest.raises(InvalidRequest, match="background"):
        Scene("circle", "red", "red", 32.0, 32.0, 30.0)
    with pytest.raises(InvalidRequest, match="shape"):
        Scene("hexagon", "red", "blue", 32.0, 32.0, 30.0)
    with pytest.raises(InvalidRequest, match="color"):
        Scene("circle", "grey", "blue", 32.0, 32.0, 30.0)
    with pytest.raises(InvalidRequest, match="scene"):
        render(Scene("circle", "red", "blue", 10.0, 32.0, 30.0))
    with pytest.raises(InvalidRequest, match="image_size"):
        random_scene(np.random.default_rng(0), image_size=8)
    with pytest.raises(InvalidRequest, match="seed"):
        make_dataset(1, seed=-1)


# --- captions ----------------------------------------------------------------------------------


def test_full_captions_parse_back_to_the_scene() -> None:
    full_forms = [name for name in CAPTION_TEMPLATES if name.startswith("full")]
    for scene in _scenes(500, seed=5):
        assert parse_prompt(full_caption(scene)) == scene.attributes
        for name in full_forms:
            assert parse_prompt(format_caption(scene, name)) == scene.attributes, name


def test_full_prompts_cover_every_combination_once() -> None:
    prompts = all_full_prompts()
    assert len(prompts) == len(set(prompts)) == 168
    assert [parse_prompt(prompt) for prompt in prompts] == all_attributes()
    assert "an orange circle on a white background" in prompts
    assert "a red triangle on an orange background" in prompts


def test_captions_never_contradict_the_scene_and_every_kind_occurs() -> None:
    rng = np.random.default_rng(2)
    kinds: Counter[str] = Counter()
    for scene in _scenes(1000, seed=2):
        text = caption(scene, rng)
        asked = parse_prompt(text)
        assert asked.shape == scene.shape, text  # every caption names the shape
        assert asked.color in (None, scene.color), text
        assert asked.background in (None, scene.background), text
        kinds.update(name for name in CAPTION_TEMPLATES if format_caption(scene, name) == text)
    assert set(kinds) == set(CAPTION_TEMPLATES)
    assert 0.33 < kinds["full"] / 1000 < 0.47  # the grammar form is drawn with weight 0.40
    # What the prompt leaves open varies: nothing, the colour, the background, or both.
    probe = Scene("circle", "red", "blue", 32.0, 32.0, 30.0)
    left_open = set()
    for name in kinds:
        asked = parse_prompt(format_caption(probe, name))
        left_open.add((asked.color is None, asked.background is None))
    assert len(left_open) == 4


def test_parse_prompt_reads_partial_and_paraphrased_prompts() -> None:
    assert parse_prompt("a triangle") == Attributes("triangle")
    assert parse_prompt("a red circle") == Attributes("circle", "red")
    assert parse_prompt("a circle on a white background") == Attributes("circle", None, "white")
    assert parse_prompt("Red circle, blue background") == Attributes("circle", "red", "blue")
    assert parse_prompt("a landscape") == Attributes()
    with pytest.raises(InvalidRequest, match="prompt"):
        parse_prompt("a circle and a square")


# --- detector ----------------------------------------------------------------------------------


def test_detector_reads_exact_renders_perfectly() -> None:
    scenes = _scenes(300, seed=21)
    assert _accuracy(scenes, [render(scene) for scene in scenes]) == {
        "shape": 1.0,
        "color": 1.0,
        "background": 1.0,
    }
    rng = np.random.default_rng(22)
    for wanted in all_attributes():
        scene = random_scene(rng, **vars(wanted))
        assert detect(render(scene)) == scene.attributes


@pytest.mark.parametrize("image_size", [64, 32])
def test_detector_reads_degraded_pictures(image_size: int) -> None:
    scenes = _scenes(400, seed=image_size + 1)
    rng = np.random.default_rng(image_size)
    pictures = []
    for scene in scenes:
        picture = render(scene)
        if image_size != 64:
            picture = picture.resize((image_size, image_size), Image.Resampling.BILINEAR)
        pictures.append(_degrade(picture, rng))
    accuracy = _accuracy(scenes, pictures)
    assert accuracy["color"] >= 0.99 and accuracy["background"] >= 0.99, accuracy
    assert accuracy["shape"] >= 0.97, accuracy


@pytest.mark.parametrize("image_size", [48, 256, 512])
def test_detector_reads_any_size(image_size: int) -> None:
    for scene in _scenes(20, seed=image_size):
        picture = render(scene).resize((image_size, image_size), Image.Resampling.BILINEAR)
        assert detect(picture) == scene.attributes
        assert detect(np.asarray(picture)) == scene.attributes


def test_detector_sees_no_shape_on_a_plain_picture() -> None:
    rng = np.random.default_rng(0)
    for name, rgb in COLORS.items():
        assert detect(Image.new("RGB", (64, 64), rgb)) == Detection(background=name)
        noisy = np.clip(np.array(rgb) + rng.normal(0, 10, (32, 32, 3)), 0, 255).astype(np.uint8)
        assert detect(noisy) == Detection(background=name)


def test_detector_reads_nothing_without_a_plain_background() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert detect(noise) == Detection()


def test_detector_rejects_what_is_not_a_picture() -> None:
    with pytest.raises(InvalidRequest, match="image"):
        detect(np.zeros((64, 64), dtype=np.uint8))
    with pytest.raises(InvalidRequest, match="image"):
        detect(np.zeros((64, 64, 3), dtype=np.float32))
    with pytest.raises(InvalidRequest, match="image"):
        detect(Image.new("RGB", (4, 4)))
