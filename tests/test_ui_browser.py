"""The web page in a real headless browser (Debian's chromium, driven by Playwright) against a
real ``sdgen serve``: generate with a live progress bar and preview, the gallery, reuse seed,
img2img from a result, inpainting with a mask painted on the page, cancel, the server's
validation message next to its field, history, and the API key asked for and sent.

Skipped, saying why, where /usr/bin/chromium or the playwright package is missing or the browser
cannot start (``apt-get install chromium``; Playwright's own browser download is never used).
``SDGEN_CHROMIUM`` names another Chromium binary.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from test_server_support import decode_png, free_port, png_base64, wait_until

CHROMIUM = os.environ.get("SDGEN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [  # without the networking flags Chromium keeps calling outside hosts
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SERVE = "import sys, sdgen.cli.serve; from sdgen.cli import main; sys.exit(main(sys.argv[1:]))"
API_KEY = "test-key-0123"
STEP_DELAY = 0.05  # seconds per step: a 20-step job runs for over a second, long enough to watch
TIMEOUT_MS = 20_000

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
if not Path(CHROMIUM).exists():
    pytest.skip(f"no browser at {CHROMIUM}: apt-get install chromium", allow_module_level=True)


class Server:
    """``sdgen serve`` in a subprocess on a free loopback port, with its own data dir."""

    def __init__(self, data_dir: Path, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        command = [sys.executable, "-c", SERVE, "serve", "--port", str(self.port)]
        command += ["--data-dir", str(data_dir), "--devices", "cpu", *extra]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # a 64x64 model on a busy 2-core machine
        self.log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.headers = {"Authorization": f"Bearer {API_KEY}"} if API_KEY in extra else {}

    def healthy(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"sdgen serve exited with {self.process.returncode}: {self.tail}")
        try:
            return httpx.get(f"{self.url}/health", timeout=2).json()["status"] == "ok"
        except httpx.HTTPError:
            return False

    def api(self, path: str) -> dict:
        response = httpx.get(f"{self.url}{path}", headers=self.headers, timeout=10)
        response.raise_for_status()
        return response.json()

    @property
    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Two servers started together: an open one with slow steps and a textual inversion, and
    one with an API key."""
    import torch
    from safetensors.torch import save_file

    from sdgen.miniature.architecture import TEXT_DIM

    base = tmp_path_factory.mktemp("ui")
    embeddings = base / "embeddings"
    embeddings.mkdir()
    vectors = torch.full((1, TEXT_DIM), 0.01)
    save_file({"emb_params": vectors}, embeddings / "shinystyle.safetensors")
    loras = base / "loras"
    loras.mkdir()
    (loras / "inkstyle.safetensors").write_bytes(b"listed by name, read when a prompt names it")
    open_options = ["--embeddings", str(embeddings), "--lora-dir", str(loras)]
    started = [
        Server(base / "open", "--step-delay", str(STEP_DELAY), *open_options),
        Server(base / "keyed", "--api-key", API_KEY),
    ]
    try:
        for server in started:
            wait_until(server.healthy, timeout=120, every=0.2)
        yield started
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="module")
def server(servers) -> Server:
    return servers[0]


@pytest.fixture(scope="module")
def keyed_server(servers) -> Server:
    return servers[1]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except sync_api.Error as err:
            pytest.skip(f"{CHROMIUM} does not start here: {str(err).splitlines()[0]}")
        yield chromium
        chromium.close()


@contextlib.contextmanager
def open_page(browser):
    """A fresh context (its own sessionStorage) on the page; page errors fail the test."""
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    try:
        yield page, context
        assert not errors, errors
    finally:
        context.close()


def load(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]")


def fill_form(page, *, prompt: str, steps: int, seed: int | None = None) -> None:
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_label("Steps", exact=True).fill(str(steps))
    page.get_by_label("Seed", exact=True).fill("" if seed is None else str(seed))


def generate(page) -> None:
    page.get_by_role("button", name="Generate", exact=True).click()


def newest_job_id(page) -> str:
    page.wait_for_selector("#jobs .job")
    return page.locator("#jobs .job").first.get_attribute("data-job-id")


