"""The web page in a real headless browser (Debian's chromium, driven by Playwright) against a
real ``sdgen serve``: generate with a live progress bar and preview, the gallery, reuse seed,
img2img from a result, cancel, the server's validation message next to its field, history, and
the API key asked for and sent.

Skipped, saying why, where /usr/bin/chromium or the playwright package is missing or the browser
cannot start (``apt-get install chromium``; Playwright's own browser download is never used).
``SDGEN_CHROMIUM`` names another Chromium binary.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from test_server_support import free_port, wait_until

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
    """Two servers started together: an open one with slow steps, and one with an API key."""
    base = tmp_path_factory.mktemp("ui")
    started = [
        Server(base / "open", "--step-delay", str(STEP_DELAY)),
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
        fill_form(page, prompt="a red circle on a blue background", steps=20)  # a random seed
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
        seed = job["results"][0]["seed"]
        result = page.locator("#gallery .result").first
        assert result.get_attribute("data-image-id") == job["results"][0]["id"]
        settings = result.locator("figcaption").text_content()
        assert f"seed {seed}" in settings and "20 steps" in settings and sampler in settings
        download = result.get_by_role("link", name=f"Download picture, seed {seed}")
        assert download.get_attribute("href").startswith("blob:")

        assert page.get_by_label("Seed", exact=True).input_value() == ""
        result.get_by_role("button", name=f"Reuse seed {seed}").click()
        assert page.get_by_label("Seed", exact=True).input_value() == str(seed)

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
