"""Driving a job's tasks through a Dask client, wherever the driver runs: in the client's
process (`burst run`) or on the scheduler instance (`burst submit`, see `burst.detached`).

Shipped by value to the scheduler (cloudpickle.register_pickle_by_value), like
burst.taskrun: so this module imports nothing from burst and keeps no unpicklable state
(locks, clients) at module level.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

FINISHED, DEADLINE, CANCELLED = "finished", "deadline", "cancelled"
FAILED_FAST = "failed_fast"  # run.fail_fast: the first tasks all failed the same way
FAIL_FAST_AFTER = 5  # ... this many of them, before any task succeeded


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
    folder: str | None = None  # a command task's outputs, in the job's results folder

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict) -> TaskOutcome:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def to_json(value: Any) -> Any:
    """json.dumps' `default`: what JSON has no type for, as a scientist reads it."""
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


class ClusterLost(RuntimeError):
    """A task was cancelled or lost by the cluster, not failed by its own code."""


def ship(client: Any, task: Callable[[Any], Any], retries: int) -> Any:
    """The task callable, sent to the cluster once: a future of it, for every task to take as
    its first argument (see run_tasks). cloudpickled here, which honours
    register_pickle_by_value (the nodes have no burst), and unpickled by one task whose result
    the workers share. Passed to client.map directly, it would be pickled again into each
    task's message and unpickled by each task, which costs more than a tiny task itself
    (scripts/bench_throughput.py). A task rather than scattered data, so that the cluster
    computes it again if every worker holding it is lost."""
    import cloudpickle

    return client.submit(
        cloudpickle.loads,
        cloudpickle.dumps(task),
        pure=False,
        retries=retries,
        key=f"burst-task-code-{time.time_ns()}",
    )


def failure_outcome(number: int, task: Any, future: Any, command: bool) -> TaskOutcome:
    error = future.exception()
    details = error.args[1] if command and len(error.args) == 2 else None
    if isinstance(error, RuntimeError) and isinstance(details, dict) and "cause" in details:
        # a failed command (burst.taskrun.CommandTask): its cause and output tails
        return TaskOutcome(
            number,
            task,
            "failed",
            error=details["cause"],
            worker=details.get("worker"),
            exit_code=details.get("exit_code"),
            stderr_tail=details.get("stderr_tail", ""),
        )
    text = getattr(error, "burst_error", None)  # formatted where it was raised
    if text is None:
        tail = "".join(traceback.format_tb(future.traceback())[-3:])
        text = f"{type(error).__name__}: {error}\n{tail}".strip()
    printed = getattr(error, "burst_output", {})  # burst.taskrun.FunctionTask's capture
    return TaskOutcome(
        number,
        task,
        "failed",
        error=text,
        stdout_tail=printed.get("stdout_tail"),
        stderr_tail=printed.get("stderr_tail"),
    )


def done_outcome(
    number: int, task: Any, reply: dict, command: bool, folder: str | None = None
) -> TaskOutcome:
    """A task that ran to its end: its value, or (a function that raised, not retried: see
    burst.taskrun.FunctionTask) its error. `folder`: where its outputs go, if it wrote any."""
    if "error" in reply:
        return TaskOutcome(
            number,
            task,
            "failed",
            error=reply["error"],
            worker=reply["worker"],
            seconds=reply["seconds"],
            stdout_tail=reply.get("stdout_tail"),
            stderr_tail=reply.get("stderr_tail"),
        )
    return TaskOutcome(
        number,
        task,
        "done",
        reply["value"],
        worker=reply["worker"],
        seconds=reply["seconds"],
        exit_code=reply["value"]["exit_code"] if command else None,
        stdout_tail=reply.get("stdout_tail"),
        stderr_tail=reply.get("stderr_tail"),
        folder=folder if command and reply["value"].get("outputs") else None,
    )


def failure_signature(outcome: TaskOutcome, command: bool) -> tuple:
    """How a task failed, for telling whether failures are the same: a function's exception
    type and message; a command's cause, exit code and last line of stderr."""
    first = (outcome.error or "").splitlines()[:1]
    if not command:
        return (outcome.status, *first)
    stderr = [line for line in (outcome.stderr_tail or "").splitlines() if line.strip()]
    return (outcome.status, *first, outcome.exit_code, *stderr[-1:])