def wait_gallery_loaded(page, count: int) -> None:
    """``count`` pictures in the gallery, each decoded (naturalWidth > 0)."""
    page.wait_for_function(
        """n => {
            const images = [...document.querySelectorAll('#gallery .result-image')];
            return images.length === n && images.every(i => i.complete && i.naturalWidth > 0);
        }""",
        arg=count,
    )


UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea, button, progress, a')]
    .filter(el => !el.closest('template'))
    .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                  && !el.textContent.trim())
    .map(el => el.outerHTML)"""


def test_generate_shows_progress_then_the_picture_and_reuse_seed_fills_the_seed(browser, server):
    with open_page(browser) as (page, _):
        load(page, server.url)
        sampler = page.locator("#sampler option").nth(1).get_attribute("value")
        page.get_by_label("Sampler", exact=True).select_option(sampler)
        page.get_by_label("Guidance", exact=True).fill("5")
        page.get_by_label("Emphasis (words:1.2)").select_option("original")
        page.get_by_label("Prompts past 75 tokens").select_option("chunk")
        page.get_by_label("Clip skip", exact=True).fill("2")
        page.get_by_label("Variation strength", exact=True).fill("0.25")
        page.get_by_label("Resize seed from width").fill("48")
        page.get_by_label("Resize seed from height").fill("80")
        page.get_by_label("Tiling: edges that continue each other").check()
        fill_form(page, prompt="a (red:1.2) circle on a blue background", steps=20)  # random seed
        generate(page)
        job_id = newest_job_id(page)
        card = f'#jobs .job[data-job-id="{job_id}"]'

        # Mid-run: the bar has moved but not finished, and a preview picture has loaded.
        page.wait_for_function(
            """card => {
                const bar = document.querySelector(card + ' .job-progress');
                const preview = document.querySelector(card + ' .job-preview');
                return bar.value > 0 && bar.value < 1 && preview.naturalWidth > 0;
            }""",
            arg=card,
        )
        wait_gallery_loaded(page, 1)
        assert page.locator(f"{card} .job-status").text_content() == "succeeded"
        assert page.locator(f"{card} progress").evaluate("bar => bar.value") == 1

        job = server.api(f"/v1/jobs/{job_id}")
        assert job["status"] == "succeeded"
        assert job["request"]["steps"] == 20 and job["request"]["guidance_scale"] == 5
        assert job["request"]["sampler"] == sampler
        assert job["request"]["emphasis"] == "original"
        assert job["request"]["long_prompt"] == "chunk" and job["request"]["clip_skip"] == 2
        assert job["request"]["variation_strength"] == 0.25  # its seed drawn at random
        assert job["request"]["variation_seed"] is not None
        assert job["request"]["seed_resize_from"] == [48, 80] and job["request"]["tiling"]
        seed = job["results"][0]["seed"]
        result = page.locator("#gallery .result").first
        assert result.get_attribute("data-image-id") == job["results"][0]["id"]
        settings = result.locator("figcaption").text_content()
        assert f"seed {seed}" in settings and "20 steps" in settings and sampler in settings
        download = result.get_by_role("link", name=f"Download picture, seed {seed}")
        assert download.get_attribute("href").startswith("blob:")

        assert page.get_by_label("Seed", exact=True).input_value() == ""
        # the server's textual inversion, named under the prompt
        assert page.locator("#embeddings-hint").text_content().endswith("name: shinystyle")
        assert page.locator("#loras-hint").text_content().endswith("<lora:name:weight>: inkstyle")
        result.get_by_role("button", name=f"Reuse seed {seed}").click()
        assert page.get_by_label("Seed", exact=True).input_value() == str(seed)
        # a varied picture's variation seed and strength too: the same picture again
        variation = str(job["request"]["variation_seed"])
        assert page.get_by_label("Variation seed", exact=True).input_value() == variation
        assert page.get_by_label("Variation strength", exact=True).input_value() == "0.25"
        assert f"variation seed {variation}, strength 0.25" in settings
        assert "seed resized from 48×80" in settings and "tiling" in settings
        assert page.get_by_label("Resize seed from width").input_value() == "48"
        assert page.get_by_label("Resize seed from height").input_value() == "80"

        # The history shows the job from the store, with its picture.
        page.get_by_role("button", name="Refresh history").click()
        entry = page.locator(f'#history-list .history-job[data-job-id="{job_id}"]')
        assert entry.get_attribute("data-status") == "succeeded"
        assert entry.locator(".result-image").count() == 1
        assert page.evaluate(UNLABELLED) == []


def test_use_as_init_picture_runs_img2img_and_shows_its_result(browser, server):
    with open_page(browser) as (page, _):
        load(page, server.url)
        fill_form(page, prompt="a red square", steps=4, seed=11)
        generate(page)
        wait_gallery_loaded(page, 1)
        first = page.locator("#gallery .result").first.get_attribute("data-image-id")

        strength = page.get_by_label("Strength", exact=True)
        assert strength.is_disabled()  # only with an init picture
        page.locator("#gallery .result").first.locator(".result-use-init").click()
        page.wait_for_function("document.getElementById('init-preview').naturalWidth > 0")
        assert strength.is_enabled()
        strength.fill("0.5")
        assert page.locator("#strength-value").text_content() == "0.50"
        page.get_by_label("Prompt", exact=True).fill("a blue square")
        generate(page)
        wait_gallery_loaded(page, 2)

        job = server.api(f"/v1/jobs/{newest_job_id(page)}")
        assert job["status"] == "succeeded"
        assert job["request"]["strength"] == 0.5
        assert job["request"]["init_image"]["width"] == 64  # img2img from the first picture
        newest = page.locator("#gallery .result").first
        assert newest.get_attribute("data-image-id") == job["results"][0]["id"] != first
        assert "img2img, strength 0.5" in newest.locator("figcaption").text_content()


def start_long_job(page, prompt: str, seed: int):
    """Submit a 150-step job (150 x 50 ms at least) and wait until it runs: (id, card selector,
    card)."""
    fill_form(page, prompt=prompt, steps=150, seed=seed)
    generate(page)
    job_id = newest_job_id(page)
    selector = f'#jobs .job[data-job-id="{job_id}"]'
    page.wait_for_function(
        "card => document.querySelector(card + ' .job-progress').value > 0", arg=selector
    )
    return job_id, selector, page.locator(selector)


def wait_for_card_status(page, server, job_id: str, selector: str, status: str) -> None:
    """Wait until the card says ``status``; on a timeout, say what the server and card said."""
    try:
        page.wait_for_selector(f'{selector}[data-status="{status}"]')
    except sync_api.TimeoutError:
        stored = server.api(f"/v1/jobs/{job_id}")["status"]
        shown = page.locator(selector).text_content()
        raise AssertionError(f"job {stored}; card: {shown!r}; server: {server.tail}") from None


def test_cancel_marks_a_running_job_cancelled(browser, server):
    with open_page(browser) as (page, _):
        load(page, server.url)
        job_id, selector, card = start_long_job(page, "a green triangle", seed=3)
        card.get_by_role("button", name="Cancel").click()
        wait_for_card_status(page, server, job_id, selector, "cancelled")
        assert card.locator(".job-status").text_content() == "cancelled"
        assert card.get_by_role("button", name="Cancel").is_hidden()
        assert server.api(f"/v1/jobs/{job_id}")["status"] == "cancelled"
        assert page.locator("#gallery .result").count() == 0


def test_a_late_answer_to_cancel_does_not_bring_an_ended_job_back(browser, server):
    """DELETE answers "running" (the job stops at its next step); when that answer arrives after
    the job's end event, the card stays cancelled (it went back to running, with Stop shown)."""
    with open_page(browser) as (page, _):
        load(page, server.url)
        held = []

        def hold_cancel_answers(route):
            if route.request.method != "DELETE":
                route.continue_()
                return
            held.append((route, route.fetch()))  # answered by the server now, delivered later

        page.route("**/v1/jobs/*", hold_cancel_answers)
        _, selector, card = start_long_job(page, "a pink star", seed=5)
        card.get_by_role("button", name="Cancel").click()
        page.wait_for_selector(f'{selector}[data-status="cancelled"]')  # from the end event
        ((route, answer),) = held
        assert answer.json()["status"] == "running"
        route.fulfill(response=answer)
        page.wait_for_timeout(500)
        assert card.get_attribute("data-status") == "cancelled"
        assert card.locator(".job-status").text_content() == "cancelled"
        assert card.get_by_role("button", name="Stop").is_hidden()


