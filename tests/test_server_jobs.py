"""The native API's jobs: generation, pictures, cancel, failures, progress events, concurrency."""

from __future__ import annotations

import json
import threading

import httpx
import numpy as np
import torch
from helpers import max_pixel_diff
from PIL import Image
from test_server_support import (  # noqa: F401 (single_thread_torch: autouse)
    BASE_URL,
    FAST,
    LiveServer,
    client_for,
    decode_png,
    make_app,
    make_config,
    png_base64,
    serial_picture,
    serial_pictures,
    shared_loader,
    single_thread_torch,
    wait_for,
    wait_until,
)

from sdgen.media.metadata import parse_parameters, read_request
from sdgen.params import GenerationRequest, InputPicture


def _equal(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


def test_txt2img_job_gives_the_serial_picture_with_its_metadata(tmp_path):
    with client_for(tmp_path) as client:
        response = client.post("/v1/jobs", json={**FAST, "num_images": 2})
        assert response.status_code == 202
        job = response.json()
        assert job["status"] in ("queued", "running") and job["request"]["seed"] == 7
        job = wait_for(client, job["id"])
        assert job["status"] == "succeeded" and job["progress"]["fraction"] == 1.0
        assert [r["seed"] for r in job["results"]] == [7, 8]
        expected = serial_pictures(GenerationRequest("a red circle", steps=3, seed=7, num_images=2))
        for index, result in enumerate(job["results"]):
            picture = client.get(result["url"])
            assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
            assert _equal(decode_png(picture.content), expected[index])
            path = tmp_path / "out.png"
            path.write_bytes(picture.content)
            assert read_request(path).seed == 7 + index
            assert parse_parameters(result["parameters"])["Seed"] == str(7 + index)


def test_a_hires_job_gives_the_serial_pictures_at_the_larger_size(tmp_path):
    from sdgen.hires import HiresFix

    hires = {"scale": 1.5, "steps": 2, "strength": 0.5, "upscaler": "lanczos"}
    with client_for(tmp_path) as client:
        job = client.post("/v1/jobs", json={**FAST, "hires": hires}).json()
        assert job["request"]["hires"]["upscaler"] == "lanczos"
        job = wait_for(client, job["id"])
        assert job["status"] == "succeeded" and job["progress"]["total"] == 3 + 2
        picture = decode_png(client.get(job["results"][0]["url"]).content)
        request = GenerationRequest("a red circle", steps=3, seed=7, hires=HiresFix(**hires))
        assert picture.size == (96, 96) and _equal(picture, serial_picture(request))


def test_an_empty_prompt_is_an_unconditional_job(tmp_path):
    with client_for(tmp_path) as client:
        job = client.post("/v1/jobs", json={"prompt": "  ", "steps": 2, "seed": 1}).json()
        assert wait_for(client, job["id"])["status"] == "succeeded"


def test_img2img_and_inpaint_jobs_take_base64_pictures(tmp_path):
    init = Image.new("RGB", (64, 64), (220, 40, 40))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    with client_for(tmp_path) as client:
        body = {**FAST, "steps": 4, "init_image": png_base64(init), "strength": 0.5}
        img2img = client.post("/v1/jobs", json=body).json()
        inpaint = client.post("/v1/jobs", json={**body, "mask": png_base64(mask)}).json()
        # a finished job's progress counts the steps that ran: 4 x 0.5, as its live progress
        assert wait_for(client, img2img["id"])["progress"]["total"] == 2
        for job, pictures in (
            (img2img, {"init_image": init}),
            (inpaint, {"init_image": init, "mask": mask}),
        ):
            done = wait_for(client, job["id"])
            assert done["status"] == "succeeded", done["error"]
            expected = serial_picture(
                GenerationRequest(
                    "a red circle",
                    steps=4,
                    seed=7,
                    strength=0.5,
                    **{k: InputPicture.from_image(v) for k, v in pictures.items()},
                )
            )
            got = decode_png(client.get(done["results"][0]["url"]).content)
            assert _equal(got, expected)
        assert img2img["request"]["init_image"]["width"] == 64
        # Without strength, each mode gets diffusers' default, as on the command line.
        del body["strength"]
        defaults = [
            client.post("/v1/jobs", json=extra).json()["request"]["strength"]
            for extra in (body, {**body, "mask": png_base64(mask)})
        ]
        assert defaults == [0.8, 1.0]


def test_inpaint_jobs_take_the_mask_processing_fields(tmp_path):
    init = Image.new("RGB", (64, 64), (220, 40, 40))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 40, 40))
    processing = {"mask_blur": 4, "padding_mask_crop": 8, "masked_content": "fill", "overlay": True}
    processing["strength"] = 0.6  # at 1 the masked part starts from noise: content is refused
    pictures = {"init_image": png_base64(init), "mask": png_base64(mask)}
    with client_for(tmp_path) as client:
        response = client.post("/v1/jobs", json={**FAST, **pictures, **processing})
        assert response.status_code == 202, response.text
        job = response.json()
        assert {name: job["request"][name] for name in processing} == processing
        done = wait_for(client, job["id"])
        assert done["status"] == "succeeded", done["error"]
        expected = serial_picture(
            GenerationRequest(
                "a red circle",
                steps=3,
                seed=7,
                init_image=InputPicture.from_image(init),
                mask=InputPicture.from_image(mask),
                **processing,
            )
        )
        assert _equal(decode_png(client.get(done["results"][0]["url"]).content), expected)
        for body, field in (
            ({**pictures, "masked_content": "bogus"}, "masked_content"),
            ({**pictures, "mask_blur": 300}, "mask_blur"),
            ({**pictures, "padding_mask_crop": -1}, "padding_mask_crop"),
            ({**pictures, "overlay": 1}, "overlay"),  # strict: 1 is not true
            ({"mask_blur": 4}, "mask_blur"),  # each needs a mask to work on
            ({"init_image": pictures["init_image"], "overlay": True}, "overlay"),
            ({"init_image": pictures["init_image"], "masked_content": "fill"}, "masked_content"),
            ({"padding_mask_crop": 0}, "padding_mask_crop"),
        ):
            refused = client.post("/v1/jobs", json={**FAST, **body})
            assert refused.status_code == 422, (body, refused.text)
            assert refused.json()["error"]["field"] == field, body


