"""``sdgen generate`` and ``sdgen reproduce`` as a user sees them: exit codes, stdout, PNGs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import max_pixel_diff
from PIL import Image

from sdgen.cli import main
from sdgen.media.metadata import parse_parameters, read_request
from sdgen.params import GenerationRequest


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_writes_pngs_in_order_with_a1111_metadata(capsys, tmp_path, tiny_sd1):
    code, out, err = run(
        capsys,
        "generate",
        "a red circle, big",
        "--negative-prompt",
        "blue",
        "--model",
        tiny_sd1,
        "--seed",
        41,
        "--num-images",
        3,
        "--steps",
        4,
        "--sampler",
        "Euler a",
        "--width",
        48,
        "--height",
        32,
        "--out",
        tmp_path,
    )
    assert code == 0, err
    paths = [Path(line) for line in out.splitlines()]
    assert [p.name for p in paths] == ["0000000041.png", "0000000042.png", "0000000043.png"]
    with Image.open(paths[1]) as image:
        assert image.size == (48, 32)
        fields = parse_parameters(image.text["parameters"])
    assert fields["Prompt"] == "a red circle, big"
    assert fields["Negative prompt"] == "blue"
    assert fields["Steps"] == "4" and fields["Sampler"] == "Euler a"
    assert fields["CFG scale"] == "7.5" and fields["Seed"] == "42" and fields["Size"] == "48x32"
    assert fields["Model"] == "tiny-sd1" and len(fields["Model hash"]) == 10
    assert fields["Version"].startswith("sdgen ")
    request = read_request(paths[1])
    assert (request.seed, request.num_images, request.sampler) == (42, 1, "euler_a")


def test_reproduce_gives_the_same_picture(capsys, tmp_path, tiny_sd2):
    code, out, _ = run(
        capsys,
        "generate",
        "a green square",
        "--model",
        tiny_sd2,
        "--num-images",
        2,
        "--steps",
        3,
        "--sampler",
        "dpmpp_2m",
        "--out",
        tmp_path / "first",
    )
    assert code == 0
    second = Path(out.splitlines()[1])
    assert read_request(second).seed is not None  # a random seed was drawn and recorded
    code, out, err = run(capsys, "reproduce", second, "--out", tmp_path / "again")
    assert code == 0, err
    again = Path(out.strip())
    with Image.open(second) as a, Image.open(again) as b:
        # Made in a batch of 2, remade alone: batched kernels may round differently by 1/255.
        assert max_pixel_diff(a, b) <= 1
        assert a.text["parameters"] == b.text["parameters"]


def test_reproduce_refuses_weights_other_than_the_recorded_ones(capsys, tmp_path, tiny_sd1):
    """The model folder changed since the picture was made: its Model hash differs, so the
    picture would not come back; --model says another model is meant."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "model"
    shutil.copytree(tiny_sd1, folder)
    args = ["--model", folder, "--steps", "2", "--width", "32", "--height", "32"]
    code, out, err = run(capsys, "generate", "x", *args, "--seed", "4", "--out", tmp_path / "a")
    assert code == 0, err
    picture = Path(out.strip())
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not loaded: safetensors is")
    code, out, err = run(capsys, "reproduce", picture, "--out", tmp_path / "bin")
    assert code == 0, err  # the hash is of the weights read, not of whatever sorts first
    (weights,) = (folder / "unet").glob("*.safetensors")
    save_file(load_file(weights), weights, metadata={"changed": "yes"})  # other bytes
    code, out, err = run(capsys, "reproduce", picture, "--out", tmp_path / "b")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "model: " in err and "Model hash" in err and "--model" in err, err
    code, out, err = run(capsys, "reproduce", picture, "--model", folder, "--out", tmp_path / "c")
    assert code == 0, err
    with Image.open(picture) as a, Image.open(out.strip()) as b:
        assert max_pixel_diff(a, b) == 0  # the same tensors under another file's hash


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--width", "33"], "width: 33 is not allowed; a multiple of 2"),
        (["--steps", "0"], "steps: 0"),
        (["--guidance", "nan"], "guidance_scale: nan"),
        (["--guidance", "inf"], "guidance_scale: inf"),
        (["--sampler", "bogus"], "sampler: 'bogus' is not allowed; one of ddim (DDIM), pndm"),
        (["--steps", "many"], "'many' is not a valid integer"),
        (["--precision", "fp8"], "'fp8' is not one of"),
        (["--device", "tpu"], "device: 'tpu'"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, tmp_path, tiny_sd1, args, expected):
    code, out, err = run(capsys, "generate", "x", "--model", tiny_sd1, "--out", tmp_path, *args)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("sdgen: error: "), err
    assert expected in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_missing_model_and_refused_pickle_exit_2(capsys, tmp_path, tiny_sd1):
    code, _, err = run(capsys, "generate", "x", "--model", tmp_path / "nowhere")
    assert code == 2 and "nowhere" in err and err.count("\n") == 1
    pickled = tmp_path / "model.ckpt"
    pickled.write_bytes(b"not even a pickle")
    code, _, err = run(capsys, "generate", "x", "--model", pickled)
    assert code == 2 and "--allow-pickle" in err and "model.ckpt" in err