def test_stop_keeps_the_pictures_of_a_running_job(browser, server):
    with open_page(browser) as (page, _):
        load(page, server.url)
        job_id, selector, card = start_long_job(page, "a blue square", seed=4)
        card.get_by_role("button", name="Stop").click()
        wait_for_card_status(page, server, job_id, selector, "succeeded")
        assert card.get_by_role("button", name="Stop").is_hidden()
        assert card.get_by_role("button", name="Cancel").is_hidden()
        (result,) = server.api(f"/v1/jobs/{job_id}")["results"]
        assert "Stopped at step: " in result["parameters"]
        page.wait_for_selector("#gallery .result")
        assert page.locator("#gallery .result").count() == 1
        done = result["parameters"].split("Stopped at step: ")[1].split(",")[0]
        settings = page.locator("#gallery .result .result-settings").text_content()
        assert f"stopped at step {done}" in settings, settings


def test_an_invalid_width_shows_the_servers_message_next_to_the_width(browser, server):
    body = {"prompt": "a red circle", "steps": 2, "width": 65}
    expected = httpx.post(f"{server.url}/v1/jobs", json=body, timeout=10)
    assert expected.status_code == 422 and expected.json()["error"]["field"] == "width"
    with open_page(browser) as (page, _):
        load(page, server.url)
        fill_form(page, prompt="a red circle", steps=2)
        page.get_by_label("Width", exact=True).fill("65")
        generate(page)
        page.wait_for_selector("#width-error:not(:empty)")
        assert page.locator("#width-error").text_content() == expected.json()["error"]["message"]
        width = page.get_by_label("Width", exact=True)
        assert width.get_attribute("aria-invalid") == "true"
        assert width.get_attribute("aria-describedby") == "width-error"
        assert page.locator("#jobs .job").count() == 0

        width.fill("64")  # editing the field clears its message
        assert page.locator("#width-error").text_content() == ""


