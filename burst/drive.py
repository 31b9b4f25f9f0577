"""Driving a job's tasks through a Dask client, wherever the driver runs: in the client's
process (`burst run`) or on the scheduler instance (`burst submit`, see `burst.detached`).

Shipped by value to the scheduler (cloudpickle.register_pickle_by_value), like
burst.taskrun: so this module imports nothing from burst and keeps no unpicklable state
(locks, clients) at module level.
"""

from __future__ import annotations

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


def by_value(target: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A closure cannot be pickled by reference, so distributed hands the task to cloudpickle,
    which then honours register_pickle_by_value for the target (workers have no burst)."""

    def call(item: Any) -> Any:
        return target(item)

    return call


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
    tail = "".join(traceback.format_tb(future.traceback())[-3:])
    printed = getattr(error, "burst_output", {})  # burst.taskrun.FunctionTask's capture
    return TaskOutcome(
        number,
        task,
        "failed",
        error=f"{type(error).__name__}: {error}\n{tail}".strip(),
        stdout_tail=printed.get("stdout_tail"),
        stderr_tail=printed.get("stderr_tail"),
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
) -> str:
    """Run `task` (a burst.taskrun FunctionTask or CommandTask) on each (number, input),
    handing each outcome to `record` as it finishes. Returns FINISHED, DEADLINE (the UNIX
    time `stop_at` came first) or CANCELLED (`stopping` was set and the futures cancelled);
    what still ran then is cancelled, what finished was recorded. Raises ClusterLost when the
    cluster loses a task. When all finished, `attempts_on` (run on the scheduler) gives each
    recorded outcome its number of attempts (after `record` saw it: the caller rewrites)."""
    from distributed import TimeoutError as DaskTimeoutError
    from distributed import as_completed

    futures = client.map(
        by_value(task),
        numbered if command else [item for _, item in numbered],
        retries=retries,
        pure=False,
        key=[f"task-{number}" for number, _ in numbered],
    )
    inputs = {f.key: pair for f, pair in zip(futures, numbered, strict=True)}
    outcomes: dict[int, TaskOutcome] = {}
    seconds_left = None if stop_at is None else max(0.0, stop_at - time.time())
    try:
        for future in as_completed(futures, timeout=seconds_left):
            number, item = inputs[future.key]
            if future.status == "finished":
                reply = future.result()
                outcome = TaskOutcome(
                    number,
                    item,
                    "done",
                    reply["value"],
                    worker=reply["worker"],
                    seconds=reply["seconds"],
                    exit_code=reply["value"]["exit_code"] if command else None,
                    stdout_tail=reply.get("stdout_tail"),
                    stderr_tail=reply.get("stderr_tail"),
                )
            elif future.status == "error":
                outcome = failure_outcome(number, item, future, command)
            elif stopping is not None and stopping.is_set():
                return CANCELLED
            else:  # cancelled or lost: the cluster, not the task
                raise ClusterLost(f"lost task {number} ({future.status}): the cluster went away")
            outcomes[number] = outcome
            record(outcome)
            future.release()
    except DaskTimeoutError:
        client.cancel([f for f in futures if not f.done()])
        return DEADLINE
    if attempts_on is not None:
        attempts = client.run_on_scheduler(attempts_on)
        for key, (number, _) in inputs.items():
            outcomes[number].attempts = attempts.get(str(key), 1)
    return FINISHED
