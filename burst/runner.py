"""Runs a job on a BurstCluster: map the function over the tasks, collect, reduce, report.

The results folder gets `results.jsonl` (one line per task) and `manifest.json` (what ran
where, for how long, at what estimated cost, and the teardown verification). The manifest is
written on every path that got as far as launching, success or not.
"""

from __future__ import annotations

import html
import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path
from typing import Any

import cloudpickle
from distributed import Client, as_completed

from burst import events, taskrun, transfer
from burst.bootstrap import client_versions
from burst.cloud.base import CloudError
from burst.cluster import BurstCluster, new_job_id
from burst.cost import cost_report, instance_cost
from burst.events import EventHandler
from burst.job import Job, job_from_spec, load_job
from burst.spec import JobSpec, merged, parse_spec


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
    stderr_tail: str | None = None  # command tasks that failed

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

    @property
    def timings(self) -> dict[str, float]:
        """Seconds per stage (plan, connect, provision, bootstrap, run, collect, teardown)."""
        return dict(self.manifest.get("timings", {}))

    @property
    def cost(self) -> dict:
        """In dollars (Decimal): `actual` (billed per second, 60 s minimum, at the prices the
        instances were launched at), `hourly` (what was launched), `planned_hourly`, `bound`
        (the plan's cost bound) and `price_source`. Empty if the job never planned."""
        cost = self.manifest.get("cost")
        if not cost:
            return {}
        return {
            "actual": Decimal(cost["actual"]),
            "complete": cost["actual_complete"],
            "hourly": Decimal(cost["launched_hourly"]),
            "planned_hourly": Decimal(cost["planned_hourly"]),
            "bound": Decimal(cost["cost_bound"]),
            "price_source": cost["price_source"],
        }

    def to_dataframe(self):
        """One row per task, indexed by task number: status, input, result, error, worker and
        seconds; dict inputs and results are spread into `input.<key>` and `result.<key>`."""
        try:
            import pandas
        except ImportError:
            raise ImportError(
                "JobResult.to_dataframe() needs pandas: pip install pandas "
                "(or pip install 'burst[notebook]'); .results and .failures need nothing"
            ) from None
        rows = [o.to_dict() for o in self.outcomes]
        frame = pandas.json_normalize(rows, max_level=1) if rows else pandas.DataFrame()
        first = ["task", "status"]
        return frame[first + [c for c in frame.columns if c not in first]].set_index("task")

    def _repr_html_(self) -> str:
        tasks = self.manifest.get("tasks", {})
        teardown = self.manifest.get("teardown", {})
        return (
            f"<b>Job {html.escape(self.job_id)}</b>: {html.escape(self.status)}; "
            f"{tasks.get('done', 0)} done, {tasks.get('failed', 0)} failed of "
            f"{tasks.get('total', 0)}; ${self.cost.get('actual', 0):.4f} billed; teardown "
            f"{'verified' if teardown.get('verified') else 'NOT verified'}; results in "
            f"<code>{html.escape(str(self.folder))}</code>"
        )


STAGES = ("plan", "connect", "provision", "bootstrap", "run", "collect", "teardown")


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