def test_jobs_are_listed_newest_first_by_page_and_status(tmp_path):
    with client_for(tmp_path) as client:
        ids = [client.post("/v1/jobs", json=FAST).json()["id"] for _ in range(3)]
        for job_id in ids:
            wait_for(client, job_id)
        page = client.get("/v1/jobs", params={"limit": 2}).json()
        assert [job["id"] for job in page["jobs"]] == ids[::-1][:2]
        assert page["total"] == 3 and page["next_offset"] == 2
        rest = client.get("/v1/jobs", params={"limit": 2, "offset": 2}).json()
        assert [job["id"] for job in rest["jobs"]] == ids[:1] and rest["next_offset"] is None
        assert client.get("/v1/jobs", params={"status": "succeeded"}).json()["total"] == 3
        assert client.get("/v1/jobs", params={"status": "queued"}).json()["total"] == 0
        bad = client.get("/v1/jobs", params={"status": "done"})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "status"
        assert client.get("/v1/jobs", params={"limit": 0}).json()["error"]["field"] == "limit"


def test_models_samplers_health_metrics_and_docs(tmp_path):
    with client_for(tmp_path) as client:
        assert client.get("/v1/models").json() == [
            {
                "name": "sdgen-miniature",
                "default": True,
                "loaded_on": ["cpu"],
                "embeddings": [],
                "loras": [],
            }
        ]
        samplers = {s["name"]: s for s in client.get("/v1/samplers").json()}
        assert samplers["dpmpp_2m_karras"]["a1111_name"] == "DPM++ 2M Karras"
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        job = client.post("/v1/jobs", json=FAST).json()
        wait_for(client, job["id"])
        metrics = client.get("/metrics").text
        for name in (
            "sdgen_queue_depth 0.0",
            'sdgen_job_latency_seconds_count{status="succeeded"} 1.0',
            'sdgen_steps_per_second{device="cpu"}',
            "sdgen_job_failures_total",
            # One job alone: its 3 steps each had 1 job in the UNet call.
            'sdgen_batch_jobs_bucket{device="cpu",le="1.0"} 3.0',
            'sdgen_batch_jobs_count{device="cpu"} 3.0',
        ):
            assert name in metrics
        assert client.get("/docs").status_code == 200
        assert "/v1/jobs" in client.get("/openapi.json").json()["paths"]


