"""Runs a job on a BurstCluster: map the function over the tasks, collect, reduce, report.

The results folder gets `results.jsonl` (one line per task, written as each task finishes)
and `manifest.json` (what ran where, for how long, at what cost, and the teardown
verification). The manifest is written on every path that got as far as planning, success or
not, and counts exactly the lines in results.jsonl. The job stops at max_runtime (status
`deadline`), keeping what finished; `resume=` runs what is missing into the same folder.
"""

from __future__ import annotations

import functools
import html
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path
from typing import Any

import cloudpickle
from distributed import Client

from burst import drive, events, state, taskrun, transfer
from burst.bootstrap import client_versions
from burst.cloud.base import CloudError
from burst.cluster import BurstCluster, new_job_id
from burst.cost import cost_report, instance_cost
from burst.events import EventHandler
from burst.job import Job, job_from_spec, load_job
from burst.results import (
    MANIFEST,
    ResultsLog,
    TaskOutcome,
    dumps,
    job_folder,
    load_for_resume,
    output_folders,
    private_folder,
    write_index,
)
from burst.spec import JobSpec, format_duration, merged, parse_spec


@dataclass
class JobResult:
    job_id: str
    # "succeeded", "failed" (some tasks failed), "failed_fast" (stopped early: the first
    # tasks all failed the same way, see run.fail_fast), "deadline" (max_runtime reached,
    # results kept), "error" (the cloud or burst failed), "interrupted"
    status: str
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


def job_modules(folder: Path) -> list[Any]:
    """The modules loaded from the spec's folder (the function's module and what it imports
    from there), not from a virtualenv that may sit inside it."""
    environment = _real_directory(sys.prefix)
    found = []
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None) or "/"
        if os.path.islink(file):
            path = Path(file).resolve()
            inside = path.is_relative_to(folder) and not path.is_relative_to(environment)
        else:  # decided once per directory: thousands of modules share a few hundred
            inside = _in_job(os.path.dirname(os.path.abspath(file)), folder, environment)
        if inside:
            found.append(module)
    return found


@functools.lru_cache(maxsize=4096)
def _in_job(directory: str, folder: Path, environment: Path) -> bool:
    path = _real_directory(directory)
    return path.is_relative_to(folder) and not path.is_relative_to(environment)


@functools.lru_cache(maxsize=4096)
def _real_directory(directory: str) -> Path:
    """Path(directory).resolve(), once per directory: resolving every module's path took
    most of a second per job."""
    return Path(directory).resolve()


def ship_by_value(folder: Path) -> None:
    """Job code lives next to the spec, not on the workers: pickle every module loaded from
    the spec's folder by value, and burst's own modules that run on the nodes (the nodes have
    no copy of burst)."""
    cloudpickle.register_pickle_by_value(taskrun)
    cloudpickle.register_pickle_by_value(drive)
    for module in job_modules(folder):
        cloudpickle.register_pickle_by_value(module)


SOURCES_BYTES = 1_000_000  # job module text shipped for tracebacks, at most


def job_sources(folder: Path) -> dict[str, str]:
    """The text of the job's modules by file name, as their code objects name them: a
    traceback on a worker without the files still shows the failing lines."""
    sources: dict[str, str] = {}
    size = 0
    for module in job_modules(folder):
        try:
            text = Path(module.__file__).read_text()
        except (OSError, UnicodeDecodeError):
            continue
        size += len(text)
        if size > SOURCES_BYTES:
            break
        sources[module.__file__] = text
    return sources


def map_tasks(
    client: Client,
    job: Job,
    emit: EventHandler,
    log: ResultsLog,
    todo: list[int],
    stop_at: datetime | None = None,
    command: taskrun.CommandTask | None = None,
) -> str:
    """Run the tasks numbered `todo` (the job's function, or its command), each outcome into
    `log` as it finishes. Returns how the run ended: drive.FINISHED, drive.DEADLINE
    (`stop_at` came first) or drive.FAILED_FAST (run.fail_fast); what still runs then is
    cancelled and what finished is kept."""
    ship_by_value(job.folder)
    client.register_plugin(taskrun.AttemptCounter())  # a fresh count for this job
    total = len(job.tasks)

    def record(outcome: TaskOutcome) -> None:
        log.add(outcome)
        emit(events.TasksProgress(log.count["done"], log.count["failed"], total))

    emit(events.TasksProgress(log.count["done"], log.count["failed"], total))
    try:
        ended = drive.run_tasks(
            client,
            task_of(job, command),
            [(i, job.tasks[i]) for i in todo],
            command=command is not None,
            retries=job.spec.run.retries,
            record=record,
            stop_at=stop_at.timestamp() if stop_at else None,
            attempts_on=taskrun.attempts_on,
            fail_fast=fail_fast_after(job),
            folders=dict(enumerate(output_folders(job.tasks))) if command else None,
        )
    except drive.ClusterLost as error:
        raise CloudError(str(error), "check the cluster's instances; resume the job") from error
    if ended in (drive.FINISHED, drive.FAILED_FAST):
        log.rewrite()  # with each task's attempts, known now
    return ended


