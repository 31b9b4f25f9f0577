"""A job's results on disk: `results.jsonl`, one line per finished task, appended as tasks
finish (in batches at most FLUSH_SECONDS apart, and always when the run ends, however it
ends), so that Ctrl-C, the deadline or a lost cluster never loses finished work; and read back
to resume a job.

Values are stored as JSON the way a scientist expects them: numpy scalars as numbers, numpy
arrays as (nested) lists, sets as lists, dates as ISO strings; anything else as its repr.
"""

from __future__ import annotations

import csv
import json
import os
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any

from burst.drive import TaskOutcome, dumps, to_json
from burst.errors import SpecError

__all__ = [
    "ResultsLog",
    "TaskOutcome",
    "dumps",
    "job_folder",
    "load_for_resume",
    "output_folders",
    "private_folder",
    "to_json",
]

RESULTS = "results.jsonl"
MANIFEST = "manifest.json"
OUTPUTS = "outputs"
INDEX = "index.csv"  # in outputs/: each task's number, folder and parameters
FOLDER_NAME_MAX = 100  # characters; a longer name falls back to the task number


def private_folder(folder: Path) -> Path:
    """The job's results folder (and the outputs folder above it, when burst creates it),
    readable by its owner alone: results are private."""
    if not folder.parent.exists():
        folder.parent.mkdir(parents=True, mode=0o700)
    folder.mkdir(mode=0o700, exist_ok=True)
    folder.chmod(0o700)  # also one made by an earlier run, or by a looser umask
    return folder


def _safe(text: Any) -> str:
    """A parameter's name or value as a file name's part: letters, digits, '.', '+', '-' and
    '_' stay, anything else becomes '_'."""
    return re.sub(r"[^A-Za-z0-9.+_-]", "_", str(text))


def output_folders(rows: list[Any]) -> list[str]:
    """Each command task's outputs folder, in the job's results folder, named by its
    parameters: `outputs/seed=3,temp=0.5`. A name that two tasks would share (values that
    differ only in characters a file name cannot hold), one longer than FOLDER_NAME_MAX, or a
    task with no parameters falls back to the task's number: `outputs/7`."""
    names = []
    for row in rows:
        pairs = row.items() if isinstance(row, dict) else []
        name = ",".join(f"{_safe(key)}={_safe(value)}" for key, value in pairs)
        names.append("_" + name[1:] if name.startswith((".", "-")) else name)
    shared = Counter(names)
    return [
        f"{OUTPUTS}/{name}"
        if name and shared[name] == 1 and len(name) <= FOLDER_NAME_MAX
        else f"{OUTPUTS}/{number}"
        for number, name in enumerate(names)
    ]


def write_index(folder: Path, outcomes: list[TaskOutcome]) -> Path | None:
    """outputs/index.csv: one row per task whose outputs were collected, with its number,
    its folder and its parameters (one column each)."""
    kept = [o for o in outcomes if o.status == "done" and o.folder]
    if not kept:
        return None
    names: dict[str, None] = {}
    for outcome in kept:
        names.update(dict.fromkeys(outcome.input if isinstance(outcome.input, dict) else {}))
    path = folder / OUTPUTS / INDEX
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["task", "folder", *names])
        for o in kept:
            values = o.input if isinstance(o.input, dict) else {}
            writer.writerow([o.task, o.folder, *(values.get(n, "") for n in names)])
    return path


FLUSH_SECONDS = 0.5  # results.jsonl: finished lines reach the file at most this late


class ResultsLog:
    """results.jsonl of one job: each outcome is one line. Lines are written in batches: the
    first at once, then at most every `flush_seconds` (a timer writes what is pending), and
    always on close(), which the runner calls on every path (the end, the deadline, Ctrl-C,
    a lost cluster, an error). Only a kill -9 of the client can lose the last
    `flush_seconds` of finished lines, which --resume then runs again. `flush_seconds=0`
    writes each line at once."""

    def __init__(
        self,
        folder: Path,
        earlier: list[TaskOutcome] | None = None,
        flush_seconds: float = FLUSH_SECONDS,
    ):
        self.path = folder / RESULTS
        self.outcomes: dict[int, TaskOutcome] = {o.task: o for o in earlier or []}
        self.carried = len(self.outcomes)  # finished by earlier runs of the job
        self.count = {"done": 0, "failed": 0}  # kept as they come: progress is per task
        for outcome in self.outcomes.values():
            self.count[outcome.status] += 1
        self.flush_seconds = flush_seconds
        self.flushes = 0  # writes to the file, for the benchmark
        self._file: IO[str] | None = None
        self._pending: list[str] = []
        self._flushed_at = float("-inf")
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def add(self, outcome: TaskOutcome) -> None:
        with self._lock:
            self._pending.append(dumps(outcome.to_dict()) + "\n")
            wait = self._flushed_at + self.flush_seconds - time.monotonic()
            if wait <= 0:
                self._write()
            elif self._timer is None:  # the pending lines go out when their time comes
                self._timer = threading.Timer(wait, self.flush)
                self._timer.daemon = True
                self._timer.start()
        if outcome.task in self.outcomes:
            self.count[self.outcomes[outcome.task].status] -= 1
        self.outcomes[outcome.task] = outcome
        self.count[outcome.status] += 1

    def flush(self) -> None:
        """Write the pending lines now."""
        with self._lock:
            self._write()

    def _write(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        if self._file is None:
            private_folder(self.path.parent)
            self._file = open(self.path, "a")  # noqa: SIM115 - kept open for the whole run
        self._file.write("".join(self._pending))
        self._file.flush()
        self._pending.clear()
        self._flushed_at = time.monotonic()
        self.flushes += 1

    def close(self) -> None:
        """Write what is pending and close the file."""
        with self._lock:
            self._write()
            if self._file is not None:
                self._file.close()
                self._file = None

    def rewrite(self) -> None:
        """The whole file from the outcomes, in task order (once attempts are known)."""
        self.close()
        write_lines(self.path, self.in_order())

    def done(self) -> list[TaskOutcome]:
        return [o for o in self.in_order() if o.status == "done"]

    def failed(self) -> list[TaskOutcome]:
        return [o for o in self.in_order() if o.status == "failed"]

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
    write_lines(results_path, list(done.values()))  # the rest runs again and is appended
    return list(done.values()), manifest


def write_lines(path: Path, outcomes: list[TaskOutcome]) -> None:
    """results.jsonl replaced at once (a reader never sees half of it)."""
    private_folder(path.parent)
    temporary = path.with_suffix(".tmp")
    temporary.write_text("".join(dumps(o.to_dict()) + "\n" for o in outcomes))
    os.replace(temporary, path)
