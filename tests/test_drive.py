"""The detached job's driver, in pieces that need no cluster: what it writes to the bucket as
tasks finish, and how it names the end of a job."""

from __future__ import annotations

import json

from burst import drive
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