def fail_fast_after(job: Job) -> int:
    """How many identical first failures stop the job (0: never)."""
    return drive.FAIL_FAST_AFTER if job.spec.run.fail_fast else 0


def task_of(job: Job, command: taskrun.CommandTask | None) -> Callable[[Any], dict]:
    """What each worker runs for one task: the command, or the function with its timeout
    (its exceptions retried only if the spec says so)."""
    timeout = job.spec.run.timeout
    return command or taskrun.FunctionTask(
        job.function,
        timeout and timeout.total_seconds(),
        job.spec.run.retry_exceptions,
        job_sources(job.folder),
    )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _write_json(path: Path, data: Any) -> None:
    private_folder(path.parent)
    path.write_text(dumps(data, indent=2) + "\n")


def run_job(job: Job, on_event: EventHandler | None = None, resume: str | None = None) -> JobResult:
    """Plan, launch, run, collect and tear down; the teardown runs on every path, and the
    manifest is written on every path that got as far as planning. With `resume` (a job id),
    only the tasks not done in that job's results run, into its folder."""
    emit = on_event or events.ignore
    job_id = resume or new_job_id(job.spec.name)
    folder = job_folder(job.spec.outputs, job_id)
    earlier_runs: list[dict] = []
    done_before: list[TaskOutcome] = []
    if resume:
        done_before, earlier = load_for_resume(folder, job.tasks)
        earlier_runs = earlier.get("runs") or [_run_summary(earlier)]
    log = ResultsLog(folder, done_before)
    todo = [i for i in range(len(job.tasks)) if i not in log.outcomes]
    started_at = datetime.now(UTC)
    made: list[BurstCluster] = []  # the cluster, even when its constructor fails

    def observe(event: events.Event) -> None:
        if isinstance(event, events.Planned):
            made.append(event.cluster)
            index_job(job, job_id, "attached", folder, "running", cluster_id=event.cluster_id)
        emit(event)

    reduced = None
    status, problem = "error", None
    timings: dict[str, float] = {}
    manifest: dict = {}
    extras: dict[str, Any] = {}
    try:
        if not todo:  # resumed with every task done: nothing to rent
            reduced, status, problem = _reduce(job, log)
            return JobResult(job_id, status, folder, earlier, log.in_order(), reduced)
        with (
            BurstCluster(job.spec, job_id=job_id, on_event=observe, quiet=True) as cluster,
            Client(cluster) as client,
        ):
            started = time.monotonic()
            command = None
            if job.command is not None:  # its files and inputs go to S3, not the scheduler
                command = transfer.command_task(job, cluster.bucket, job_id)
            # The job ends at max_runtime; the grace after it is for collecting and teardown.
            stop_at = cluster.deadline - job.spec.grace
            ended = map_tasks(client, job, emit, log, todo, stop_at, command)
            timings["run"] = time.monotonic() - started
            started = time.monotonic()
            if command is not None:  # before teardown deletes the bucket
                extras["outputs_ignored"] = collect_outputs(cluster.bucket, job_id, folder, log)
            downloading = time.monotonic() - started
        started = time.monotonic() - downloading
        if ended == drive.FINISHED:
            reduced, status, problem = _reduce(job, log)
        elif ended == drive.FAILED_FAST:
            total, not_run = len(job.tasks), len(job.tasks) - len(log.outcomes)
            status = drive.FAILED_FAST
            problem = drive.fail_fast_message(log.failed(), not_run, total)
        else:
            status, problem = "deadline", _deadline_message(job, log)
        timings["collect"] = time.monotonic() - started
    except KeyboardInterrupt:
        status, problem = "interrupted", "interrupted by Ctrl-C or SIGTERM"
        raise
    except BaseException as error:
        problem = f"{type(error).__name__}: {error}"
        raise
    finally:
        log.close()
        if made:
            manifest = _manifest(
                job,
                job_id,
                made[0],
                status,
                problem,
                log,
                reduced,
                timings,
                started_at,
                earlier_runs,
            )
            manifest.update({k: v for k, v in extras.items() if v})
            _write_json(folder / MANIFEST, manifest)
            state.record(job_id, state=status, cost=manifest["cost"]["actual"])
            emit(events.ManifestWritten(folder / MANIFEST, manifest))
    return JobResult(job_id, status, folder, manifest, log.in_order(), reduced)


