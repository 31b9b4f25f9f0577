"""An Airflow DAG that submits a burst job, waits for it in a second task, and hands its
manifest to the next.

`burst submit SPEC --json` launches the job's cluster, hands the job to a driver on it and
returns at once with `{"job_id": ...}`: the job runs on without the Airflow worker. `burst
wait JOB_ID --json` blocks until the job ends, downloads its results, deletes what is left of
the cluster (verified) and exits with the job's code; its stdout is the manifest alone. A
restarted Airflow worker loses nothing: the wait task runs again and finds the job by its id
(waiting again for a collected job gives its manifest again). The manifest is the wait
task's return value, so Airflow pushes it to XCom for downstream tasks.

Put this file in your DAGs folder, with `burst` installed where the tasks run, and set
BURST_SPEC (default jobs/pi.yaml, relative to the worker's working directory). On the
sandbox, `burst sandbox up` first (the job needs a cloud that outlives the submit).
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


def burst_command(*args: str) -> list[str]:
    return ["burst", *args, "--json"]


def _burst(*args: str) -> dict:
    """One burst command; its JSON, or the task fails (for good, or to be retried)."""
    # stderr is inherited: burst's progress and errors stream into the task log.
    done = subprocess.run(burst_command(*args), stdout=subprocess.PIPE, text=True)
    document = json.loads(done.stdout) if done.stdout.strip() else None
    if done.returncode == 0:
        return document
    why = "see burst's errors above"
    if isinstance(document, dict) and document.get("error"):
        why = document["error"]
    if isinstance(document, dict) and document.get("failures"):
        why += f"; first failure: {document['failures'][0]['error'].splitlines()[0]}"
    message = f"burst {' '.join(args)} exited {done.returncode}: {why}"
    if done.returncode in NO_RETRY:
        raise AirflowFailException(f"{NO_RETRY[done.returncode]}: {message}")
    raise AirflowException(message)  # retried as the task's `retries` say


def burst_submit(spec: str) -> str:
    """Submit the job; its id (to XCom)."""
    return _burst("submit", spec)["job_id"]


def burst_wait(job_id: str) -> dict:
    """Wait for the job, collect it; its manifest (to XCom)."""
    return _burst("wait", job_id)


@dag(
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["burst"],
)
def burst_job():
    @task(retries=2, retry_delay=timedelta(minutes=2))
    def submit_job() -> str:
        return burst_submit(SPEC)

    @task(retries=3, retry_delay=timedelta(minutes=1))
    def wait_job(job_id: str) -> dict:
        return burst_wait(job_id)

    @task
    def report(manifest: dict) -> dict:
        print(f"job {manifest['job_id']}: {manifest['status']}, result {manifest['result']}")
        print(f"teardown verified: {manifest['teardown']['verified']}")
        return manifest["result"]

    report(wait_job(submit_job()))


burst_job()