def failed_message(failed: int, total: int, reduce: Any) -> str:
    """Why a job that ran every task failed; says so when its reduce was skipped for it."""
    skipped = "; reduce not run" if reduce is not None else ""
    return f"{failed} of {total} tasks failed{skipped}"


def fail_fast_message(failures: list[TaskOutcome], not_run: int, total: int) -> str:
    """Why a job stopped early, from its failures (the first FAIL_FAST_AFTER failed alike)."""
    first = failures[0]
    how = (first.error or "").splitlines()[0] if first.error else "failed"
    stderr = [line for line in (first.stderr_tail or "").splitlines() if line.strip()]
    if first.exit_code is not None and stderr:
        how += f": {stderr[-1][:200]}"
    return (
        f"stopped early (run.fail_fast): the first {len(failures)} tasks all failed the same "
        f"way ({how}) and none succeeded; {not_run} of {total} tasks not run; fix the cause "
        "and run again (or set run.fail_fast: false)"
    )


def run_tasks(
    client: Any,
    task: Callable[[Any], dict],
    numbered: list[tuple[int, Any]],
    *,
    command: bool,
    retries: int,
    record: Callable[[TaskOutcome], None],
    stop_at: float | None = None,
    stopping: threading.Event | None = None,
    attempts_on: Callable | None = None,
    fail_fast: int = 0,
    folders: dict[int, str] | None = None,
) -> str:
    """Run `task` (a burst.taskrun FunctionTask or CommandTask) on each (number, input),
    handing each outcome to `record` as it finishes. Returns FINISHED, DEADLINE (the UNIX
    time `stop_at` came first), CANCELLED (`stopping` was set and the futures cancelled) or
    FAILED_FAST (the first `fail_fast` tasks to end all failed the same way, none succeeded,
    and some were still to run; 0: never); what still ran then is cancelled, what finished
    was recorded. Raises ClusterLost when the cluster loses a task. When all finished or
    failed fast, `attempts_on` (run on the scheduler) gives each recorded outcome its number
    of attempts (after `record` saw it: the caller rewrites). `folders` names each command
    task's outputs folder (burst.results.output_folders), kept in its outcome."""
    import queue

    from dask.utils import apply

    code = ship(client, task, retries)
    futures = client.map(
        apply,
        [code] * len(numbered),
        [(pair if command else pair[1],) for pair in numbered],
        retries=retries,
        pure=False,
        key=[f"task-{number}" for number, _ in numbered],
    )
    inputs = {f.key: pair for f, pair in zip(futures, numbered, strict=True)}
    outcomes: dict[int, TaskOutcome] = {}
    seconds_left = None if stop_at is None else max(0.0, stop_at - time.time())
    over = threading.Event()
    if stopping is not None:

        def cancel_when_stopping() -> None:  # cancelled futures end the loop below
            while not stopping.wait(1.0):
                if over.is_set():
                    return
            client.cancel([f for f in futures if not f.done()])

        threading.Thread(target=cancel_when_stopping, daemon=True).start()
    feed: queue.Queue = queue.Queue()
    streaming = asyncio.run_coroutine_threadsafe(
        _stream(client, futures, seconds_left, feed), client.loop.asyncio_loop
    )
    try:
        while (batch := feed.get()) is not None:
            if batch is DEADLINE:
                client.cancel([f for f in futures if not f.done()])
                return DEADLINE
            if isinstance(batch, BaseException):
                raise batch
            for future, status, value in batch:
                number, item = inputs[future.key]
                if status == "finished":
                    folder = (folders or {}).get(number)
                    outcome = done_outcome(number, item, value, command, folder)
                elif status == "error":
                    outcome = failure_outcome(number, item, future, command)
                    future.release()
                elif stopping is not None and stopping.is_set():
                    return CANCELLED
                else:  # cancelled or lost: the cluster, not the task
                    raise ClusterLost(f"lost task {number} ({status}): the cluster went away")
                outcomes[number] = outcome
                record(outcome)
                if len(outcomes) == fail_fast < len(futures):
                    alike = {failure_signature(o, command) for o in outcomes.values()}
                    if len(alike) == 1 and outcome.status == "failed":
                        client.cancel([f for f in futures if not f.done()])
                        return _with_attempts(client, attempts_on, inputs, outcomes, FAILED_FAST)
    finally:
        over.set()
        streaming.cancel()
    return _with_attempts(client, attempts_on, inputs, outcomes, FINISHED)


