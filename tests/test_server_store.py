"""The job store: durable jobs, input pictures kept, schema versions, recovery at start."""

from __future__ import annotations

import json
import sqlite3

import pytest
from PIL import Image

from sdgen.errors import SdgenError
from sdgen.params import GenerationRequest, InputPicture
from sdgen.server.migrations import LATEST
from sdgen.server.store import JobStore, new_id

# Version 1 of the schema as sdgen 0.1 wrote it, frozen here on purpose: a later migration must
# still open a database made by exactly this.
V1_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
INSERT INTO schema_version (version) VALUES (1);
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, origin TEXT NOT NULL,
    status TEXT NOT NULL, request TEXT NOT NULL, pictures TEXT NOT NULL,
    created_at REAL NOT NULL, started_at REAL, finished_at REAL,
    requeues INTEGER NOT NULL DEFAULT 0, device TEXT,
    error_kind TEXT, error_field TEXT, error_message TEXT
);
CREATE INDEX jobs_by_status ON jobs (status, seq);
CREATE TABLE images (
    id TEXT PRIMARY KEY, job_id TEXT NOT NULL REFERENCES jobs (id), position INTEGER NOT NULL,
    seed INTEGER NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL,
    file TEXT NOT NULL, parameters TEXT NOT NULL
);
CREATE INDEX images_by_job ON images (job_id, position);
"""


def _picture(color, mode="RGB") -> InputPicture:
    return InputPicture.from_image(Image.new(mode, (64, 64), color))


def test_a_version_1_database_opens_and_its_jobs_run_again(tmp_path):
    request = GenerationRequest("a blue square", steps=3, seed=5, width=64, height=64)
    job_id = new_id()
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
        db.executescript(V1_SCHEMA)
        db.execute(
            "INSERT INTO jobs (id, origin, status, request, pictures, created_at)"
            " VALUES (?, 'v1', 'queued', ?, '{}', 1.0)",
            (job_id, json.dumps(request.to_dict())),
        )
    store = JobStore(tmp_path)
    try:
        [record] = store.recover()
        assert record.id == job_id and record.status == "queued"
        assert store.request_of(record) == request
    finally:
        store.close()


def test_a_database_from_a_newer_sdgen_is_refused_with_a_clear_error(tmp_path):
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (?)", (LATEST + 1,))
    with pytest.raises(SdgenError, match="newer than this sdgen"):
        JobStore(tmp_path)


def test_a_new_store_is_at_the_latest_version_in_wal_mode(tmp_path):
    JobStore(tmp_path).close()
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
        assert db.execute("SELECT version FROM schema_version").fetchone() == (LATEST,)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_an_accepted_job_is_on_disk_with_its_input_pictures(tmp_path):
    request = GenerationRequest(
        "repaint",
        steps=3,
        seed=1,
        init_image=_picture((200, 30, 30)),
        mask=_picture(255, mode="L"),
    )
    store = JobStore(tmp_path)
    job_id = new_id()
    store.add(job_id, request, "v1")
    # A second connection (another process after a crash) sees the committed job.
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
        assert db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone() == (
            "queued",
        )
    store.close()
    store = JobStore(tmp_path)
    try:
        again = store.request_of(store.get(job_id))
        assert again == request  # pictures compared by their pixels' hash
        assert again.init_image.image.mode == "RGB" and again.mask.image.mode == "L"
    finally:
        store.close()


def test_a_running_job_is_requeued_once_then_interrupted(tmp_path):
    request = GenerationRequest("x", steps=3, seed=1)
    store = JobStore(tmp_path)
    running, queued = new_id(), new_id()
    store.add(running, request, "v1")
    store.add(queued, request, "v1")
    store.mark_running(running, "cpu")
    store.close()  # the server dies here

    store = JobStore(tmp_path)
    assert [r.id for r in store.recover()] == [running, queued]  # in submission order
    assert store.get(running).status == "queued" and store.get(running).requeues == 1
    store.mark_running(running, "cpu")
    store.close()  # and dies again while the same job runs

    store = JobStore(tmp_path)
    try:
        assert [r.id for r in store.recover()] == [queued]
        record = store.get(running)
        assert record.status == "interrupted" and record.error["kind"] == "interrupted"
        assert store.get(queued).status == "queued"
    finally:
        store.close()


def test_two_servers_cannot_share_a_data_dir(tmp_path):
    store = JobStore(tmp_path)
    try:
        with pytest.raises(SdgenError, match="in use"):
            JobStore(tmp_path)
    finally:
        store.close()
    JobStore(tmp_path).close()  # free again once closed


def test_ids_that_are_not_ids_are_never_looked_up(tmp_path):
    (tmp_path / "secret.png").write_bytes(b"secret")
    store = JobStore(tmp_path)
    try:
        for bad in ("../secret", "/etc/passwd", "..%2Fsecret", "secret", "A" * 32):
            assert store.get(bad) is None
            assert store.image_file(bad) is None
    finally:
        store.close()
