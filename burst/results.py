"""A job's results on disk: `results.jsonl`, one line per finished task, appended and flushed
as each task finishes, so that Ctrl-C, a crash, the deadline or a lost cluster never loses
finished work; and read back to resume a job.

Values are stored as JSON the way a scientist expects them: numpy scalars as numbers, numpy
arrays as (nested) lists, sets as lists, dates as ISO strings; anything else as its repr.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from burst.errors import SpecError

RESULTS = "results.jsonl"
MANIFEST = "manifest.json"


@dataclass
class TaskOutcome:
    task: int
    input: Any
    status: str  # "done" or "failed"
    result: Any = None
    error: str | None = None
    worker: str | None = None
    seconds: float | None = None
    attempts: int | None = None  # how often the task was handed to a worker
    exit_code: int | None = None  # command tasks
    stdout_tail: str | None = None  # what the task printed (its last lines)
    stderr_tail: str | None = None  # ... and wrote to stderr, log records included

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict) -> TaskOutcome:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def to_json(value: Any) -> Any:
    """json.dumps' `default`: what JSON has no type for."""
    if hasattr(value, "tolist"):  # numpy arrays and scalars (and anything shaped like them)
        return value.tolist()
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return repr(value)


def dumps(data: Any, indent: int | None = None) -> str:
    return json.dumps(data, indent=indent, default=to_json)


class ResultsLog:
    """results.jsonl of one job: each outcome is one line, written and flushed at once."""

    def __init__(self, folder: Path, earlier: list[TaskOutcome] | None = None):
        self.path = folder / RESULTS
        self.outcomes: dict[int, TaskOutcome] = {o.task: o for o in earlier or []}
        self.carried = len(self.outcomes)  # finished by earlier runs of the job
        self._file: IO[str] | None = None

    def add(self, outcome: TaskOutcome) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a")  # noqa: SIM115 - kept open for the whole run
        self._file.write(dumps(outcome.to_dict()) + "\n")
        self._file.flush()
        self.outcomes[outcome.task] = outcome

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def done(self) -> list[TaskOutcome]:
        return [o for o in self.outcomes.values() if o.status == "done"]

    def failed(self) -> list[TaskOutcome]:
        return [o for o in self.outcomes.values() if o.status == "failed"]

    def in_order(self) -> list[TaskOutcome]:
        return [self.outcomes[i] for i in sorted(self.outcomes)]


JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def job_folder(outputs: str | Path, job_id: str) -> Path:
    """Where a job's results live. A job id given by a user names a folder under the
    outputs, and nothing else: no separators, no '..'."""
    if not JOB_ID.fullmatch(job_id) or ".." in job_id:
        raise SpecError([f"job id: {job_id!r} is not one (such as pi-20261128-041650-2a42)"])
    return Path(outputs) / job_id


def load_for_resume(folder: Path, tasks: list[Any]) -> tuple[list[TaskOutcome], dict]:
    """The done tasks of an earlier run of this job, and its manifest. The failed lines are
    dropped from results.jsonl (their tasks run again); a job whose tasks changed since is
    refused, since task numbers would no longer name the same inputs."""
    manifest_path, results_path = folder / MANIFEST, folder / RESULTS
    if not manifest_path.is_file():
        raise SpecError([f"--resume: no job at {folder} (its manifest.json is missing)"])
    manifest = json.loads(manifest_path.read_text())
    total = manifest.get("tasks", {}).get("total")
    if total != len(tasks):
        raise SpecError(
            [f"--resume: job {folder.name} had {total} tasks, this spec has {len(tasks)}"]
        )
    done: dict[int, TaskOutcome] = {}
    lines = results_path.read_text().splitlines() if results_path.is_file() else []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            outcome = TaskOutcome.from_dict(json.loads(line))
        except (ValueError, TypeError):
            if number == len(lines):
                continue  # the last line, cut short by a crash mid-write: run it again
            raise SpecError([f"--resume: {results_path} line {number} is not JSON"]) from None
        if outcome.status == "done" and 0 <= outcome.task < len(tasks):
            if dumps(outcome.input) != dumps(tasks[outcome.task]):
                raise SpecError(
                    [f"--resume: task {outcome.task}'s input changed since job {folder.name}"]
                )
            done[outcome.task] = outcome
    # Only the done lines stay: the rest is run again and appended.
    kept = "".join(dumps(o.to_dict()) + "\n" for o in done.values())
    temporary = results_path.with_suffix(".tmp")
    temporary.write_text(kept)
    os.replace(temporary, results_path)
    return list(done.values()), manifest
