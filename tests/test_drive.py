"""The job's driver: what it writes to the bucket as tasks finish and how it names the end of
a job (no cluster needed), and how it runs tasks on a real in-process Dask cluster: fail-fast,
which errors are retried."""

from __future__ import annotations

import json

import pytest
from distributed import Client, LocalCluster

from burst import drive, taskrun
from burst.drive import BucketSink, Driver, TaskOutcome


class FakeS3:
    """The three S3 calls the driver makes, in memory."""

    def __init__(self):
        self.objects: dict[str, bytes] = {}

    def put_object(self, Bucket, Key, Body):  # noqa: N803 - boto3's names
        self.objects[Key] = Body.encode() if isinstance(Body, str) else Body

    def list_objects_v2(self, Bucket, Prefix):  # noqa: N803
        return {"Contents": [{"Key": k} for k in sorted(self.objects) if k.startswith(Prefix)]}


def sink(tmp_path, total=3) -> tuple[BucketSink, FakeS3]:
    s3 = FakeS3()
    (tmp_path / "driver.log").write_text("driving 3 tasks\n")
    return BucketSink(s3, "b", "jobs/j", total, str(tmp_path / "driver.log")), s3


def lines(body: bytes) -> list[dict]:
    return [json.loads(line) for line in body.decode().splitlines()]


def test_outcomes_are_flushed_in_batches_with_the_status_and_the_log(tmp_path):
    bucket, s3 = sink(tmp_path)
    bucket.record(TaskOutcome(1, "b", "done", 2))
    bucket.record(TaskOutcome(0, "a", "failed", error="ValueError: a"))
    assert "jobs/j/results/part-000001.jsonl" not in s3.objects  # not before a flush
    bucket.flush()
    assert [o["task"] for o in lines(s3.objects["jobs/j/results/part-000001.jsonl"])] == [1, 0]
    status = json.loads(s3.objects["jobs/j/status.json"])
    assert (status["state"], status["done"], status["failed"], status["total"]) == (
        "running", 1, 1, 3)
    assert s3.objects["jobs/j/driver.log"] == b"driving 3 tasks\n"
    bucket.flush()  # nothing new: no empty part
    assert sorted(k for k in s3.objects if "/results/" in k) == ["jobs/j/results/part-000001.jsonl"]
    bucket.record(TaskOutcome(2, "c", "done", 4))
    bucket.finish(state="failed", error="1 of 3 tasks failed")
    assert [o["task"] for o in lines(s3.objects["jobs/j/results.jsonl"])] == [0, 1, 2]
    final = json.loads(s3.objects["jobs/j/status.json"])
    assert final["state"] == "failed" and final["ended_at"] >= final["started_at"]
    assert bucket.exists("status.json") and not bucket.exists("cancel")


def driver(reduce=None) -> Driver:
    return Driver(job_id="j", cluster_id="c", region="us-east-1", bucket="b", prefix="jobs/j",
                  task=len, numbered=[(0, "a"), (1, "bb")], command=False, retries=0,
                  stop_at=0.0, reduce=reduce, attempts_on=len, attempt_counter=None,
                  instance_ids=["i-1"])


def test_the_driver_names_each_end_of_a_job(tmp_path):
    bucket, _ = sink(tmp_path, total=2)
    assert driver()._outcome(drive.CANCELLED, bucket)[:2] == (
        "cancelled", "cancelled by burst cancel")
    bucket.record(TaskOutcome(1, "bb", "done", 2))
    assert driver()._outcome(drive.DEADLINE, bucket)[:2] == (
        "deadline", "max_runtime reached: 1 of 2 tasks done")
    bucket.record(TaskOutcome(0, "a", "done", 1))
    assert driver(reduce=sum)._outcome(drive.FINISHED, bucket) == ("succeeded", None, 3)
    assert driver()._outcome(drive.FINISHED, bucket) == ("succeeded", None, None)
    failing = driver(reduce=lambda values: 1 / 0)._outcome(drive.FINISHED, bucket)
    assert failing == ("failed", "run.reduce raised ZeroDivisionError: division by zero", None)
    bucket.record(TaskOutcome(0, "a", "failed", error="boom"))
    assert driver()._outcome(drive.FINISHED, bucket)[:2] == ("failed", "1 of 2 tasks failed")
    assert driver(reduce=sum)._outcome(drive.FINISHED, bucket)[:2] == (
        "failed", "1 of 2 tasks failed; reduce not run")
    state, message, _ = driver()._outcome(drive.FAILED_FAST, bucket)
    assert state == "failed_fast" and message.startswith("stopped early (run.fail_fast)")
    assert state in drive.TERMINAL


# ------------------------------------------------ on a real (in-process) Dask cluster