async def _stream(client: Any, futures: list, seconds: float | None, feed: Any) -> None:
    """On the client's event loop: each batch of futures that finished since the last look,
    as [(future, status, value)], into `feed` for run_tasks' thread; then None, or DEADLINE
    when `seconds` ran out first. Done here, not from run_tasks' thread, because every call
    into the loop from another thread wakes it through a pipe (a write per call): waiting on,
    gathering and releasing each task from there costs more than a tiny task (issue 11). A
    finished task's value is gathered with its batch, then released: its memory on the
    cluster is freed as it is recorded. A failed task is released by run_tasks once its error
    is read."""
    from distributed import as_completed

    try:
        # The deadline is the whole run's, as as_completed's timeout counts from here.
        finishing = as_completed(futures, loop=client.loop, timeout=seconds)
        while True:
            try:
                first = await finishing.__anext__()
            except StopAsyncIteration:
                break
            except TimeoutError:  # as_completed's timeout (asyncio's is this one since 3.11)
                feed.put(DEADLINE)
                return
            batch = [first, *finishing.next_batch(block=False)]
            finished = {f.key: f for f in batch if f.status == "finished"}
            values = {}
            if finished:  # (a batch of failures alone asks the cluster nothing)
                values = await client.gather(finished, errors="skip", asynchronous=True)
            done = []
            for future in batch:
                status = future.status
                if status == "finished" and future.key not in values:
                    status = "cancelled"  # cancelled while it was gathered
                done.append((future, status, values.get(future.key)))
            for future, status, _ in done:
                if status == "finished":
                    future.release()  # on the loop: no wake-up per task
            feed.put(done)
        feed.put(None)
    except asyncio.CancelledError:
        raise
    except BaseException as error:  # run_tasks' thread raises it
        feed.put(error)


def _with_attempts(
    client: Any, attempts_on: Callable | None, inputs: dict, outcomes: dict, ended: str
) -> str:
    """Each recorded outcome's number of attempts, from the scheduler; returns `ended`."""
    if attempts_on is not None:
        attempts = client.run_on_scheduler(attempts_on)
        for key, (number, _) in inputs.items():
            if number in outcomes:
                outcomes[number].attempts = attempts.get(str(key), 1)
    return ended


# ------------------------------------------------------------------ detached jobs
#
# `burst submit` leaves the job to a driver on the scheduler instance (on-demand). The job's
# files in the cluster's bucket, under jobs/<job-id>/:
#   driver.pkl            the Driver below, cloudpickled by the client
#   cluster.json          what the client launched: plan, instances, prices (burst.detached)
#   status.json           the driver's state, counts, times, reduce result; updated as it goes
#   results/part-N.jsonl  outcomes, a batch every FLUSH_SECONDS; results.jsonl once all ran
#   driver.log            the driver's own output
#   cancel                put by `burst cancel`: the driver stops the tasks and ends
#   outputs/<task>/...    a command task's output files (burst.taskrun), by task number

FLUSH_SECONDS = 5.0
TERMINAL = ("succeeded", "failed", FAILED_FAST, "deadline", "cancelled", "error")
LOG_BYTES = 1_000_000


