"""The job store: SQLite (WAL) in the data dir, with the pictures as files beside it.

    DATA_DIR/jobs.sqlite3       jobs and their pictures' records
    DATA_DIR/inputs/            uploaded init pictures and masks, ``{job id}-{field}.png``
    DATA_DIR/images/            output pictures, ``{image id}.png`` with their metadata

Every write is committed (synchronous=FULL) before the call returns, so an accepted job survives
a crash of the process or the machine. Input pictures are kept so that a job re-queued after a
restart has its inputs. File names are made here from ids the server generated; nothing a
request says is ever used as a path.

At start, ``recover`` decides what runs again: queued jobs stay queued; a job that was running
is re-queued once, and marked ``interrupted`` if it was running at a crash again.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sdgen.errors import SdgenError
from sdgen.params import PICTURE_FIELDS, GenerationRequest

from .migrations import migrate

if TYPE_CHECKING:
    from PIL.Image import Image

    from sdgen.media.metadata import ImageRecord

DB_NAME = "jobs.sqlite3"
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "interrupted"})
MAX_REQUEUES = 1  # a job running at a crash runs once more; if it was again, it is interrupted
_ID = re.compile(r"[0-9a-f]{32}")


def new_id() -> str:
    """A job or picture id: 32 lowercase hex digits, random."""
    return uuid.uuid4().hex


def is_id(text: str) -> bool:
    """Whether ``text`` has the form of an id (the only form ever looked up)."""
    return bool(_ID.fullmatch(text))


@dataclass(frozen=True)
class StoredImage:
    id: str
    position: int
    seed: int
    width: int
    height: int
    parameters: str


@dataclass(frozen=True)
class JobRecord:
    id: str
    origin: str
    status: str
    request: dict  # GenerationRequest.to_dict()
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    requeues: int = 0
    device: str | None = None
    error: dict | None = None  # {"kind", "field", "message"}
    warnings: list[str] = field(default_factory=list)  # what runs but not as asked (truncation)
    images: list[StoredImage] = field(default_factory=list)
    pictures: dict[str, str] = field(default_factory=dict)  # field -> file under inputs/

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class JobStore:
    """Jobs in ``data_dir``; safe to use from several threads (one connection, one lock)."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.inputs_dir = self.data_dir / "inputs"
        self.images_dir = self.data_dir / "images"
        for folder in (self.data_dir, self.inputs_dir, self.images_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._dir_lock = _lock_dir(self.data_dir)
        try:
            self._db = sqlite3.connect(
                self.data_dir / DB_NAME, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # committed means on disk
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=5000")
            migrate(self._db)
        except (sqlite3.Error, RuntimeError) as err:
            self._dir_lock.close()
            message = f"data dir: {self.data_dir} cannot hold the job store ({err})"
            raise SdgenError(message) from err

    def close(self) -> None:
        with self._lock:
            self._db.close()
        self._dir_lock.close()  # closing the file releases the lock

    # -- writes ------------------------------------------------------------------------------

    def add(
        self,
        job_id: str,
        request: GenerationRequest,
        origin: str,
        warnings: Iterable[str] = (),
    ) -> None:
        """Store a new queued job: its input pictures as files, then its row, committed."""
        pictures = {}
        for name in PICTURE_FIELDS:
            picture = getattr(request, name)
            if picture is not None:
                pictures[name] = f"{job_id}-{name}.png"
                picture.image.save(self.inputs_dir / pictures[name], format="PNG")  # lossless
        with self._transaction() as db:
            db.execute(
                "INSERT INTO jobs (id, origin, status, request, pictures, created_at, warnings)"
                " VALUES (?, ?, 'queued', ?, ?, ?, ?)",
                (
                    job_id,
                    origin,
                    json.dumps(request.to_dict()),
                    json.dumps(pictures),
                    time.time(),
                    json.dumps(list(warnings)),
                ),
            )

    def mark_running(self, job_id: str, device: str) -> None:
        self._update(job_id, "status = 'running', started_at = ?, device = ?", time.time(), device)

    def mark_queued(self, job_id: str) -> None:
        """A running job handed back by a stopping engine: it runs again at the next start."""
        self._update(job_id, "status = 'queued'", status_in=("running",))

    def mark_succeeded(
        self,
        job_id: str,
        images: Iterable[tuple[StoredImage, Image, ImageRecord]],
        *,
        metadata: bool = True,
    ) -> None:
        """Write the pictures (with their metadata chunks unless not ``metadata``), then record
        them and the job's end."""
        from sdgen.media.metadata import save_png

        images = list(images)
        for image, picture, record in images:
            save_png(picture, self.images_dir / f"{image.id}.png", record, metadata=metadata)
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO images (id, job_id, position, seed, width, height, file, parameters)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (i.id, job_id, i.position, i.seed, i.width, i.height, f"{i.id}.png")
                    + (i.parameters,)
                    for i, _, _ in images
                ],
            )
            db.execute(
                "UPDATE jobs SET status = 'succeeded', finished_at = ? WHERE id = ?",
                (time.time(), job_id),
            )

    def mark_failed(
        self, job_id: str, kind: str, message: str, field: str | None, status: str = "failed"
    ) -> None:
        self._update(
            job_id,
            "status = ?, finished_at = ?, error_kind = ?, error_field = ?, error_message = ?",
            status,
            time.time(),
            kind,
            field,
            message,
        )

    def mark_cancelled(self, job_id: str) -> bool:
        """Cancel a job that has not ended; False if it had."""
        return self._update(
            job_id,
            "status = 'cancelled', finished_at = ?",
            time.time(),
            status_in=("queued", "running"),
        )

    def recover(self) -> list[JobRecord]:
        """At start: the jobs to run again, in submission order (see the module's docstring)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET status = 'interrupted', finished_at = ?,"
                " error_kind = 'interrupted',"
                " error_message = 'the server stopped while this job ran, twice'"
                " WHERE status = 'running' AND requeues >= ?",
                (time.time(), MAX_REQUEUES),
            )
            db.execute(
                "UPDATE jobs SET status = 'queued', requeues = requeues + 1, started_at = NULL,"
                " device = NULL WHERE status = 'running'"
            )
        return self.list_jobs(status="queued", limit=None, oldest_first=True)[0]

    # -- reads -------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        if not is_id(job_id):
            return None
        with self._lock:
            sql = f"SELECT {_COLUMNS} FROM jobs WHERE id = ?"
            row = self._db.execute(sql, (job_id,)).fetchone()
            return self._record(row) if row else None

    def list_jobs(
        self,
        status: str | None = None,
        limit: int | None = 50,
        offset: int = 0,
        oldest_first: bool = False,
    ) -> tuple[list[JobRecord], int]:
        """A page of jobs (newest first unless ``oldest_first``) and how many match in all."""
        where, args = ("WHERE status = ?", [status]) if status else ("", [])
        order = "ASC" if oldest_first else "DESC"
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM jobs {where}", args).fetchone()[0]
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM jobs {where} ORDER BY seq {order} LIMIT ? OFFSET ?",
                [*args, -1 if limit is None else limit, offset],
            ).fetchall()
            return [self._record(row) for row in rows], total

    def request_of(self, record: JobRecord) -> GenerationRequest:
        """The job's request with its input pictures read back (and checked against the hashes)."""
        from sdgen.media.images import read_picture

        pictures = {
            name: read_picture(self.inputs_dir / file, name, mode="L" if name == "mask" else "RGB")
            for name, file in record.pictures.items()
        }
        return GenerationRequest.from_dict(record.request, pictures)

    def image_file(self, image_id: str) -> Path | None:
        """The file of output picture ``image_id``, found through its record; None if unknown."""
        if not is_id(image_id):
            return None
        with self._lock:
            row = self._db.execute("SELECT file FROM images WHERE id = ?", (image_id,)).fetchone()
        if row is None:
            return None
        path = self.images_dir / row[0]
        return path if path.is_file() else None

    def image_bytes(self, image_id: str) -> bytes | None:
        path = self.image_file(image_id)
        return path.read_bytes() if path else None

    # -- helpers -----------------------------------------------------------------------------

    def _transaction(self):
        return _Transaction(self._db, self._lock)

    def _update(self, job_id: str, assignments: str, *args, status_in=None) -> bool:
        sql = f"UPDATE jobs SET {assignments} WHERE id = ?"
        params = [*args, job_id]
        if status_in:
            sql += f" AND status IN ({', '.join('?' * len(status_in))})"
            params += list(status_in)
        with self._transaction() as db:
            return db.execute(sql, params).rowcount > 0

    def _record(self, row: tuple) -> JobRecord:
        values = dict(zip(_COLUMN_NAMES, row, strict=True))
        error = None
        if values["error_kind"]:
            error = {
                "kind": values["error_kind"],
                "field": values["error_field"],
                "message": values["error_message"],
            }
        images = [
            StoredImage(*image)
            for image in self._db.execute(
                "SELECT id, position, seed, width, height, parameters FROM images"
                " WHERE job_id = ? ORDER BY position",
                (values["id"],),
            )
        ]
        return JobRecord(
            id=values["id"],
            origin=values["origin"],
            status=values["status"],
            request=json.loads(values["request"]),
            created_at=values["created_at"],
            started_at=values["started_at"],
            finished_at=values["finished_at"],
            requeues=values["requeues"],
            device=values["device"],
            error=error,
            warnings=json.loads(values["warnings"]),
            images=images,
            pictures=json.loads(values["pictures"]),
        )


_COLUMN_NAMES = (
    "id",
    "origin",
    "status",
    "request",
    "pictures",
    "created_at",
    "started_at",
    "finished_at",
    "requeues",
    "device",
    "error_kind",
    "error_field",
    "error_message",
    "warnings",
)
_COLUMNS = ", ".join(_COLUMN_NAMES)


def _lock_dir(data_dir: Path):
    """Hold an exclusive lock on the data dir: two servers would run the same recovered jobs.

    The OS releases it when the process dies, so a killed server never leaves it behind.
    """
    handle = open(data_dir / "lock", "a+b")  # noqa: SIM115 (held until close)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one server per data dir is up to the user
        return handle
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        handle.close()
        raise SdgenError(f"data dir: {data_dir} is in use by another sdgen serve") from err
    return handle


class _Transaction:
    """``with``: the store's lock held, BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error)."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock):
        self.db, self.lock = db, lock

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, value, traceback) -> None:
        try:
            self.db.execute("ROLLBACK" if kind else "COMMIT")
        finally:
            self.lock.release()
