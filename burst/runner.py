"""Runs a job on a BurstCluster: map the function over the tasks, collect, reduce, report.

The results folder gets `results.jsonl` (one line per task) and `manifest.json` (what ran
where, for how long, at what estimated cost, and the teardown verification). The manifest is
written on every path that got as far as launching, success or not.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import cloudpickle
from distributed import Client, as_completed

from burst.bootstrap import client_versions
from burst.cloud.base import InstanceRecord, TeardownReport
from burst.cluster import BurstCluster, EventHandler, new_job_id
from burst.spec import Job, JobSpec, job_from_spec, load_job, parse_spec


@dataclass
class TaskOutcome:
    task: int
    input: Any
    status: str  # "done" or "failed"
    result: Any = None
    error: str | None = None
    worker: str | None = None
    seconds: float | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class JobResult:
    job_id: str
    status: str  # "succeeded", "failed" (some tasks failed), "error", "interrupted"
    folder: Path
    manifest: dict
    outcomes: list[TaskOutcome] = field(default_factory=list)
    result: Any = None

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    @property
    def results(self) -> list[Any]:
        return [o.result for o in self.outcomes if o.status == "done"]

    @property
    def failures(self) -> list[TaskOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def to_dataframe(self):
        import pandas

        return pandas.DataFrame([o.to_dict() for o in self.outcomes])


def _timed(function: Callable[[Any], Any]) -> Callable[[Any], dict]:
    """Wrap the job's function to report its worker and run time. Defined as a closure so
    cloudpickle ships it by value: workers need no copy of burst."""

    def call(task: Any) -> dict:
        import time as clock

        from distributed import get_worker

        started = clock.perf_counter()
        value = function(task)
        return {
            "value": value,
            "seconds": clock.perf_counter() - started,
            "worker": get_worker().name,
        }

    return call


def _ship_by_value(*functions: Callable | None) -> None:
    """Job code lives next to the spec, not on the workers: pickle its modules by value."""
    for function in functions:
        module = sys.modules.get(getattr(function, "__module__", ""))
        if module is not None and not module.__name__.startswith(("burst", "builtins")):
            cloudpickle.register_pickle_by_value(module)


def map_tasks(client: Client, job: Job, emit: EventHandler) -> list[TaskOutcome]:
    _ship_by_value(job.function)
    retries = job.spec.run.retries if job.spec.run else 0
    futures = client.map(
        _timed(job.function),
        job.tasks,
        retries=retries,
        pure=False,
        key=[f"task-{i}" for i in range(len(job.tasks))],
    )
    index = {f.key: i for i, f in enumerate(futures)}
    outcomes: dict[int, TaskOutcome] = {}
    failed = 0
    emit("tasks", done=0, failed=0, total=len(futures))
    for future in as_completed(futures):
        i = index[future.key]
        if future.status == "finished":
            reply = future.result()
            outcomes[i] = TaskOutcome(
                i,
                job.tasks[i],
                "done",
                reply["value"],
                worker=reply["worker"],
                seconds=reply["seconds"],
            )
        else:
            error = future.exception()
            tail = "".join(traceback.format_tb(future.traceback())[-3:])
            outcomes[i] = TaskOutcome(
                i, job.tasks[i], "failed", error=f"{type(error).__name__}: {error}\n{tail}".strip()
            )
            failed += 1
        emit("tasks", done=len(outcomes) - failed, failed=failed, total=len(futures))
        future.release()
    return [outcomes[i] for i in range(len(futures))]


def _json_default(value: Any) -> Any:
    return repr(value)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def run_job(job: Job, on_event: EventHandler | None = None) -> JobResult:
    """Plan, launch, run, collect and tear down; the teardown runs on every path."""
    spec = job.spec
    emit = on_event or (lambda event, **info: None)
    job_id = new_job_id(spec.name)
    folder = Path(spec.outputs) / job_id
    started_at = datetime.now(UTC)
    teardown: list[TeardownReport] = []
    instances: dict[str, InstanceRecord] = {}

    def observe(event: str, **info: Any) -> None:
        if event == "torn_down":
            teardown.append(info["report"])
        elif event == "launched":
            instances.update({r.instance_id: r for r in info["records"]})
        emit(event, **info)

    cluster: BurstCluster | None = None
    outcomes: list[TaskOutcome] = []
    reduced = None
    status = "error"
    timings: dict[str, float] = {}
    manifest: dict = {}
    try:
        cluster = BurstCluster(spec, job_id=job_id, on_event=observe)
        with Client(cluster) as client:
            started = time.monotonic()
            outcomes = map_tasks(client, job, emit)
            timings["run"] = time.monotonic() - started
        started = time.monotonic()
        failures = [o for o in outcomes if o.status == "failed"]
        if job.reduce and not failures:
            reduced = job.reduce([o.result for o in outcomes])
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "results.jsonl", "w") as out:
            for outcome in outcomes:
                out.write(json.dumps(outcome.to_dict(), default=_json_default) + "\n")
        timings["collect"] = time.monotonic() - started
        status = "failed" if failures else "succeeded"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        if cluster is not None:
            cluster.close()
            timings = {**cluster.timings, **timings}
        if instances or teardown:
            manifest = _manifest(
                job,
                job_id,
                cluster,
                status,
                outcomes,
                reduced,
                timings,
                list(instances.values()),
                teardown,
                started_at,
            )
            folder.mkdir(parents=True, exist_ok=True)
            _write_json(folder / "manifest.json", manifest)
            emit("manifest", path=folder / "manifest.json", manifest=manifest)
    return JobResult(job_id, status, folder, manifest, outcomes, reduced)


def _manifest(
    job: Job,
    job_id: str,
    cluster: BurstCluster | None,
    status: str,
    outcomes: list[TaskOutcome],
    reduced: Any,
    timings: dict[str, float],
    instances: list[InstanceRecord],
    teardown: list[TeardownReport],
    started_at: datetime,
) -> dict:
    ended_at = datetime.now(UTC)
    workers = [i for i in instances if i.role == "worker"]
    failures = [o for o in outcomes if o.status == "failed"]
    plan = cluster.capacity_plan if cluster else None
    return {
        "job_id": job_id,
        "cluster_id": cluster.cluster_id if cluster else None,
        "status": status,
        "result": reduced,
        "tasks": {
            "total": len(job.tasks),
            "done": len(outcomes) - len(failures),
            "failed": len(failures),
        },
        "failures": [{"task": o.task, "input": o.input, "error": o.error} for o in failures[:50]],
        "cores": {"requested": job.spec.cores, "worker_vcpus": sum(i.vcpus for i in workers)},
        "instances": [i.to_dict() for i in instances],
        "plan": plan.to_dict() if plan else None,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "teardown": teardown[0].to_dict()
        if teardown
        else {"verified": False, "leftovers": ["unknown"]},
        "started_at": started_at.isoformat(),
        "ended_at": ended_at.isoformat(),
        "wall_seconds": round((ended_at - started_at).total_seconds(), 3),
        "spec": job.spec.model_dump(mode="json"),
        "versions": {**client_versions(), "burst": version("burst")},
    }


def run(
    spec: str | Path | JobSpec | dict,
    on_event: EventHandler | None = None,
    folder: str | Path = ".",
) -> JobResult:
    """The notebook entry point: run a spec (a path, a JobSpec or a dict) to completion."""
    if isinstance(spec, str | Path):
        return run_job(load_job(spec), on_event)
    if isinstance(spec, dict):
        spec = parse_spec(spec)
    return run_job(job_from_spec(spec, Path(folder).resolve()), on_event)
