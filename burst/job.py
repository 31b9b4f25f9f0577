"""The user's job: a validated spec with its code imported and its tasks loaded (a command
job's parameter rows, template and files come from burst.sweep). Nothing is launched here."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from burst import sweep
from burst.errors import SpecError
from burst.spec import JobSpec, RunSpec, TaskFile, TaskRange, load_spec


@dataclass(frozen=True)
class Job:
    """A validated spec with its code imported: everything needed to run, nothing launched.

    A command job has no function: its tasks are rows of parameters and `command` holds the
    template's argv tokens (see burst.sweep)."""

    spec: JobSpec
    folder: Path
    function: Callable[[Any], Any] | None
    tasks: list[Any]
    reduce: Callable[[list[Any]], Any] | None
    command: list[str] | None = None
    files: list[Path] | None = None  # the spec folder's files shipped with a command job


def import_entry_point(entry: str, folder: Path, field: str) -> Callable:
    """Import 'module:callable' from the spec's folder (the job's own code ships by value)."""
    module_name, _, attr = entry.partition(":")
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except Exception as error:  # any import-time failure is the user's to fix
        raise SpecError(
            [
                f"{field}: cannot import {entry!r} from {folder}: {type(error).__name__}: {error}; "
                "accepted: 'module:callable' where module.py sits next to the spec"
            ]
        ) from None
    if not callable(target):
        raise SpecError([f"{field}: {entry!r} is not callable"])
    return target


def _load_tasks(run: RunSpec, folder: Path) -> list[Any]:
    if isinstance(run.tasks, TaskRange):
        tasks = run.tasks.values()
    elif isinstance(run.tasks, TaskFile):
        kind = run.tasks.kind
        tasks = sweep.read_rows(folder, run.tasks.name, kind, f"run.tasks.{kind}")
    else:
        tasks = list(run.tasks)
    if not tasks:
        raise SpecError(["run.tasks: at least one task is needed (got none)"])
    return tasks


def load_job(path: str | Path, overrides: dict[str, Any] | None = None) -> Job:
    """Read a YAML spec, validate it and import its code; raises SpecError, never launches."""
    return job_from_spec(load_spec(path, overrides), Path(path).resolve().parent)


def job_from_spec(spec: JobSpec, folder: Path) -> Job:
    if spec.run is None:
        raise SpecError(["run: a 'run' section with 'function' and 'tasks' is needed to run a job"])

    missing = sweep.missing_inputs(spec.inputs, folder)
    if missing:
        raise SpecError(missing)
    if spec.run.command is not None:
        rows = sweep.load_params(spec.run.params, folder)
        argv = sweep.check_template(spec.run.command, rows)
        reduce = None
        if spec.run.reduce:
            sys.modules.pop(spec.run.reduce.partition(":")[0], None)
            reduce = import_entry_point(spec.run.reduce, folder, "run.reduce")
        files = sweep.job_files(folder, spec)
        return Job(spec, folder, None, rows, reduce, command=argv, files=files)
    # Import the job's code afresh: a notebook re-run, or another spec with a module of the
    # same name, must not get the module cached by an earlier load.
    for entry in filter(None, (spec.run.function, spec.run.reduce)):
        sys.modules.pop(entry.partition(":")[0], None)
    function = import_entry_point(spec.run.function, folder, "run.function")
    reduce = import_entry_point(spec.run.reduce, folder, "run.reduce") if spec.run.reduce else None
    return Job(spec, folder, function, _load_tasks(spec.run, folder), reduce)