@pytest.fixture
def dask_client():
    with (
        LocalCluster(n_workers=1, threads_per_worker=4, processes=False,
                     dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        yield client


def run(client, function, inputs, *, retries=0, fail_fast=0, retry_exceptions=False,
        timeout=None):
    recorded: list[TaskOutcome] = []
    client.register_plugin(taskrun.AttemptCounter())  # a fresh count, as for each job
    ended = drive.run_tasks(
        client,
        taskrun.FunctionTask(function, timeout, retry_exceptions),
        list(enumerate(inputs)),
        command=False,
        retries=retries,
        record=recorded.append,
        attempts_on=taskrun.attempts_on,
        fail_fast=fail_fast,
    )
    return ended, sorted(recorded, key=lambda o: o.task)


def calls_in(folder) -> list[str]:
    """What the tasks noted (tasks are pickled, even in-process: they share files only)."""
    return sorted(p.read_text() for p in folder.iterdir()) if folder.exists() else []


def note(folder, text: str) -> None:
    import uuid

    folder.mkdir(exist_ok=True)
    (folder / uuid.uuid4().hex).write_text(text)


def test_the_first_tasks_failing_alike_stop_the_job(dask_client, tmp_path):
    slots, release, calls = tmp_path / "slots", tmp_path / "release", tmp_path / "calls"
    slots.mkdir()

    def task(x):
        import os
        import time

        note(calls, str(x))
        for slot in range(5):  # the first five calls fail, whatever their order
            try:
                os.close(os.open(slots / str(slot), os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                continue
            raise FileNotFoundError("data.csv is missing")
        while not release.exists():  # the rest would run for long: not to be waited for
            time.sleep(0.05)
        return x

    try:
        ended, outcomes = run(dask_client, task, range(40), fail_fast=5)
    finally:
        release.touch()
    assert ended == drive.FAILED_FAST
    assert len(outcomes) == 5 and {o.status for o in outcomes} == {"failed"}
    assert {o.error.splitlines()[0] for o in outcomes} == {
        "FileNotFoundError: data.csv is missing"}
    assert len(calls_in(calls)) < 40  # the rest were cancelled, not run
    message = drive.fail_fast_message(outcomes, 35, 40)
    assert message.startswith("stopped early (run.fail_fast): the first 5 tasks all failed the "
                              "same way (FileNotFoundError: data.csv is missing)")
    assert "35 of 40 tasks not run" in message


def test_different_failures_or_one_success_run_every_task(dask_client):
    def differently(x):
        raise ValueError(f"bad input {x}")  # the message differs: not one cause

    ended, outcomes = run(dask_client, differently, range(12), fail_fast=5)
    assert ended == drive.FINISHED and len(outcomes) == 12

    def all_but_one(x):
        if x == 0:
            return x
        raise ValueError("always")

    ended, outcomes = run(dask_client, all_but_one, range(12), fail_fast=5)
    assert ended == drive.FINISHED and len(outcomes) == 12  # something succeeded
    ended, outcomes = run(dask_client, lambda x: 1 / 0, range(12), fail_fast=0)
    assert ended == drive.FINISHED and len(outcomes) == 12  # fail_fast off


def test_a_function_s_exception_is_not_retried_unless_the_spec_asks(dask_client, tmp_path):
    calls = tmp_path / "calls"

    def broken(x):
        note(calls, str(x))
        raise KeyError(x)

    ended, outcomes = run(dask_client, broken, [7], retries=2)
    assert ended == drive.FINISHED and calls_in(calls) == ["7"]  # deterministic: once
    assert outcomes[0].status == "failed" and outcomes[0].attempts == 1
    assert outcomes[0].error.startswith("KeyError: 7")

    calls = tmp_path / "calls-again"
    ended, outcomes = run(dask_client, broken, [7], retries=2, retry_exceptions=True)
    assert calls_in(calls) == ["7", "7", "7"] and outcomes[0].attempts == 3
    assert outcomes[0].error.startswith("KeyError: 7")


def test_a_timed_out_function_is_retried(dask_client, tmp_path):
    calls = tmp_path / "calls"

    def stuck(x):
        import time

        note(calls, str(x))
        while True:
            time.sleep(0.01)

    ended, outcomes = run(dask_client, stuck, [1], retries=1, timeout=0.3)
    assert calls_in(calls) == ["1", "1"] and outcomes[0].attempts == 2
    error = outcomes[0].error
    assert error.startswith("TimeoutError: timed out after 0.3s\n")
    # where the function was when it was stopped, in the user's file
    assert f'File "{__file__}"' in error and ", in stuck\n" in error
    assert "time.sleep(0.01)" in error and "<dynamic-code>" not in error


def test_a_command_s_failures_are_alike_by_exit_code_and_last_stderr_line():
    def failed(code, stderr):
        return TaskOutcome(0, {}, "failed", error=f"exit code {code}", exit_code=code,
                           stderr_tail=stderr)

    same = drive.failure_signature(failed(2, "usage\nno such file: x\n"), command=True)
    assert same == drive.failure_signature(failed(2, "other\nno such file: x"), command=True)
    assert same != drive.failure_signature(failed(2, "no such file: y"), command=True)
    assert same != drive.failure_signature(failed(1, "no such file: x"), command=True)
    message = drive.fail_fast_message([failed(2, "usage\nno such file: x")] * 5, 3, 8)
    assert "(exit code 2: no such file: x)" in message and "3 of 8 tasks not run" in message


def _sleep_for(seconds):
    import time

    time.sleep(seconds)
    return seconds


def test_the_deadline_ends_the_run_with_what_finished_recorded_and_released(dask_client):
    """Tasks stream from the client's event loop: those done before stop_at are recorded (and
    their values released on the cluster as they are), the rest cancelled, DEADLINE returned."""
    import time

    recorded: list[TaskOutcome] = []
    ended = drive.run_tasks(
        dask_client,
        taskrun.FunctionTask(_sleep_for, None, False),
        list(enumerate([0, 0, 0, 6, 6])),
        command=False,
        retries=0,
        record=recorded.append,
        stop_at=time.time() + 3,
    )
    assert ended == drive.DEADLINE
    assert sorted(o.task for o in recorded) == [0, 1, 2]
    assert all(o.status == "done" and o.result == 0 for o in recorded)

    def keys(dask_scheduler=None):
        return [k for k in dask_scheduler.tasks if str(k).startswith("task-")]

    for _ in range(50):  # released and cancelled through the scheduler, a moment later
        if not dask_client.run_on_scheduler(keys):
            break
        time.sleep(0.1)
    assert dask_client.run_on_scheduler(keys) == []