def test_a_model_that_cannot_load_is_a_503_naming_it_until_it_is_fixed(tmp_path, tiny_sd1):
    """The default model's folder is broken: /health says why, a job is refused with 503
    naming the model (it was a 500 with a traceback); once the folder is fixed, jobs run."""
    import shutil

    folder = tmp_path / "model"
    folder.mkdir()
    with client_for(tmp_path / "data", models=(str(folder),)) as client:
        wait_until(lambda: client.get("/health").json()["status"] != "loading")
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "degraded"
        assert "no model_index.json" in health.json()["model_errors"]["cpu"]
        for path, body in (("/v1/jobs", FAST), ("/sdapi/v1/txt2img", {"prompt": "x"})):
            response = client.post(path, json=body)
            assert response.status_code == 503, response.text
            error = response.json()["error"]
            assert (error["kind"], error["field"]) == ("model_unavailable", "model")
            assert str(folder) in error["message"] and "model_index.json" in error["message"]
        assert client.get("/v1/jobs").json()["jobs"] == []  # nothing was stored
        shutil.copytree(tiny_sd1, folder, dirs_exist_ok=True)
        job = client.post("/v1/jobs", json={**FAST, "width": 32, "height": 32}).json()
        assert wait_for(client, job["id"])["status"] == "succeeded"
        assert client.get("/health").json()["status"] == "ok"


def _slow_start(started: threading.Event, steps_done: list[int]):
    """The real start, recording every step that completes (callback returned)."""
    from sdgen.pipelines.generate import start

    def run(model, request, callback):
        def on_step(step):
            started.set()
            callback(step)  # raises GenerationCancelled once cancelled
            steps_done.append(step.index)

        return start(model, request, on_step)

    return run


def test_cancel_a_queued_job_never_runs_and_a_running_one_stops_within_a_step(tmp_path):
    started, steps_done = threading.Event(), []
    slow = _slow_start(started, steps_done)
    # max_batch=1: the second job waits in the queue instead of joining the first one's batch
    with client_for(tmp_path, start=slow, step_delay=0.05, max_batch=1) as client:
        running = client.post("/v1/jobs", json={**FAST, "steps": 100}).json()
        queued = client.post("/v1/jobs", json=FAST).json()
        assert started.wait(30)
        cancelled = client.delete(f"/v1/jobs/{queued['id']}")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        wait_until(lambda: len(steps_done) >= 2)
        done_at_cancel = len(steps_done)
        assert client.delete(f"/v1/jobs/{running['id']}").status_code == 200
        job = wait_for(client, running["id"])
        assert job["status"] == "cancelled" and job["results"] == []
        assert len(steps_done) <= done_at_cancel + 1  # the step under way, no more
        # The queued job never ran: the next job is the only one to start after the cancel.
        steps_done.clear()
        after = client.post("/v1/jobs", json=FAST).json()
        assert wait_for(client, after["id"])["status"] == "succeeded"
        assert len(steps_done) == FAST["steps"]
        assert client.get(f"/v1/jobs/{queued['id']}").json()["started_at"] is None
        # Cancelling an ended job changes nothing; an unknown id is 404.
        again = client.delete(f"/v1/jobs/{after['id']}").json()
        assert again["status"] == "succeeded"
        assert client.delete("/v1/jobs/" + "0" * 32).status_code == 404