class BucketSink:
    """Outcomes and status to S3: outcomes are batched (S3 has no append) and flushed every
    FLUSH_SECONDS, so a crash loses at most the last few seconds of finished work."""

    def __init__(self, s3: Any, bucket: str, prefix: str, total: int, log_path: str):
        self.s3, self.bucket, self.prefix = s3, bucket, prefix
        self.status: dict[str, Any] = {"state": "running", "done": 0, "failed": 0}
        self.status.update(total=total, started_at=time.time(), parts=0)
        self.outcomes: dict[int, TaskOutcome] = {}
        self.pending: list[TaskOutcome] = []
        self.log_path = log_path
        self.lock = threading.Lock()

    def put(self, name: str, body: str | bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=f"{self.prefix}/{name}", Body=body)

    def exists(self, name: str) -> bool:
        reply = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=f"{self.prefix}/{name}")
        return any(item["Key"] == f"{self.prefix}/{name}" for item in reply.get("Contents", []))

    def record(self, outcome: TaskOutcome) -> None:
        with self.lock:
            self.outcomes[outcome.task] = outcome
            self.pending.append(outcome)
            self.status["done" if outcome.status == "done" else "failed"] += 1

    def flush(self, **status: Any) -> None:
        """The finished outcomes, the log, then the status: a status that says the job ended
        comes after everything else it ended with (`burst logs --follow` relies on it)."""
        with self.lock:
            batch, self.pending = self.pending, []
            if batch:
                self.status["parts"] += 1
                lines = "".join(dumps(o.to_dict()) + "\n" for o in batch)
                self.put(f"results/part-{self.status['parts']:06d}.jsonl", lines)
            try:
                with open(self.log_path, "rb") as log:
                    log.seek(0, 2)
                    log.seek(max(0, log.tell() - LOG_BYTES))
                    self.put("driver.log", log.read())
            except OSError:
                pass
            self.status.update(status, updated_at=time.time())
            self.put("status.json", dumps(self.status))

    def finish(self, **status: Any) -> None:
        """Every outcome in one results.jsonl (with attempts), then the final status."""
        with self.lock:
            ordered = [self.outcomes[n] for n in sorted(self.outcomes)]
            self.put("results.jsonl", "".join(dumps(o.to_dict()) + "\n" for o in ordered))
            self.pending = []
        self.flush(ended_at=time.time(), **status)


