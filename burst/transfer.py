"""The S3 side of a command sweep on the client: upload the job's files and local inputs to
the cluster's bucket before the run, download the tasks' outputs after it (before teardown
deletes the bucket). The pure half (rows, template, file list) is burst.sweep.
"""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path

from burst.job import Job
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


def download_outputs(bucket: Bucket, job_id: str, folder: Path) -> list[Path]:
    """results/<job-id>/outputs/<task>/..., from the bucket, before teardown deletes it."""
    return bucket.download_prefix(f"{prefix(job_id)}/outputs", folder)