def test_a_seed_resize_needs_both_sides_and_shows_the_servers_message(browser, server):
    body = {"prompt": "a red circle", "steps": 2, "seed_resize_from": [50, 64]}
    expected = httpx.post(f"{server.url}/v1/jobs", json=body, timeout=10)
    assert expected.status_code == 422
    assert expected.json()["error"]["field"] == "seed_resize_from"
    with open_page(browser) as (page, _):
        load(page, server.url)
        fill_form(page, prompt="a red circle", steps=2)
        page.get_by_label("Resize seed from width").fill("50")
        generate(page)
        page.wait_for_selector("#seed_resize_from-error:not(:empty)")
        message = "Resize seed from: give both a width and a height"
        assert page.locator("#seed_resize_from-error").text_content() == message
        page.get_by_label("Resize seed from height").fill("64")
        generate(page)
        error = page.locator("#seed_resize_from-error")
        page.wait_for_function(
            "text => document.querySelector('#seed_resize_from-error').textContent === text",
            arg=expected.json()["error"]["message"],
        )
        assert error.text_content() == expected.json()["error"]["message"]
        assert page.locator("#jobs .job").count() == 0


def test_with_an_api_key_the_page_asks_for_it_and_sends_it(browser, keyed_server):
    url = keyed_server.url
    with open_page(browser) as (page, context):
        # The page's own files are public; its API calls, events and pictures carry the key.
        page.goto(url)
        key = page.get_by_label("API key", exact=True)
        key.wait_for()
        assert page.locator("body[data-ready]").count() == 0
        key.fill("wrong")
        page.get_by_role("button", name="Use key").click()
        page.wait_for_selector("#auth-message:text('That key was refused.')")
        key.fill(API_KEY)
        page.get_by_role("button", name="Use key").click()
        page.wait_for_selector("body[data-ready=true]")
        assert page.locator("#auth").is_hidden()
        assert page.evaluate("sessionStorage.getItem('sdgen.apiKey')") == API_KEY

        fill_form(page, prompt="a yellow circle", steps=3, seed=5)
        generate(page)
        wait_gallery_loaded(page, 1)  # pictures fetched with the key
        job_id = newest_job_id(page)
        # "succeeded" came in the end event of the events stream, read with the key
        status = page.locator(f'#jobs .job[data-job-id="{job_id}"]').get_attribute("data-status")
        assert status == "succeeded"
        assert keyed_server.api(f"/v1/jobs/{job_id}")["results"][0]["seed"] == 5


