"""The denoising as pictures and videos: ``--save-steps``, ``--every``, ``--preview`` and
``--save-intermediates`` as a user sees them, and the writers underneath."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from helpers import max_pixel_diff, mean_pixel_diff
from PIL import Image

from sdgen.cli import main
from sdgen.errors import InvalidRequest, SdgenError
from sdgen.media.video import StepFrames, check_video_path, save_frames, write_video
from sdgen.sampling.loop import Step


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def generate(capsys, tmp_path: Path, model: Path | None, *extra) -> tuple[list[Path], str]:
    """``sdgen generate`` of 6 steps at 64x64 (the embedded model when ``model`` is None)."""
    args = ["generate", "a red circle", "--steps", 6, "--seed", 1, "--device", "cpu"]
    if model is not None:
        args += ["--model", model, "--width", 64, "--height", 64]
    code, out, err = run(capsys, *args, "--out", tmp_path / "out", *extra)
    assert code == 0, err
    return [Path(line) for line in out.splitlines()], err


def count_frames(path: Path) -> int:
    """Frames decoded back: PyAV for .mp4; Pillow for .gif and .webp (PyAV has no animated WebP)."""
    if path.suffix == ".mp4":
        with av.open(str(path)) as container:
            return sum(1 for _ in container.decode(video=0))
    with Image.open(path) as image:
        return image.n_frames


def correlation(a: Image.Image, b: Image.Image) -> float:
    x, y = (np.asarray(p, dtype=np.float64).ravel() for p in (a, b))
    return float(np.corrcoef(x, y)[0, 1])


@pytest.mark.parametrize("suffix", [".mp4", ".gif", ".webp"])
@pytest.mark.parametrize(("every", "frames"), [(2, 3), (4, 2)])  # steps 2,4,6 / steps 4 and 6
def test_video_has_one_frame_every_k_steps_and_the_last(
    capsys, tmp_path, tiny_sd1, suffix, every, frames
):
    video = tmp_path / "videos" / f"denoise{suffix}"  # its folder does not exist yet
    args = ["--save-steps", video, "--every", every]  # the model's own PLMS, which warms up
    paths, _ = generate(capsys, tmp_path, tiny_sd1, *args)
    assert paths[-1] == video and paths[0].suffix == ".png"
    assert count_frames(video) == frames
    if suffix == ".mp4":
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264" and stream.format.name == "yuv420p"
            assert (stream.width, stream.height) == (64, 64)
    else:
        with Image.open(video) as image:
            assert image.size == (64, 64)


@pytest.mark.parametrize("sampler", ["pndm", "ddim", "euler_a", "heun"])
def test_intermediates_are_one_png_per_step_ending_on_the_final_picture(
    capsys, tmp_path, tiny_sd1, sampler
):
    steps = tmp_path / "steps"
    paths, _ = generate(
        capsys, tmp_path, tiny_sd1, "--sampler", sampler, "--save-intermediates", steps
    )
    names = sorted(p.name for p in steps.iterdir())
    assert [p.name for p in paths[1:]] == names  # printed after the picture, in step order
    # One PNG per step as the user counts them, though PLMS runs steps + 1 model calls (it
    # repeats its first timestep) and Heun two per step.
    assert names == [f"step-{n:03d}.png" for n in range(1, 7)]
    with Image.open(paths[0]) as final, Image.open(steps / names[-1]) as last:
        final, last = final.convert("RGB"), last.convert("RGB")
        # The last x0 is the final latents up to the last step's leftover noise term
        # (sqrt(1 - alpha_bar) = 0.03 for DDIM/PLMS, whose final alpha_bar is 0.99915, not 1;
        # 0 for Euler a). Measured: max 1/255, mean 0.05 for pndm and ddim; 0 for euler_a.
        assert max_pixel_diff(final, last) <= 2
        assert mean_pixel_diff(final, last) < 0.3


def test_latents_preview_frames_have_the_output_size(capsys, tmp_path, tiny_sd1):
    steps = tmp_path / "steps"
    args = ["--width", 64, "--height", 48, "--preview", "latents", "--save-intermediates", steps]
    args += ["--sampler", "ddim"]
    code, out, err = run(
        capsys, "generate", "a red circle", "--model", tiny_sd1, "--steps", 6, "--seed", 1,
        "--device", "cpu", "--out", tmp_path / "out", *args,
    )  # fmt: skip
    assert code == 0, err
    frames = sorted(steps.iterdir())
    assert len(frames) == 6
    for path in frames:
        with Image.open(path) as frame:
            assert frame.size == (64, 48)  # the tiny VAE's factor is 2: 32x24 latents upsampled


def test_latents_preview_resembles_the_vae_decode(capsys, tmp_path):
    # The embedded trained model: a random VAE's decoder has no linear relation to its encoder.
    # Its last step's latents are the final latents, so the last frame approximates the final
    # picture (their VAE decode). Measured: correlation 0.66 here (PLMS, seed 1; 0.76 with DDIM),
    # 0.64 on average over 16 pictures of 20 steps: a linear map of an 8x8 latent grid is a sketch.
    steps = tmp_path / "steps"
    paths, _ = generate(
        capsys, tmp_path, None, "--preview", "latents", "--save-intermediates", steps
    )
    with Image.open(paths[0]) as final, Image.open(paths[-1]) as last:
        assert last.size == final.size == (64, 64)
        assert correlation(final.convert("RGB"), last.convert("RGB")) > 0.5


def test_bad_video_suffix_exits_2_naming_save_steps(capsys, tmp_path, tiny_sd1):
    code, out, err = run(
        capsys, "generate", "x", "--model", tiny_sd1, "--out", tmp_path / "out",
        "--save-steps", tmp_path / "denoise.avi",
    )  # fmt: skip
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "save_steps" in err and ".mp4, .gif or .webp" in err
    assert not (tmp_path / "out").exists()  # refused before generating


def test_every_zero_exits_2(capsys, tmp_path, tiny_sd1):
    code, out, err = run(
        capsys, "generate", "x", "--model", tiny_sd1, "--out", tmp_path / "out",
        "--save-steps", tmp_path / "denoise.gif", "--every", 0,
    )  # fmt: skip
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "every" in err


def test_save_steps_never_replaces_a_file(capsys, tmp_path, tiny_sd1):
    video = tmp_path / "denoise.gif"
    video.write_bytes(b"an earlier run's video")
    code, out, err = run(
        capsys, "generate", "x", "--model", tiny_sd1, "--out", tmp_path / "out",
        "--save-steps", video,
    )  # fmt: skip
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "save_steps" in err and "where no file is yet" in err
    assert video.read_bytes() == b"an earlier run's video"
    assert not (tmp_path / "out").exists()


def test_mp4_without_pyav_tells_how_to_install_it(capsys, monkeypatch, tmp_path, tiny_sd1):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError
    code, _, err = run(
        capsys, "generate", "x", "--model", tiny_sd1, "--out", tmp_path / "out",
        "--save-steps", tmp_path / "denoise.mp4",
    )  # fmt: skip
    assert code == 2 and 'pip install "sdgen[video]"' in err
    frames = [Image.new("RGB", (8, 8), (255, 0, 0))] * 2
    with pytest.raises(SdgenError, match=r"sdgen\[video\]"):
        write_video(frames, tmp_path / "direct.mp4")
    assert count_frames(write_video(frames, tmp_path / "still.gif")) == 1  # GIF needs only Pillow


def test_check_video_path():
    for name in ("a.mp4", "b.GIF", "c/d.webp"):
        check_video_path(Path(name))
    for name in ("a.avi", "b", "c.mp4.png"):
        with pytest.raises(InvalidRequest) as raised:
            check_video_path(Path(name))
        assert raised.value.field == "save_steps" and raised.value.value == name


def test_mp4_pads_odd_sizes_and_gif_webp_keep_them(tmp_path):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)]
    frames = [Image.new("RGB", (33, 17), colour) for colour in colours]
    for suffix, size in ((".mp4", (34, 18)), (".gif", (33, 17)), (".webp", (33, 17))):
        path = write_video(frames, tmp_path / "new" / f"v{suffix}", fps=4)
        assert count_frames(path) == 5
        if suffix == ".mp4":
            with av.open(str(path)) as container:
                decoded = [f.to_image() for f in container.decode(video=0)]
            assert decoded[0].size == size
            assert decoded[2].getpixel((33, 17))[2] > 200  # the padding repeats the edge: blue
        else:
            with Image.open(path) as image:
                assert image.size == size


def test_save_frames_numbers_pngs(tmp_path):
    frames = [Image.new("RGB", (4, 4), (i, i, i)) for i in (0, 100, 200)]
    paths = save_frames(frames, tmp_path / "a" / "b")
    assert [p.name for p in paths] == ["step-001.png", "step-002.png", "step-003.png"]
    with Image.open(paths[1]) as image:
        assert image.getpixel((0, 0)) == (100, 100, 100)


def test_step_frames_keeps_cpu_copies_of_one_image_every_k_steps():
    recorder = StepFrames(every=3, preview="latents", image_index=1)
    latents = torch.zeros(2, 4, 3, 3)
    for index in range(7):
        latents.fill_(index)  # in place, as a scheduler may reuse its buffers
        latents[0] = -1
        recorder(Step(index, 7, 999.0 - index, latents, lambda: torch.full_like(latents, 0.5)))
    assert recorder.indices == [2, 5, 6]
    assert [float(t.mean()) for t in recorder.tensors] == [2.0, 5.0, 6.0]
    assert recorder.tensors[0].shape == (4, 3, 3) and recorder.tensors[0].device.type == "cpu"
    x0 = StepFrames(every=10)
    x0(Step(0, 1, 1.0, latents, lambda: torch.full_like(latents, 0.5)))
    assert x0.indices == [0] and float(x0.tensors[0].mean()) == 0.5
    with pytest.raises(InvalidRequest, match="preview"):
        StepFrames(preview="vae")
    with pytest.raises(InvalidRequest, match="every"):
        StepFrames(every=0)


def test_video_module_imports_pyav_only_when_writing():
    code = "import sys, sdgen, sdgen.media.video; assert 'av' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