def test_stop_ends_a_running_job_with_the_pictures_of_its_step(tmp_path):
    started, steps_done = threading.Event(), []
    slow = _slow_start(started, steps_done)
    with client_for(tmp_path, start=slow, step_delay=0.05, max_batch=1) as client:
        running = client.post("/v1/jobs", json={**FAST, "steps": 100}).json()
        queued = client.post("/v1/jobs", json=FAST).json()
        assert started.wait(30)
        refused = client.post(f"/v1/jobs/{queued['id']}/stop")  # nothing to keep yet
        assert refused.status_code == 409 and refused.json()["error"]["kind"] == "not_running"
        wait_until(lambda: len(steps_done) >= 2)
        assert client.post(f"/v1/jobs/{running['id']}/stop").status_code == 200
        job = wait_for(client, running["id"])
        assert job["status"] == "succeeded" and len(job["results"]) == 1
        fields = parse_parameters(job["results"][0]["parameters"])
        done, total = map(int, fields["Stopped at step"].split("/"))
        assert 2 <= done < total == 100 and len(steps_done) <= done + 1
        assert client.get(job["results"][0]["url"]).status_code == 200
        assert wait_for(client, queued["id"])["status"] == "succeeded"  # it ran, unstopped
        again = client.post(f"/v1/jobs/{running['id']}/stop")
        assert again.status_code == 409 and "succeeded" in again.json()["detail"]
        assert client.post("/v1/jobs/" + "0" * 32 + "/stop").status_code == 404


def test_out_of_memory_fails_the_job_empties_the_cache_and_the_next_job_succeeds(
    tmp_path, monkeypatch
):
    from sdgen.pipelines.generate import start

    emptied = []
    monkeypatch.setattr("sdgen.engine.workers.empty_cuda_cache", lambda: emptied.append(1))

    def flaky(model, request, callback):
        if request.prompt == "too big":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return start(model, request, callback)

    with client_for(tmp_path, start=flaky) as client:
        failed = client.post("/v1/jobs", json={**FAST, "prompt": "too big"}).json()
        job = wait_for(client, failed["id"])
        assert job["status"] == "failed" and job["error"]["kind"] == "out_of_memory"
        assert "out of memory" in job["error"]["message"]
        assert client.post("/v1/jobs", json=FAST).json()["id"]
        nxt = client.get("/v1/jobs", params={"limit": 1}).json()["jobs"][0]
        assert wait_for(client, nxt["id"])["status"] == "succeeded"
        assert emptied, "the CUDA cache was not emptied"
        assert 'sdgen_job_failures_total{kind="out_of_memory"} 1.0' in client.get("/metrics").text


def test_a_job_that_raises_fails_alone(tmp_path):
    from sdgen.pipelines.generate import start

    def broken(model, request, callback):
        if request.prompt == "boom":
            raise RuntimeError("something broke inside")
        return start(model, request, callback)

    with client_for(tmp_path, start=broken) as client:
        bad = client.post("/v1/jobs", json={**FAST, "prompt": "boom"}).json()
        good = client.post("/v1/jobs", json=FAST).json()
        job = wait_for(client, bad["id"])
        assert job["status"] == "failed"
        assert job["error"] == {
            "kind": "internal",
            "field": None,
            "message": "RuntimeError: something broke inside",
        }
        assert wait_for(client, good["id"])["status"] == "succeeded"
        assert client.get("/health").json()["status"] == "ok"


class _WorkerKilled(BaseException):
    """Not an Exception: escapes every ``except Exception``, as SystemExit would."""


def test_a_worker_that_dies_fails_its_job_and_is_replaced(tmp_path):
    from sdgen.pipelines.generate import start

    def deadly(model, request, callback):
        if request.prompt == "kill the worker":
            raise _WorkerKilled("simulated death of the worker thread")
        return start(model, request, callback)

    with client_for(tmp_path, start=deadly) as client:
        doomed = client.post("/v1/jobs", json={**FAST, "prompt": "kill the worker"}).json()
        queued = client.post("/v1/jobs", json=FAST).json()  # waits behind the doomed job
        job = wait_for(client, doomed["id"])
        assert job["status"] == "failed" and job["error"]["kind"] == "worker_died"
        assert "_WorkerKilled" in job["error"]["message"]
        assert wait_for(client, queued["id"])["status"] == "succeeded"  # the replacement ran it
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert health.json()["workers"] == {"alive": 1, "configured": 1, "restarted": 1}
        assert 'sdgen_job_failures_total{kind="worker_died"} 1.0' in client.get("/metrics").text