def write_init_picture(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A 64x64 PNG (the default model's size) of smooth gradients: (its path, its pixels)."""
    y, x = np.mgrid[0:64, 0:64]
    pixels = np.stack([x * 4, y * 4, 255 - (x + y) * 2], axis=-1).astype(np.uint8)
    path = tmp_path / "init.png"
    Image.fromarray(pixels).save(path)
    return path, pixels


def choose_init_picture(page, path: Path) -> None:
    page.get_by_label("Picture file", exact=True).set_input_files(path)
    page.locator("#mask-canvas").wait_for()  # shown once the picture is decoded


def paint(page, start: tuple[float, float], end: tuple[float, float]) -> None:
    """One stroke with the mouse, in CSS pixels from the mask canvas's top left corner (scrolled
    into view first: the mouse moves in the window's coordinates)."""
    page.locator("#mask-canvas").scroll_into_view_if_needed()
    box = page.locator("#mask-canvas").bounding_box()
    page.mouse.move(box["x"] + start[0], box["y"] + start[1])
    page.mouse.down()
    page.mouse.move(box["x"] + end[0], box["y"] + end[1], steps=8)
    page.mouse.up()


def mask_sent(body: dict) -> np.ndarray:
    """The mask of a job body, a PNG data URL, as grey levels (H, W)."""
    header, data = body["mask"].split(",", 1)
    assert header == "data:image/png;base64"
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("L"))


def generate_and_read_body(page) -> dict:
    """Generate; the body of the POST /v1/jobs the page sent."""
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/v1/jobs")) as sent:
        generate(page)
    return sent.value.post_data_json


def test_a_painted_mask_runs_inpainting_with_its_options(browser, server, tmp_path):
    init_path, init = write_init_picture(tmp_path)
    with open_page(browser) as (page, _):
        load(page, server.url)
        fill_form(page, prompt="a red square", steps=4, seed=21)
        choose_init_picture(page, init_path)
        assert page.locator("#mask-options").is_hidden()  # no mask yet: img2img
        canvas = page.locator("#mask-canvas").bounding_box()
        assert (canvas["width"], canvas["height"]) == (256, 256)  # 64x64 shown at 256x256

        # A stroke along y = 150 of 256 (37.5 of 64), x 140..240 (35..60), 24 wide (6).
        paint(page, (140, 150), (240, 150))
        page.get_by_label("Mask blur", exact=True).fill("2")
        assert page.get_by_label("Padding", exact=True).is_disabled()
        page.get_by_label("Only masked", exact=True).check()
        page.get_by_label("Padding", exact=True).fill("4")
        page.get_by_label("Keep the rest of the picture", exact=True).check()
        sent = generate_and_read_body(page)
        # The mask sent: a PNG of the init picture's size, white under the stroke only.
        mask = mask_sent(sent)
        assert mask.shape == (64, 64)
        assert mask[37, 36:60].min() == 255 and mask[:30].max() == 0 and mask[45:].max() == 0
        wait_gallery_loaded(page, 1)

        job_id = newest_job_id(page)
        job = server.api(f"/v1/jobs/{job_id}")
        assert job["status"] == "succeeded"
        request = job["request"]
        assert request["mask"]["width"] == 64 and request["mask"]["height"] == 64
        assert len(request["mask"]["sha256"]) == 64
        assert request["mask_blur"] == 2 and request["padding_mask_crop"] == 4
        assert request["overlay"] is True and request["masked_content"] == "original"
        caption = page.locator("#gallery .result").first.locator("figcaption").text_content()
        assert "inpainting, strength 0.8" in caption

        response = httpx.get(f"{server.url}{job['results'][0]['url']}", headers=server.headers)
        picture = np.asarray(decode_png(response.content).convert("RGB"))
        assert picture.shape == init.shape
        # Far from the stroke (beyond its blur and padding) the init picture is pasted back.
        assert np.array_equal(picture[:24], init[:24])
        assert np.array_equal(picture[:, :24], init[:, :24])
        assert (picture[36:40, 40:56] != init[36:40, 40:56]).any()  # repainted under the stroke


def test_a_cleared_mask_sends_no_mask_and_a_mask_fields_error_shows_next_to_it(
    browser, server, tmp_path
):
    init_path, init = write_init_picture(tmp_path)
    picture = png_base64(Image.fromarray(init))
    mask = png_base64(Image.new("L", (64, 64), 255))
    body = {"prompt": "a red circle", "steps": 2, "init_image": picture, "mask": mask}
    expected = httpx.post(f"{server.url}/v1/jobs", json={**body, "mask_blur": 300}, timeout=10)
    assert expected.status_code == 422 and expected.json()["error"]["field"] == "mask_blur"
    with open_page(browser) as (page, _):
        load(page, server.url)
        fill_form(page, prompt="a blue square", steps=2, seed=8)
        choose_init_picture(page, init_path)
        clear = page.get_by_role("button", name="Clear mask")
        assert clear.is_disabled()
        page.locator("#mask-canvas").click(position={"x": 128, "y": 128})  # a dot is a mask too
        assert clear.is_enabled() and page.locator("#mask-options").is_visible()

        blur = page.get_by_label("Mask blur", exact=True)
        blur.fill("300")
        mask = mask_sent(generate_and_read_body(page))
        assert mask[32, 32] == 255 and mask[:24].max() == 0  # a 6-pixel dot at (32, 32)
        page.wait_for_selector("#mask_blur-error:not(:empty)")
        message = expected.json()["error"]["message"]
        assert page.locator("#mask_blur-error").text_content() == message
        assert blur.get_attribute("aria-invalid") == "true"
        assert page.locator("#jobs .job").count() == 0

        clear.click()  # no mask: the options are hidden and not sent, the job is img2img
        assert page.locator("#mask-options").is_hidden() and clear.is_disabled()
        sent = generate_and_read_body(page)
        wait_gallery_loaded(page, 1)
        assert not {"mask", "mask_blur", "overlay"} & set(sent)
        request = server.api(f"/v1/jobs/{newest_job_id(page)}")["request"]
        assert request["init_image"]["width"] == 64 and request["mask"] is None
        assert request["mask_blur"] == 0  # the server's default, not the 300 typed

        # A new init picture starts without a mask.
        paint(page, (40, 40), (200, 200))
        page.get_by_role("button", name="Remove init picture").click()
        choose_init_picture(page, init_path)
        assert page.locator("#mask-options").is_hidden() and clear.is_disabled()
        assert page.evaluate(UNLABELLED) == []


def test_the_hires_fix_is_sent_when_ticked_and_its_errors_show_by_its_fields(browser, server):
    with open_page(browser) as (page, _):
        load(page, server.url)
        fill_form(page, prompt="a red circle", steps=2, seed=5)
        scale = page.get_by_label("Upscale by")
        assert scale.is_disabled()  # until the box is ticked
        body = generate_and_read_body(page)
        assert "hires" not in body
        wait_gallery_loaded(page, 1)

        page.get_by_label("Add a second pass at a larger size").check()
        scale.fill("1.3")  # 83x83: not multiples of 8
        page.get_by_label("Upscaler").select_option("lanczos")
        generate(page)
        error = page.locator('[id="hires.scale-error"]')
        error.wait_for()
        page.wait_for_function("() => document.getElementById('hires.scale-error').textContent")
        assert error.text_content().startswith("hires.scale: 1.3 is not allowed")
        assert scale.get_attribute("aria-invalid") == "true"

        scale.fill("1.5")
        page.get_by_label("Hires steps").fill("2")
        page.get_by_label("Denoising strength").fill("0.5")
        page.get_by_label("Hires prompt", exact=True).fill("a red circle, sharp")
        body = generate_and_read_body(page)
        assert body["hires"] == {
            "scale": 1.5,
            "steps": 2,
            "strength": 0.5,
            "upscaler": "lanczos",
            "prompt": "a red circle, sharp",
        }
        wait_gallery_loaded(page, 2)
        job = server.api(f"/v1/jobs/{newest_job_id(page)}")
        assert job["status"] == "succeeded" and job["request"]["hires"]["scale"] == 1.5
        picture = decode_png(httpx.get(server.url + job["results"][0]["url"], timeout=10).content)
        assert picture.size == (96, 96)
        caption = page.locator("#gallery .result figcaption").first.text_content()
        assert "96×96" in caption and "hires fix from 64×64, lanczos, 2 steps" in caption
        assert page.evaluate(UNLABELLED) == []
