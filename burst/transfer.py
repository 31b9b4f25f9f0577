"""The S3 side of a command sweep on the client: upload the job's files and local inputs to
the cluster's bucket before the run, download the tasks' outputs after it (before teardown
deletes the bucket). The pure half (rows, template, file list) is burst.sweep.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import tarfile
import tempfile
from pathlib import Path

from botocore.exceptions import ClientError

from burst.job import Job
from burst.results import OUTPUTS, TaskOutcome, private_folder
from burst.spec import input_name
from burst.storage import Bucket
from burst.sweep import prefix
from burst.taskrun import CommandTask


def command_task(job: Job, bucket: Bucket, job_id: str) -> CommandTask:
    """Upload the job's files and local inputs to the cluster's bucket; the task fetches them."""
    base = prefix(job_id)
    inputs = []
    with tempfile.TemporaryDirectory(prefix="burst-upload-") as tmp:
        code = Path(tmp) / "code.tar.gz"
        with tarfile.open(code, "w:gz") as tar:
            for rel in job.files or []:
                tar.add(job.folder / rel, arcname=rel.as_posix(), recursive=False)
        bucket.upload(code, f"{base}/code.tar.gz")
        for item in job.spec.inputs:
            name = input_name(item)
            if item.startswith("s3://"):
                source_bucket, _, key = item[5:].partition("/")
                inputs.append({"name": name, "kind": "object", "bucket": source_bucket, "key": key})
                continue
            path = job.folder / item
            key = f"{base}/inputs/{name}"
            if path.is_dir():
                archive = Path(tmp) / f"{name}.tar"
                with tarfile.open(archive, "w") as tar:
                    tar.add(path, arcname=name)
                bucket.upload(archive, key + ".tar")
                archive.unlink()
                inputs.append(
                    {"name": name, "kind": "tar", "bucket": bucket.name, "key": key + ".tar"}
                )
            else:
                bucket.upload(path, key)
                inputs.append({"name": name, "kind": "object", "bucket": bucket.name, "key": key})
    timeout = job.spec.run.timeout
    return CommandTask(
        {
            "bucket": bucket.name,
            "region": bucket.region,
            "prefix": base,
            "job_id": job_id,
            "argv": job.command,
            "timeout": timeout.total_seconds() if timeout else None,
            "code": f"{base}/code.tar.gz",
            "inputs": inputs,
        }
    )


def bad_part(path: str) -> bool:
    """A relative path that could leave its folder, or name it: empty, absolute, with an
    empty, '.' or '..' part, a backslash or a NUL."""
    return (
        not isinstance(path, str)
        or not path
        or "\\" in path
        or "\0" in path
        or any(part in ("", ".", "..") for part in path.split("/"))
    )


def download_outputs(
    bucket: Bucket, job_id: str, folder: Path, outcomes: list[TaskOutcome]
) -> tuple[list[TaskOutcome], list[str]]:
    """Each done command task's outputs, from the bucket into its folder of the results
    (`outcome.folder`, such as outputs/seed=3,temp=0.5), before teardown deletes the bucket.

    Only what a task reported it wrote (its `result.outputs`) is downloaded, from its own
    outputs/<task>/ in the bucket, and each file is checked against the SHA-256 the task
    reported: a task cannot put files into another task's folder, nor change them unseen.
    A name with an empty, '.' or '..' part, a missing object or one whose content changed
    fails that task alone (its folder is removed). Returns those tasks' outcomes, now failed,
    and the keys under outputs/ that no task reported (ignored, never downloaded)."""
    base = f"{prefix(job_id)}/outputs"
    failed, claimed = [], set()
    for outcome in outcomes:
        result = outcome.result if isinstance(outcome.result, dict) else {}
        names = result.get("outputs") or []
        if outcome.status != "done" or not names:
            continue
        keys = {name: f"{base}/{outcome.task}/{name}" for name in names if not bad_part(name)}
        claimed.update(keys.values())
        problem = _download_task(bucket, folder, outcome, names, keys, result.get("sha256"))
        if problem is not None:
            failed.append(
                dataclasses.replace(
                    outcome, status="failed", error=f"outputs: {problem}", result=None, folder=None
                )
            )
    ignored = [key for key in bucket.keys(f"{base}/") if key not in claimed]
    return failed, ignored


def _download_task(
    bucket: Bucket,
    folder: Path,
    outcome: TaskOutcome,
    names: list[str],
    keys: dict[str, str],
    digests: dict[str, str] | None,
) -> str | None:
    """One task's outputs into its folder; the reason it failed, or None."""
    where = outcome.folder or f"{OUTPUTS}/{outcome.task}"
    parts = where.split("/")
    if len(parts) != 2 or parts[0] != OUTPUTS or bad_part(parts[1]):
        return f"refused the folder {where!r}: one folder under {OUTPUTS}/ is accepted"
    target_folder = private_folder(folder) / where
    problem = None
    for name in names:
        if bad_part(name):
            problem = (
                f"refused the output name {name!r}: a relative path without empty, '.' or "
                "'..' parts is accepted"
            )
            break
        target = target_folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            bucket.s3.download_file(bucket.name, keys[name], str(target))
        except ClientError as error:
            problem = f"{name!r} could not be downloaded from the bucket: {error}"
            break
        if digests is not None:
            with open(target, "rb") as stream:
                digest = hashlib.file_digest(stream, "sha256").hexdigest()
            if digest != digests.get(name):
                problem = (
                    f"{name!r} in the bucket is not what task {outcome.task} wrote (it changed "
                    "after the task uploaded it: another task may have written into its folder)"
                )
                break
    if problem is not None:
        shutil.rmtree(target_folder, ignore_errors=True)  # a failed task keeps no outputs
    return problem