def test_a_device_whose_workers_keep_dying_is_reported_down(tmp_path):
    from fastapi.testclient import TestClient

    from sdgen.engine.jobs import Engine
    from sdgen.engine.models import ModelPool
    from sdgen.server.app import create_app

    def deadly(model, request, callback):
        raise SystemExit(3)

    config = make_config(tmp_path)

    def engine(listener):
        return Engine(
            ModelPool(config.models, shared_loader),
            listener,
            start=deadly,
            max_worker_restarts=1,
        )

    with TestClient(create_app(config, make_engine=engine), base_url=BASE_URL) as client:
        for _ in range(2):  # the first worker and its one replacement die
            job = wait_for(client, client.post("/v1/jobs", json=FAST).json()["id"])
            assert job["status"] == "failed" and job["error"]["kind"] == "worker_died"
        wait_until(lambda: client.get("/health").status_code == 503)
        health = client.get("/health").json()
        assert health["status"] == "degraded"
        assert health["workers"] == {"alive": 0, "configured": 1, "restarted": 1}
        # The API stays correct: jobs are still accepted, stored and readable while it is down.
        waiting = client.post("/v1/jobs", json=FAST)
        assert waiting.status_code == 202
        assert client.get(f"/v1/jobs/{waiting.json()['id']}").json()["status"] == "queued"


def _events(response) -> list[tuple[str, dict]]:
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[len("data: ") :])))
    return events


def test_progress_events_are_in_order_with_one_terminal_event_and_resume(tmp_path):
    app = make_app(tmp_path, step_delay=0.03)
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        job = client.post("/v1/jobs", json={**FAST, "steps": 12}).json()
        url = f"/v1/jobs/{job['id']}/events"
        # A client that disconnects after a few events...
        with client.stream("GET", url) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            seen = []
            for line in response.iter_lines():
                if line.startswith("event: "):
                    seen.append(line)
                if len(seen) >= 3:
                    break
        assert seen[0] == "event: status"
        # ...reconnects and gets the current state first, then the rest, then one end.
        with client.stream("GET", url) as response:
            events = _events(response)
        names = [name for name, _ in events]
        assert names[0] == "status" and names[-1] == "end" and names.count("end") == 1
        steps = [data["step"] for name, data in events if name == "progress"]
        assert steps == sorted(set(steps)) and steps[-1] == 12
        assert all(data["total"] == 12 for name, data in events if name == "progress")
        previews = [data["preview"] for name, data in events if name == "progress"]
        preview = decode_png(next(p for p in previews if p))
        assert max(preview.size) <= 128
        end = events[-1][1]
        assert end["status"] == "succeeded" and end["progress"]["fraction"] == 1.0
        # Polling agrees with the stream; a stream of an ended job is just its end.
        assert client.get(f"/v1/jobs/{job['id']}").json()["results"] == end["results"]
        with client.stream("GET", url) as response:
            assert [name for name, _ in _events(response)] == ["end"]
        assert client.get("/v1/jobs/" + "f" * 32 + "/events").status_code == 404


def test_twenty_concurrent_jobs_all_finish_with_the_serial_pictures(tmp_path):
    app = make_app(tmp_path)
    seeds = list(range(100, 120))
    jobs: dict[int, str] = {}
    errors = []

    def submit(my_seeds):
        try:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                for seed in my_seeds:
                    body = {"prompt": "a green triangle", "steps": 3, "seed": seed}
                    response = client.post("/v1/jobs", json=body)
                    assert response.status_code == 202, response.text
                    jobs[seed] = response.json()["id"]
        except Exception as err:  # reported below, in the test's thread
            errors.append(err)

    with LiveServer(app) as server:
        threads = [threading.Thread(target=submit, args=(seeds[i::10],)) for i in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors and len(jobs) == 20
        spans = []
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for seed, job_id in jobs.items():
                job = wait_for(client, job_id)
                assert job["status"] == "succeeded"
                spans.append((job["started_at"], job["finished_at"]))
                got = decode_png(client.get(job["results"][0]["url"]).content)
                expected = serial_picture(GenerationRequest("a green triangle", steps=3, seed=seed))
                # Batched with others: equal to the serial picture up to the CPU kernels'
                # batch-size-dependent rounding, the bound a request's own batch has too.
                assert max_pixel_diff(got, expected) <= 1, f"seed {seed} differs from serial"
    # One worker, yet jobs ran at the same time: they shared UNet calls.
    spans.sort()
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))


