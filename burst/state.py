"""The jobs this machine started: a small SQLite index in $BURST_HOME.

A cache of what the cloud says, never the truth: tags find every cluster and the bucket holds
a detached job's status, so a lost or stale index loses nothing. `burst ls` reconciles it.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from burst.home import burst_home, ensure_home

COLUMNS = (
    "job_id",
    "name",
    "mode",  # attached (burst run) or detached (burst submit)
    "cloud",
    "region",
    "cluster_id",
    "state",  # launching, running, succeeded, failed, deadline, cancelled, error, interrupted
    "cores",
    "cost",  # dollars billed so far, as text
    "folder",  # where the results land
    "created_at",
    "updated_at",
)


def path() -> Path:
    return burst_home() / "jobs.sqlite"


@contextmanager
def _database() -> Iterator[sqlite3.Connection]:
    ensure_home()
    # Readable by its owner alone: job names, buckets and folders are nobody else's business.
    os.close(os.open(path(), os.O_CREAT | os.O_RDWR, 0o600))
    # Several burst processes may write at once: wait for the lock rather than fail.
    with closing(sqlite3.connect(path(), timeout=30)) as db, db:
        db.row_factory = sqlite3.Row
        db.execute(
            "CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, "
            + ", ".join(f"{c} TEXT" for c in COLUMNS[1:])
            + ")"
        )
        yield db


def record(job_id: str, **fields: Any) -> None:
    """Create or update a job's row with the fields given (unknown names are refused)."""
    unknown = set(fields) - set(COLUMNS)
    if unknown:
        raise ValueError(f"no such job column: {sorted(unknown)}")
    now = str(time.time())
    fields = {k: None if v is None else str(v) for k, v in fields.items()}
    with _database() as db:
        db.execute(
            "INSERT INTO jobs (job_id, created_at, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(job_id) DO NOTHING",
            (job_id, now, now),
        )
        names = [*fields, "updated_at"]
        db.execute(
            f"UPDATE jobs SET {', '.join(f'{n} = ?' for n in names)} WHERE job_id = ?",
            (*fields.values(), now, job_id),
        )


def get(job_id: str) -> dict[str, Any] | None:
    with _database() as db:
        row = db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    return dict(row) if row else None


def jobs() -> list[dict[str, Any]]:
    """Every job, newest first."""
    with _database() as db:
        rows = db.execute("SELECT * FROM jobs ORDER BY CAST(created_at AS REAL) DESC").fetchall()
    return [dict(r) for r in rows]