def test_pickle_weights_in_a_folder_are_refused(capsys, tmp_path, tiny_sd1):
    import shutil

    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_sd1, folder)
    unet = folder / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(unet), unet.with_suffix(".bin"))
    unet.unlink()
    code, _, err = run(capsys, "generate", "x", "--model", folder, "--steps", 1)
    assert code == 2 and "--allow-pickle" in err
    code, out, err = run(
        capsys,
        "generate",
        "x",
        "--model",
        folder,
        "--steps",
        1,
        "--allow-pickle",
        "--out",
        tmp_path / "out",
    )
    assert code == 0, err
    assert Path(out.strip()).is_file()


def test_the_installed_command_runs(tmp_path, tiny_sd1):
    """The console script itself: paths on stdout only; exit status 2 on a user mistake."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "sdgen.cli", "generate", "a cat", "--model", str(tiny_sd1)]
    done = subprocess.run(
        [*command, "--steps", "2", "--seed", "1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{tmp_path / '0000000001.png'}\n"
    done = subprocess.run(
        [*command, "--steps", "-3"], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "steps: -3" in done.stderr


@pytest.mark.parametrize("flag, warmup", [([], True), (["--no-warmup"], False)])
def test_serve_passes_its_settings_to_the_server(capsys, tmp_path, monkeypatch, flag, warmup):
    import uvicorn

    import sdgen.server.app

    configs = []
    monkeypatch.setattr(
        sdgen.server.app, "create_app", lambda config, store: configs.append(config)
    )
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: None)  # no listening
    args = ["serve", "--data-dir", str(tmp_path), "--max-batch", "3", "--fast-path", "off"]
    code, _, err = run(capsys, *args, *flag)
    assert code == 0, err
    (config,) = configs
    assert (config.warmup, config.max_batch, config.fast_path) == (warmup, 3, "off")


@pytest.mark.parametrize(
    "flag, env, expected",
    [
        ([], None, "off"),
        ([], "auto", "off"),
        (["--fast-path", "on"], None, "on"),
        ([], "on", "auto"),  # then the variable decides
    ],
)
def test_one_off_commands_compile_only_when_asked(
    capsys, tmp_path, tiny_sd1, monkeypatch, flag, env, expected
):
    """generate and sweep load without compiling under auto (it takes longer than it saves for
    one batch); --fast-path on or SDGEN_FAST_PATH (which auto then defers to) turn it on."""
    import sdgen.models.loader

    if env is None:
        monkeypatch.delenv("SDGEN_FAST_PATH", raising=False)
    else:
        monkeypatch.setenv("SDGEN_FAST_PATH", env)
    asked = []
    load = sdgen.models.loader.load_model

    def recording(*args, fast_path="auto", **kwargs):
        asked.append(fast_path)
        return load(*args, **{**kwargs, "fast_path": "off"})  # the CPU compiles slowly

    monkeypatch.setattr(sdgen.models.loader, "load_model", recording)
    common = ["--model", tiny_sd1, "--steps", "1", "--width", "32", "--height", "32", *flag]
    code, _, err = run(capsys, "generate", "a red circle", "--out", tmp_path / "g", *common)
    assert code == 0, err
    code, _, err = run(capsys, "sweep", "a circle", "--guidance", "1,2", "--out", tmp_path, *common)
    assert code == 0, err
    assert asked == [expected, expected]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # the embedded model's schedule starts PLMS with Runge-Kutta steps: 4 at least
        (["--sampler", "pndm", "--steps", "2"], "steps: 2 is not allowed; at least 4 for the pndm"),
        # an overflow to NaN made black pictures, exit 0
        (
            ["--guidance", "1e308", "--steps", "2"],
            "guidance_scale: 1e+308 is not allowed; a smaller",
        ),
        # picture i takes seed + i: the last one's seed was refused after the first were written
        (["--seed", str(2**63 - 10_002), "--num-images", "3", "--steps", "2"], "seed: "),
    ],
)
def test_bad_input_found_late_still_exits_2_with_one_line(capsys, tmp_path, args, expected):
    code, out, err = run(capsys, "generate", "x", "--out", tmp_path, *args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("sdgen: error: ") and expected in err, err
    assert not list(tmp_path.iterdir())


def test_an_output_folder_that_cannot_be_made_is_one_line_before_generating(capsys, tmp_path):
    (tmp_path / "afile").write_text("")
    code, out, err = run(capsys, "generate", "x", "--out", tmp_path / "afile" / "sub")
    assert code == 1 and out == "" and err.count("\n") == 1
    assert err.startswith("sdgen: error: Not a directory") and "afile" in err


@pytest.mark.parametrize("chunk", ["[1, 2]", "{not json", '{"no": "request"}', '{"request": "x"}'])
def test_reproduce_refuses_unreadable_metadata_in_one_line(capsys, tmp_path, chunk):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("sdgen", chunk)
    Image.new("RGB", (8, 8)).save(tmp_path / "odd.png", pnginfo=info)
    code, _, err = run(capsys, "reproduce", tmp_path / "odd.png")
    assert code == 2 and err.count("\n") == 1 and "unreadable sdgen metadata" in err, err


@pytest.mark.parametrize(
    "args",
    [["--port", "-1"], ["--port", "70000"], ["--max-body-mb", "nan"], ["--max-body-mb", "0"]],
)
def test_serve_refuses_impossible_settings(capsys, tmp_path, args):
    code, _, err = run(capsys, "serve", "--data-dir", tmp_path, *args)
    assert code == 2 and err.count("\n") == 1 and args[0] in err, err


@pytest.mark.parametrize("layout", ["empty", "pickle-only", "ckpt"])
def test_serve_refuses_a_model_folder_that_cannot_load(capsys, tmp_path, tiny_sd1, layout):
    """Found before listening, by the loader's own checks (a server started without a usable
    model and answered every job with a 500)."""
    import shutil

    folder = tmp_path / "model"
    if layout == "empty":
        folder.mkdir()
        expected = "no model_index.json"
    elif layout == "ckpt":  # a single pickle file: refused as such, not left to fail each job
        folder = tmp_path / "model.ckpt"
        torch.save({}, folder)
        expected = "safetensors only"
    else:
        shutil.copytree(tiny_sd1, folder)
        for weights in (folder / "unet").glob("*.safetensors"):
            torch.save({}, weights.with_suffix(".bin"))
            weights.unlink()
        expected = "pickle"
    code, _, err = run(capsys, "serve", "--data-dir", tmp_path / "data", "--model", folder)
    assert code == 2 and err.count("\n") == 1 and expected in err, err
    assert "--allow-pickle" not in err  # a flag serve does not have


def test_intermediates_never_replace_another_runs_frames(capsys, tmp_path):
    frames = tmp_path / "frames"
    args = ["generate", "x", "--steps", "2", "--out", tmp_path, "--save-intermediates", frames]
    code, _, err = run(capsys, *args)
    assert code == 0, err
    before = sorted(p.read_bytes() for p in frames.iterdir())
    code, _, err = run(capsys, *args, "--seed", "5")
    assert code == 2 and "save_intermediates" in err and "new or empty folder" in err
    assert sorted(p.read_bytes() for p in frames.iterdir()) == before


def test_device_and_devices_together_are_refused(capsys, tmp_path):
    args = ["--devices", "cpu,cpu", "--device", "cuda:3", "--out", tmp_path]
    code, _, err = run(capsys, "generate", "x", "--steps", "2", "--num-images", "2", *args)
    assert code == 2 and "device: 'cuda:3'" in err and "--devices" in err, err


@pytest.mark.parametrize(
    ("flag", "value", "needs"),
    [
        ("--every", "2", "--save-steps"),
        ("--preview", "latents", "--save-steps or --save-intermediates"),
        ("--clip-model", "openai/clip-vit-base-patch32", "--best-of"),
    ],
)
def test_an_option_for_an_output_not_asked_for_is_refused(capsys, tmp_path, flag, value, needs):
    """They did nothing without the output they shape; the user meant something."""
    code, out, err = run(capsys, "generate", "x", "--steps", "2", "--out", tmp_path, flag, value)
    field = flag[2:].replace("-", "_")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert f"{field}: " in err and f"given only with {needs}" in err, err
    assert not list(tmp_path.iterdir())


def test_ddim_eta_is_recorded_and_reproduced_and_refused_elsewhere(capsys, tmp_path):
    args = ["generate", "x", "--steps", "4", "--seed", "2", "--sampler", "ddim", "--eta", "1"]
    code, out, err = run(capsys, *args, "--out", tmp_path / "a")
    assert code == 0, err
    picture = Path(out.strip())
    with Image.open(picture) as image:
        assert parse_parameters(image.text["parameters"])["Eta DDIM"] == "1"
    assert read_request(picture).eta == 1.0
    code, out, err = run(capsys, "reproduce", picture, "--out", tmp_path / "b")
    assert code == 0, err
    with Image.open(picture) as a, Image.open(out.strip()) as b:
        assert max_pixel_diff(a, b) == 0  # the noise of every step came from the seed
    code, out, err = run(capsys, "generate", "x", "--sampler", "euler", "--eta", "0.5")
    assert code == 2 and "eta: 0.5" in err and "ddim" in err, err


def test_reproduce_stops_where_a_stopped_picture_was_taken(capsys, tmp_path):
    """A picture of a stopped run (A1111's interrupt, the server's stop) records the step; it
    is remade by stopping there, not by finishing the run."""
    from sdgen.api import save_result
    from sdgen.errors import GenerationStopped
    from sdgen.models.loader import load_model
    from sdgen.pipelines.generate import generate

    def stop_after_three(step):
        if step.index == 2:
            raise GenerationStopped(3, step.total, step.denoised)

    model = load_model(None, device="cpu")
    request = GenerationRequest("a red circle", steps=8, seed=5, width=64, height=64)
    result = generate(model, request, callback=stop_after_three)
    (picture,) = save_result(result, model, tmp_path / "a")
    with Image.open(picture) as image:
        assert parse_parameters(image.text["parameters"])["Stopped at step"] == "3/8"
    code, out, err = run(capsys, "reproduce", picture, "--out", tmp_path / "b")
    assert code == 0, err
    again = Path(out.strip())
    with Image.open(picture) as a, Image.open(again) as b:
        assert max_pixel_diff(a, b) == 0 and b.text["parameters"] == a.text["parameters"]
    finished = generate(model, request).images[0]
    with Image.open(picture) as a:
        assert max_pixel_diff(a, finished) > 10  # stopping made a difference


def test_long_prompt_chunk_is_recorded_and_reproduced(capsys, tmp_path):
    prompt = ", ".join(["a red circle on grey"] * 8)  # past the embedded model's window
    args = ["generate", prompt, "--steps", "3", "--seed", "2", "--long-prompt", "chunk"]
    code, out, err = run(capsys, *args, "--emphasis", "original", "--out", tmp_path / "a")
    assert code == 0, err
    picture = Path(out.strip())
    assert read_request(picture).long_prompt == "chunk"
    code, out, err = run(capsys, "reproduce", picture, "--out", tmp_path / "b")
    assert code == 0, err
    with Image.open(picture) as a, Image.open(out.strip()) as b:
        assert max_pixel_diff(a, b) == 0
    args[args.index("chunk")] = "truncate"  # the first window only: another picture
    code, out, err = run(capsys, *args, "--emphasis", "original", "--out", tmp_path / "c")
    assert code == 0, err
    with Image.open(picture) as a, Image.open(out.strip()) as b:
        assert max_pixel_diff(a, b) > 3
    code, out, err = run(capsys, "generate", "a BREAK b", "--emphasis", "original")
    assert code == 2 and "BREAK only with long_prompt chunk" in err, err
    code, out, err = run(capsys, "generate", "x", "--long-prompt", "split")
    assert code == 2 and "split" in err, err


def test_clip_skip_is_recorded_and_reproduced(capsys, tmp_path):
    args = ["--steps", 2, "--width", 64, "--height", 64, "--seed", 9, "--clip-skip", 2]
    code, out, err = run(capsys, "generate", "a red circle", *args, "--out", tmp_path / "a")
    assert code == 0, err
    picture = Path(out.strip())
    with Image.open(picture) as image:
        assert parse_parameters(image.text["parameters"])["Clip skip"] == "2"
    assert read_request(picture).clip_skip == 2
    code, out, err = run(capsys, "reproduce", picture, "--out", tmp_path / "b")
    assert code == 0, err
    with Image.open(picture) as a, Image.open(out.strip()) as b:
        assert max_pixel_diff(a, b) == 0
    code, _, err = run(capsys, "generate", "x", *args[:-1], 4, "--out", tmp_path / "c")
    assert code == 2 and "clip_skip: 4 is not allowed; 1 to 3" in err  # the miniature's 3 layers


def test_serve_refuses_a_styles_file_that_is_not_one(capsys, tmp_path):
    odd = tmp_path / "styles.csv"
    odd.write_text("title,prompt\nx,y\n")
    code, _, err = run(capsys, "serve", "--data-dir", tmp_path / "data", "--styles", odd)
    assert code == 2 and err.count("\n") == 1 and "no 'name' column" in err, err