def test_two_workers_run_jobs_side_by_side_with_the_same_pictures(tmp_path):
    with client_for(tmp_path, devices=("cpu", "cpu")) as client:
        health = client.get("/health").json()
        assert health["workers"] == {"alive": 2, "configured": 2, "restarted": 0}
        ids = {
            seed: client.post("/v1/jobs", json={**FAST, "seed": seed}).json()["id"]
            for seed in range(6)
        }
        for seed, job_id in ids.items():
            job = wait_for(client, job_id)
            assert job["status"] == "succeeded"
            got = decode_png(client.get(job["results"][0]["url"]).content)
            expected = serial_picture(GenerationRequest("a red circle", steps=3, seed=seed))
            assert max_pixel_diff(got, expected) <= 1  # batched: batch-size-dependent rounding


def _held_png_writes(monkeypatch) -> tuple[threading.Event, threading.Event]:
    """Make writing a picture wait for ``release``; ``writing`` is set once one waits."""
    import sdgen.media.metadata as metadata

    writing, release = threading.Event(), threading.Event()
    save = metadata.save_png

    def held(*args, **kwargs):
        writing.set()
        assert release.wait(30)
        return save(*args, **kwargs)

    monkeypatch.setattr(metadata, "save_png", held)
    return writing, release


def test_the_worker_goes_on_while_a_finished_jobs_pictures_are_written(tmp_path, monkeypatch):
    writing, release = _held_png_writes(monkeypatch)
    with client_for(tmp_path, max_batch=1) as client:  # one job at a time, one worker
        first = client.post("/v1/jobs", json=FAST).json()
        second = client.post("/v1/jobs", json={**FAST, "seed": 8}).json()
        assert writing.wait(30)  # the first job's picture is being written, held there
        # The worker did not wait for it: the second job runs meanwhile.
        wait_until(lambda: client.get(f"/v1/jobs/{second['id']}").json()["started_at"])
        assert client.get(f"/v1/jobs/{first['id']}").json()["status"] == "running"
        # Cancelling a job whose pictures are being written changes nothing: it succeeds.
        assert client.delete(f"/v1/jobs/{first['id']}").json()["status"] == "running"
        release.set()
        job = wait_for(client, first["id"])
        assert job["status"] == "succeeded" and len(job["results"]) == 1
        assert client.get(job["results"][0]["url"]).status_code == 200
        assert wait_for(client, second["id"])["status"] == "succeeded"


def test_stopping_the_server_writes_the_pictures_still_pending(tmp_path, monkeypatch):
    writing, release = _held_png_writes(monkeypatch)
    with client_for(tmp_path) as client:
        job = client.post("/v1/jobs", json=FAST).json()
        assert writing.wait(30)
        threading.Timer(0.3, release.set).start()  # the stop below waits for it
    with client_for(tmp_path) as client:  # a restart finds it done, not to be run again
        stored = client.get(f"/v1/jobs/{job['id']}").json()
        assert stored["status"] == "succeeded" and len(stored["results"]) == 1


def test_a_job_whose_pictures_cannot_be_written_fails_and_the_next_one_runs(tmp_path, monkeypatch):
    import sdgen.media.metadata as metadata

    save, calls = metadata.save_png, []

    def disk_full_once(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise OSError("disk full")
        return save(*args, **kwargs)

    monkeypatch.setattr(metadata, "save_png", disk_full_once)
    with client_for(tmp_path, max_batch=1) as client:
        lost = wait_for(client, client.post("/v1/jobs", json=FAST).json()["id"])
        assert lost["status"] == "failed" and lost["error"]["kind"] == "internal"
        assert "storing the pictures failed: OSError: disk full" in lost["error"]["message"]
        assert wait_for(client, client.post("/v1/jobs", json=FAST).json()["id"])["status"] == (
            "succeeded"
        )