def collect_outputs(bucket: Any, job_id: str, folder: Path, log: ResultsLog) -> list[str]:
    """The command tasks' outputs into the results folder, after results.jsonl holds every
    finished task (a failed download loses no line); a task whose outputs cannot be
    collected fails; then outputs/index.csv. Returns the bucket keys no task reported (the
    first 20)."""
    log.flush()
    failed, ignored = transfer.download_outputs(bucket, job_id, folder, log.in_order())
    for outcome in failed:
        log.add(outcome)
    if failed:
        log.rewrite()
    write_index(folder, log.in_order())
    return ignored[:20]


def index_job(job: Job, job_id: str, mode: str, folder: Path, state_: str, **fields: Any) -> None:
    """This machine's record of a job (burst ls), as it starts."""
    state.record(
        job_id,
        name=job.spec.name,
        mode=mode,
        cloud=job.spec.cloud,
        region=job.spec.region,
        state=state_,
        cores=job.spec.cores,
        folder=folder.resolve(),
        **fields,
    )


def _reduce(job: Job, log: ResultsLog) -> tuple[Any, str, str | None]:
    """The reduce over every task's result, when every task is done."""
    failed = log.failed()
    if failed:
        return None, "failed", drive.failed_message(len(failed), len(job.tasks), job.reduce)
    if not job.reduce:
        return None, "succeeded", None
    try:
        return job.reduce([o.result for o in log.in_order()]), "succeeded", None
    except Exception as error:  # the user's reduce: keep the results, fail the job
        return None, "failed", f"run.reduce raised {type(error).__name__}: {error}"


def _deadline_message(job: Job, log: ResultsLog) -> str:
    return (
        f"max_runtime {format_duration(job.spec.max_runtime)} reached: {len(log.done())} of "
        f"{len(job.tasks)} tasks done, results kept; raise max_runtime or resume"
    )


def _run_summary(manifest: dict) -> dict:
    """One run of a job, as the manifest of a resumed job lists its runs."""
    return {
        "cluster_id": manifest.get("cluster_id"),
        "status": manifest.get("status"),
        "started_at": manifest.get("started_at"),
        "ended_at": manifest.get("ended_at"),
        "tasks_run": manifest.get("tasks", {}).get("ran"),
        "cost": (manifest.get("cost") or {}).get("actual"),
    }


def _manifest(
    job: Job,
    job_id: str,
    cluster: BurstCluster,
    status: str,
    problem: str | None,
    log: ResultsLog,
    reduced: Any,
    timings: dict[str, float],
    started_at: datetime,
    earlier_runs: list[dict],
) -> dict:
    ended_at = datetime.now(UTC)
    instances = list(cluster.instances.values())
    outcomes = log.in_order()
    failures = log.failed()
    report = cluster.teardown_report
    cost = cost_report(instances, cluster.capacity_plan.to_dict(), ended_at)
    manifest = {
        "job_id": job_id,
        "cluster_id": cluster.cluster_id,
        "status": status,
        "error": problem,
        "result": reduced,
        "tasks": {
            "total": len(job.tasks),
            "done": len(log.done()),
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
        "cost": cost,
        "fleets": cluster.fleet_ids,
        "capacity_errors": [str(e) for e in cluster.capacity_errors],
        "elasticity": cluster.elasticity(),  # scaling, spot interruptions, replacements
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
        "node_environment": cluster.node_environment,  # the client's interpreter or wheels
    }
    if len(outcomes) < len(job.tasks):  # stopped early, at the deadline or interrupted
        manifest["tasks"]["not_run"] = len(job.tasks) - len(outcomes)
    if earlier_runs:  # resumed: what this run did, every run, and what they all cost
        manifest["tasks"]["ran"] = len(outcomes) - log.carried
        manifest["runs"] = earlier_runs + [_run_summary(manifest)]
        manifest["cost"]["actual_all_runs"] = str(
            sum(Decimal(r["cost"]) for r in manifest["runs"] if r["cost"] is not None)
        )
    return manifest


def run(
    spec: str | Path | JobSpec | dict,
    on_event: EventHandler | None = None,
    folder: str | Path = ".",
    overrides: dict[str, Any] | None = None,
    resume: str | None = None,
) -> JobResult:
    """The notebook entry point: run a spec (a path, a JobSpec or a dict) to completion.

    `overrides` changes fields, nested ones too: `{"run": {"tasks": [1, 2]}}` keeps the
    spec's function. A dict or JobSpec's modules are found in `folder`. `resume` (a job id)
    runs only the tasks that job has not done, into its results folder."""
    if isinstance(spec, str | Path):
        return run_job(load_job(spec, overrides), on_event, resume)
    if isinstance(spec, JobSpec):
        spec = spec.model_dump(exclude_unset=True)
    spec = parse_spec(merged(spec, overrides or {}))
    return run_job(job_from_spec(spec, Path(folder).resolve()), on_event, resume)
