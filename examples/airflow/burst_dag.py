"""An Airflow DAG that runs a burst job as one task and hands its manifest to the next.

The task runs `burst run SPEC --json`: stdout is the manifest alone (JSON), the progress on
stderr goes to the task log, and the exit code says what happened. The manifest is the task's
return value, so Airflow pushes it to XCom for downstream tasks. burst tears its cluster down
on every path, so a failed or retried task leaves no instance behind.

Put this file in your DAGs folder, with `burst` installed where the task runs, and set
BURST_SPEC (default jobs/pi.yaml, relative to the worker's working directory).
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime, timedelta

try:  # Airflow 3
    from airflow.sdk import dag, task
    from airflow.sdk.exceptions import AirflowException, AirflowFailException
except ImportError:  # Airflow 2
    from airflow.decorators import dag, task
    from airflow.exceptions import AirflowException, AirflowFailException

SPEC = os.environ.get("BURST_SPEC", "jobs/pi.yaml")

# burst's exit codes: 0 ok, 1 job failed (some tasks raised), 2 bad spec, 3 cloud or capacity
# error, 4 over budget, 5 max_runtime reached (the finished results are kept), 130
# interrupted. Bad input, a budget refusal and a job too long for its max_runtime will not
# get better by retrying (resume it instead: `burst run SPEC --resume JOB_ID`); a cloud error
# or an interruption may.
NO_RETRY = {
    1: "the job failed",
    2: "the spec is invalid",
    4: "the budget refused the job",
    5: "max_runtime was reached (finished results kept; raise max_runtime or resume)",
}


def burst_command(spec: str) -> list[str]:
    return ["burst", "run", spec, "--json"]


def burst_run(spec: str) -> dict:
    """Run one burst job to completion; return its manifest or fail the task."""
    # stderr is inherited: burst's progress and errors stream into the task log.
    done = subprocess.run(burst_command(spec), stdout=subprocess.PIPE, text=True)
    manifest = json.loads(done.stdout) if done.stdout.strip() else None
    if done.returncode == 0:
        return manifest
    why = manifest["error"] if manifest and manifest.get("error") else "see burst's errors above"
    if manifest and manifest.get("failures"):
        why += f"; first failure: {manifest['failures'][0]['error'].splitlines()[0]}"
    message = f"burst run {spec} exited {done.returncode}: {why}"
    if done.returncode in NO_RETRY:
        raise AirflowFailException(f"{NO_RETRY[done.returncode]}: {message}")
    raise AirflowException(message)  # retried as the task's `retries` say


@dag(
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["burst"],
)
def burst_job():
    @task(retries=2, retry_delay=timedelta(minutes=2))
    def run_job() -> dict:
        return burst_run(SPEC)  # the manifest goes to XCom as the task's return value

    @task
    def report(manifest: dict) -> dict:
        print(f"job {manifest['job_id']}: {manifest['status']}, result {manifest['result']}")
        print(f"teardown verified: {manifest['teardown']['verified']}")
        return manifest["result"]

    report(run_job())


burst_job()