class Driver:
    """A job as it runs on the scheduler instance after `burst submit`: its tasks through a
    Client of the local scheduler (the scheduler then counts a client, see no_client_timeout),
    each outcome streamed to the bucket, and at the end, whatever the end, every instance of
    its cluster terminated: compute stops billing with no client anywhere."""

    def __init__(
        self,
        *,
        job_id: str,
        cluster_id: str,
        region: str,
        bucket: str,
        prefix: str,
        task: Callable[[Any], dict],
        numbered: list[tuple[int, Any]],
        command: bool,
        retries: int,
        stop_at: float,
        reduce: Callable[[list], Any] | None,
        attempts_on: Callable,
        attempt_counter: Any,
        instance_ids: list[str],
        fail_fast: int = 0,
        folders: dict[int, str] | None = None,
    ):
        self.job_id, self.cluster_id, self.region = job_id, cluster_id, region
        self.bucket, self.prefix = bucket, prefix
        self.task, self.numbered, self.command = task, numbered, command
        self.retries, self.stop_at, self.reduce = retries, stop_at, reduce
        self.attempts_on, self.attempt_counter = attempts_on, attempt_counter
        self.instance_ids = instance_ids  # every instance of the cluster, this one included
        self.fail_fast, self.folders = fail_fast, folders

    def run(self, address: str, log_path: str) -> int:
        import boto3

        sink = BucketSink(
            boto3.client("s3", region_name=self.region),
            self.bucket,
            self.prefix,
            len(self.numbered),
            log_path,
        )
        stopping = threading.Event()
        ended = threading.Event()
        client = None

        def watch() -> None:  # flushes, and looks for `burst cancel`'s marker
            while not ended.wait(FLUSH_SECONDS):
                try:
                    # The workers joined (named by instance id): `burst wait` sees its
                    # replacements join (burst.detached.replace_lost).
                    workers = client.scheduler_info()["workers"].values() if client else ()
                    sink.flush(workers=sorted(str(w.get("name")) for w in workers))
                    if sink.exists("cancel"):
                        print("cancelled by burst cancel", flush=True)
                        stopping.set()
                        return
                except Exception as error:  # a flush fails: the next one may not
                    print(f"flush failed: {error}", flush=True)

        state, error, result = "error", None, None
        try:
            sink.flush()
            from distributed import Client

            with Client(address, security=self._security(), timeout=60) as client:
                client.register_plugin(self.attempt_counter)
                print(f"driving {len(self.numbered)} tasks on {address}", flush=True)
                threading.Thread(target=watch, daemon=True).start()
                how = run_tasks(
                    client,
                    self.task,
                    self.numbered,
                    command=self.command,
                    retries=self.retries,
                    record=sink.record,
                    stop_at=self.stop_at,
                    stopping=stopping,
                    attempts_on=self.attempts_on,
                    fail_fast=self.fail_fast,
                    folders=self.folders,
                )
            state, error, result = self._outcome(how, sink)
        except BaseException as failure:
            error = f"the driver failed: {type(failure).__name__}: {failure}"
            traceback.print_exc()
        finally:
            ended.set()
            print(f"job {self.job_id}: {state}{f' ({error})' if error else ''}", flush=True)
            try:
                sink.finish(state=state, error=error, result=result)
            finally:
                self._terminate_cluster()
        return 0

    def _outcome(self, how: str, sink: BucketSink) -> tuple[str, str | None, Any]:
        if how == CANCELLED:
            return "cancelled", "cancelled by burst cancel", None
        total = len(self.numbered)
        if how == DEADLINE:
            done = sink.status["done"]
            return "deadline", f"max_runtime reached: {done} of {total} tasks done", None
        failed = sink.status["failed"]
        if how == FAILED_FAST:
            failures = [o for o in sink.outcomes.values() if o.status == "failed"]
            not_run = total - len(sink.outcomes)
            return FAILED_FAST, fail_fast_message(failures, not_run, total), None
        if failed:
            return "failed", failed_message(failed, total, self.reduce), None
        if self.reduce is None:
            return "succeeded", None, None
        try:
            values = [sink.outcomes[n].result for n in sorted(sink.outcomes)]
            return "succeeded", None, self.reduce(values)
        except Exception as error:  # the user's reduce: the results are kept
            return "failed", f"run.reduce raised {type(error).__name__}: {error}", None

    def _security(self) -> Any:
        """The driver's own client certificate (OU driver, client auth only; burst.tls),
        which only the scheduler's role may read: never the client's, never a node's."""
        import boto3
        from distributed.security import Security

        ssm = boto3.client("ssm", region_name=self.region)
        name = f"/burst/{self.cluster_id}/tls-driver"
        secret = ssm.get_parameter(Name=name, WithDecryption=True)
        tls = json.loads(secret["Parameter"]["Value"])
        return Security(
            tls_ca_file=tls["ca"],
            tls_client_cert=tls["cert"],
            tls_client_key=tls["key"],
            require_encryption=True,
        )

    def _terminate_cluster(self) -> None:
        """Every instance of this cluster, this one included, in one call (terminating one
        already gone is no error). The node role may terminate only instances tagged with its
        own cluster id, and needs no Describe permission: the client gave the ids."""
        import boto3

        ec2 = boto3.client("ec2", region_name=self.region)
        print(f"terminating the cluster's {len(self.instance_ids)} instances", flush=True)
        for start in range(0, len(self.instance_ids), 1000):
            ec2.terminate_instances(InstanceIds=self.instance_ids[start : start + 1000])


# Run on the scheduler's host by start_driver: fetch the Driver and run it.
BOOT = """
import sys

import boto3
import cloudpickle

bucket, key, region, address, log_path = sys.argv[1:6]
body = boto3.client("s3", region_name=region).get_object(Bucket=bucket, Key=key)["Body"]
sys.exit(cloudpickle.loads(body.read()).run(address, log_path))
"""


def start_driver(bucket: str, key: str, region: str, dask_scheduler: Any = None) -> int:
    """Run through Client.run_on_scheduler: start the driver as a process of the scheduler's
    instance (it dies with the instance), outside the scheduler's event loop."""
    import os
    import subprocess
    import sys
    import tempfile

    folder = tempfile.mkdtemp(prefix="burst-driver-")
    log_path = os.path.join(folder, "driver.log")
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", BOOT, bucket, key, region, dask_scheduler.address, log_path],
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return process.pid
