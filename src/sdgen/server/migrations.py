"""The job store's schema, one migration per version.

``MIGRATIONS[v]`` takes a database at version ``v - 1`` to version ``v``; a new sdgen appends a
migration and never edits an old one, so a data dir written by one version opens in the next.
The version lives in the ``schema_version`` table (version 0: an empty database).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable


def _create_v1(db: sqlite3.Connection) -> None:
    """Version 1: jobs (the request as sdgen's JSON) and their output pictures."""
    # One statement at a time: executescript would commit the migration's transaction.
    script = """
        CREATE TABLE schema_version (version INTEGER NOT NULL);
        CREATE TABLE jobs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- submission order
            id TEXT NOT NULL UNIQUE,
            origin TEXT NOT NULL,                    -- which API made it: v1 or a1111
            status TEXT NOT NULL,
            request TEXT NOT NULL,                   -- GenerationRequest.to_dict() as JSON
            pictures TEXT NOT NULL,                  -- JSON {field: file name under inputs/}
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            requeues INTEGER NOT NULL DEFAULT 0,     -- times re-queued after a crash
            device TEXT,
            error_kind TEXT,
            error_field TEXT,
            error_message TEXT
        );
        CREATE INDEX jobs_by_status ON jobs (status, seq);
        CREATE TABLE images (
            id TEXT PRIMARY KEY,
            job_id TEXT NOT NULL REFERENCES jobs (id),
            position INTEGER NOT NULL,               -- image index within the job
            seed INTEGER NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            file TEXT NOT NULL,                      -- name under images/, made by the server
            parameters TEXT NOT NULL                 -- A1111's infotext of the picture
        );
        CREATE INDEX images_by_job ON images (job_id, position);
        INSERT INTO schema_version (version) VALUES (0)
    """
    for statement in script.split(";"):
        db.execute(statement)


def _add_warnings_v2(db: sqlite3.Connection) -> None:
    """Version 2: a job's warnings (JSON list), e.g. a prompt the text encoder truncates."""
    db.execute("ALTER TABLE jobs ADD COLUMN warnings TEXT NOT NULL DEFAULT '[]'")


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _create_v1, 2: _add_warnings_v2}
LATEST = max(MIGRATIONS)


def schema_version(db: sqlite3.Connection) -> int:
    """The database's version; 0 for a new, empty one."""
    exists = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if not exists:
        return 0
    row = db.execute("SELECT version FROM schema_version").fetchone()
    return int(row[0]) if row else 0


def migrate(db: sqlite3.Connection) -> int:
    """Bring ``db`` (in autocommit mode) to ``LATEST``, one transaction per version.

    Raises RuntimeError for a database written by a newer sdgen, which this one cannot read.
    """
    current = schema_version(db)
    if current > LATEST:
        raise RuntimeError(
            f"the job database is at schema version {current}, newer than this sdgen's "
            f"({LATEST}); upgrade sdgen or use another --data-dir"
        )
    for version in range(current + 1, LATEST + 1):
        db.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[version](db)
            db.execute("UPDATE schema_version SET version = ?", (version,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    return LATEST