def by_value(target: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A closure cannot be pickled by reference, so distributed hands the task to cloudpickle,
    which then honours register_pickle_by_value for the target (workers have no burst)."""

    def call(item: Any) -> Any:
        return target(item)

    return call


def _ship_by_value(folder: Path) -> None:
    """Job code lives next to the spec, not on the workers: pickle every module loaded from
    the spec's folder by value (the function's module and what it imports from there)."""
    environment = Path(sys.prefix).resolve()  # a virtualenv may sit inside the folder
    for module in list(sys.modules.values()):
        path = Path(getattr(module, "__file__", None) or "/").resolve()
        if path.is_relative_to(folder) and not path.is_relative_to(environment):
            cloudpickle.register_pickle_by_value(module)


def _failure(i: int, task: Any, future, command: bool) -> TaskOutcome:
    error = future.exception()
    details = error.args[1] if command and len(error.args) == 2 else None
    if isinstance(error, RuntimeError) and isinstance(details, dict) and "cause" in details:
        # a failed command (burst.taskrun.CommandTask): its cause and output tails
        return TaskOutcome(
            i,
            task,
            "failed",
            error=details["cause"],
            worker=details.get("worker"),
            exit_code=details.get("exit_code"),
            stderr_tail=details.get("stderr_tail", ""),
        )
    tail = "".join(traceback.format_tb(future.traceback())[-3:])
    return TaskOutcome(i, task, "failed", error=f"{type(error).__name__}: {error}\n{tail}".strip())


def map_tasks(
    client: Client, job: Job, emit: EventHandler, command: taskrun.CommandTask | None = None
) -> list[TaskOutcome]:
    """Run every task (the job's function, or its command); count each task's attempts."""
    _ship_by_value(job.folder)
    cloudpickle.register_pickle_by_value(taskrun)  # the nodes have no copy of burst
    client.register_plugin(taskrun.AttemptCounter())  # a fresh count for this job
    retries = job.spec.run.retries if job.spec.run else 0
    futures = client.map(
        by_value(command) if command else _timed(job.function),
        list(enumerate(job.tasks)) if command else job.tasks,
        retries=retries,
        pure=False,
        key=[f"task-{i}" for i in range(len(job.tasks))],
    )
    index = {f.key: i for i, f in enumerate(futures)}
    outcomes: dict[int, TaskOutcome] = {}
    failed = 0
    emit(events.TasksProgress(0, 0, len(futures)))
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
                exit_code=reply["value"]["exit_code"] if command else None,
            )
        elif future.status != "error":  # cancelled or lost: the cluster, not the task
            raise CloudError(f"lost task {i} ({future.status}): the cluster went away")
        else:
            outcomes[i] = _failure(i, job.tasks[i], future, command is not None)
            failed += 1
        emit(events.TasksProgress(len(outcomes) - failed, failed, len(futures)))
        future.release()
    attempts = client.run_on_scheduler(taskrun.attempts_on)
    for key, i in index.items():
        outcomes[i].attempts = attempts.get(str(key), 1)
    return [outcomes[i] for i in range(len(futures))]


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _json_default(value: Any) -> Any:
    return repr(value)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def run_job(job: Job, on_event: EventHandler | None = None) -> JobResult:
    """Plan, launch, run, collect and tear down; the teardown runs on every path, and the
    manifest is written on every path that got as far as planning."""
    emit = on_event or events.ignore
    job_id = new_job_id(job.spec.name)
    folder = Path(job.spec.outputs) / job_id
    started_at = datetime.now(UTC)
    made: list[BurstCluster] = []  # the cluster, even when its constructor fails

    def observe(event: events.Event) -> None:
        if isinstance(event, events.Planned):
            made.append(event.cluster)
        emit(event)

    outcomes: list[TaskOutcome] = []
    reduced = None
    status, problem = "error", None
    timings: dict[str, float] = {}
    manifest: dict = {}
    try:
        with (
            BurstCluster(job.spec, job_id=job_id, on_event=observe, quiet=True) as cluster,
            Client(cluster) as client,
        ):
            started = time.monotonic()
            command = None
            if job.command is not None:  # its files and inputs go to S3, not the scheduler
                command = transfer.command_task(job, cluster.bucket, job_id)
            outcomes = map_tasks(client, job, emit, command)
            timings["run"] = time.monotonic() - started
            started = time.monotonic()
            if command is not None:  # before teardown deletes the bucket
                transfer.download_outputs(cluster.bucket, job_id, folder / "outputs")
            downloading = time.monotonic() - started
        started = time.monotonic() - downloading
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "results.jsonl", "w") as out:
            for outcome in outcomes:
                out.write(json.dumps(outcome.to_dict(), default=_json_default) + "\n")
        failed = any(o.status == "failed" for o in outcomes)
        if job.reduce and not failed:
            try:
                reduced = job.reduce([o.result for o in outcomes])
            except Exception as error:  # the user's reduce: keep the results, fail the job
                failed, problem = True, f"run.reduce raised {type(error).__name__}: {error}"
        timings["collect"] = time.monotonic() - started
        status = "failed" if failed else "succeeded"
    except KeyboardInterrupt:
        status, problem = "interrupted", "interrupted by Ctrl-C or SIGTERM"
        raise
    except BaseException as error:
        problem = f"{type(error).__name__}: {error}"
        raise
    finally:
        if made:
            manifest = _manifest(
                job, job_id, made[0], status, problem, outcomes, reduced, timings, started_at
            )
            folder.mkdir(parents=True, exist_ok=True)
            _write_json(folder / "manifest.json", manifest)
            emit(events.ManifestWritten(folder / "manifest.json", manifest))
    return JobResult(job_id, status, folder, manifest, outcomes, reduced)


def _manifest(
    job: Job,
    job_id: str,
    cluster: BurstCluster,
    status: str,
    problem: str | None,
    outcomes: list[TaskOutcome],
    reduced: Any,
    timings: dict[str, float],
    started_at: datetime,
) -> dict:
    ended_at = datetime.now(UTC)
    instances = list(cluster.instances.values())
    failures = [o for o in outcomes if o.status == "failed"]
    report = cluster.teardown_report
    return {
        "job_id": job_id,
        "cluster_id": cluster.cluster_id,
        "status": status,
        "error": problem,
        "result": reduced,
        "tasks": {
            "total": len(job.tasks),
            "done": len(outcomes) - len(failures),
            "failed": len(failures),
            "retried": sum((o.attempts or 1) > 1 for o in outcomes),
        },
        "failures": [
            {
                k: v
                for k, v in {
                    "task": o.task,
                    "input": o.input,
                    "error": o.error,
                    "exit_code": o.exit_code,
                    "stderr_tail": o.stderr_tail,
                    "attempts": o.attempts,
                }.items()
                if v is not None or k == "exit_code" and o.stderr_tail is not None
            }
            for o in failures[:50]
        ],
        "cores": {
            "requested": job.spec.cores,
            "worker_vcpus": sum(i.vcpus for i in instances if i.role == "worker"),
        },
        "instances": [
            {**i.to_dict(), "cost": _text(instance_cost(i, ended_at))} for i in instances
        ],
        "cost": cost_report(instances, cluster.capacity_plan, ended_at),
        "fleets": cluster.fleet_ids,
        "capacity_errors": [str(e) for e in cluster.capacity_errors],
        "plan": cluster.capacity_plan.to_dict(),
        "timings": {
            k: round(v, 3)
            for k, v in sorted(
                {**cluster.timings, **timings}.items(), key=lambda kv: STAGES.index(kv[0])
            )
        },
        "teardown": report.to_dict()
        if report
        else {"verified": False, "leftovers": ["teardown did not run"]},
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
    overrides: dict[str, Any] | None = None,
) -> JobResult:
    """The notebook entry point: run a spec (a path, a JobSpec or a dict) to completion.

    `overrides` changes fields, nested ones too: `{"run": {"tasks": [1, 2]}}` keeps the
    spec's function. A dict or JobSpec's modules are found in `folder`."""
    if isinstance(spec, str | Path):
        return run_job(load_job(spec, overrides), on_event)
    if isinstance(spec, JobSpec):
        spec = spec.model_dump(exclude_unset=True)
    spec = parse_spec(merged(spec, overrides or {}))
    return run_job(job_from_spec(spec, Path(folder).resolve()), on_event)
