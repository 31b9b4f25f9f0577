"""The workflow-tool examples: Prefect's really runs; Airflow's and Snakemake's commands are
checked against the CLI (those tools are too heavy to install in CI)."""

from __future__ import annotations

import json
import math
import os
import re
import runpy
import shutil
import subprocess
import sys
import types

import pytest

from tests.conftest import BURST, REPO, client, settled_leftovers
from tests.test_pipeline import write_job

EXAMPLES = REPO / "examples"


def test_prefect_flow_runs_its_tasks_on_a_burst_cluster(sandbox, tmp_path, monkeypatch):
    pytest.importorskip("prefect_dask")
    # Prefect keeps its state under PREFECT_HOME: a private one, with no telemetry.
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        # The flow runs as a user runs it, as a script, reporting to this test's server on
        # 127.0.0.1; the workers get the server's address with each task's context.
        done = subprocess.run(
            [sys.executable, str(EXAMPLES / "prefect" / "flow.py")],
            cwd=tmp_path, capture_output=True, text=True, timeout=600,
            env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()},
        )
        assert done.returncode == 0, done.stderr
        with get_client(sync_client=True) as prefect:
            flow_runs = prefect.read_flow_runs()
            task_runs = prefect.read_task_runs()
    result = json.loads(done.stdout.splitlines()[-1])
    assert abs(result["pi"] - math.pi) < 0.05 and result["tasks"] == 16
    assert [run.state.type.value for run in flow_runs] == ["COMPLETED"]
    names = sorted(run.task_key.rsplit("-", 1)[0] for run in task_runs)
    assert names == ["estimate"] + ["throw_darts"] * 16 + ["where"]
    assert {run.state.type.value for run in task_runs} == {"COMPLETED"}
    assert "Creating a new Dask cluster with `burst.cluster.BurstCluster`" in done.stderr
    # The task ran on a sandbox instance, which is gone with the rest of its cluster.
    described = client(sandbox, "ec2").describe_instances(InstanceIds=[result["ran_on"]])
    instance = described["Reservations"][0]["Instances"][0]
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags["burst:role"] == "worker" and tags["burst:job"].startswith("prefect-pi-")
    assert settled_leftovers(sandbox, tags["burst:cluster"]) == []


def _fake_airflow(monkeypatch) -> type[Exception]:
    """Just enough of Airflow's names for the DAG file to load, as plain Python."""
    import types

    class AirflowException(Exception):
        pass

    class AirflowFailException(AirflowException):
        pass

    def dag(**options):  # calling the decorated function declares the DAG, runs nothing
        return lambda function: (lambda: declared.append((function.__name__, options)))

    def task(function=None, **options):
        return function if callable(function) else (lambda f: f)

    declared: list = []
    modules = {
        "airflow": types.ModuleType("airflow"),
        "airflow.sdk": types.SimpleNamespace(dag=dag, task=task),
        "airflow.sdk.exceptions": types.SimpleNamespace(
            AirflowException=AirflowException, AirflowFailException=AirflowFailException),
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return AirflowFailException, declared


def test_airflow_tasks_submit_then_wait_and_fail_on_a_bad_exit(sandbox, tmp_path, monkeypatch):
    source = (EXAMPLES / "airflow" / "burst_dag.py").read_text()
    compile(source, "burst_dag.py", "exec")  # a DAG file Airflow can parse
    fail, declared = _fake_airflow(monkeypatch)
    monkeypatch.setenv("PATH", f"{os.path.dirname(BURST)}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    dag = runpy.run_path(str(EXAMPLES / "airflow" / "burst_dag.py"))
    assert [name for name, options in declared] == ["burst_job"]
    spec = write_job(tmp_path, "double", "def task(x):\n    return 2 * x\n", tasks="[1, 2, 3]")
    assert dag["burst_command"]("submit", str(spec)) == ["burst", "submit", str(spec), "--json"]

    job_id = dag["burst_submit"](str(spec))  # the first task's return value, into XCom
    manifest = dag["burst_wait"](job_id)  # the second's, after the job ran without it
    assert manifest["job_id"] == job_id and manifest["status"] == "succeeded"
    assert manifest["teardown"]["verified"]
    assert (tmp_path / "results" / job_id / "results.jsonl").exists()
    assert dag["burst_wait"](job_id) == manifest  # a retried wait task gets the same
    assert settled_leftovers(sandbox, manifest["cluster_id"]) == []

    (tmp_path / "bad.yaml").write_text("name: bad\ncores: -4\n")
    with pytest.raises(fail, match="the spec is invalid: burst submit bad.yaml exited 2"):
        dag["burst_submit"]("bad.yaml")

    failing = write_job(tmp_path, "broken", "def task(x):\n    raise ValueError(x)\n",
                        tasks="[7]", extra="  retries: 0\n")
    broken = dag["burst_submit"](str(failing))
    with pytest.raises(fail, match=r"the job failed: burst wait .* exited 1.*ValueError: 7"):
        dag["burst_wait"](broken)


def test_snakemake_rule_command_is_a_burst_run_json_call(sandbox, tmp_path):
    snakefile = (EXAMPLES / "snakemake" / "Snakefile").read_text()
    commands = re.findall(r'shell:\s*\n\s*"([^"]+)"', snakefile)
    assert commands == ["burst run {input.spec} --json > {output.manifest} 2> {log}"]
    assert 'spec="jobs/pi.yaml"' in snakefile
    # The rule's command, with Snakemake's placeholders filled in, run by a shell as
    # Snakemake would (with a smaller pi job).
    (tmp_path / "jobs").mkdir()
    shutil.copy(REPO / "jobs" / "pi.py", tmp_path / "jobs")
    pi = (REPO / "jobs" / "pi.yaml").read_text().replace("{range: 200}", "{range: 20}")
    (tmp_path / "jobs" / "pi.yaml").write_text(pi)
    (tmp_path / "results").mkdir()
    (tmp_path / "logs").mkdir()
    command = commands[0].format(
        input=types.SimpleNamespace(spec="jobs/pi.yaml"),
        output=types.SimpleNamespace(manifest="results/pi.manifest.json"),
        log="logs/pi.burst.log",
    )
    done = subprocess.run(["bash", "-c", f"set -euo pipefail; {command}"], cwd=tmp_path,
                          env={**os.environ, "PATH": f"{os.path.dirname(BURST)}:/usr/bin:/bin"},
                          timeout=300)
    assert done.returncode == 0, (tmp_path / "logs" / "pi.burst.log").read_text()
    manifest = json.loads((tmp_path / "results" / "pi.manifest.json").read_text())
    assert abs(manifest["result"]["pi"] - math.pi) < 0.05
    assert "workers joined" in (tmp_path / "logs" / "pi.burst.log").read_text()
    assert (tmp_path / "results" / manifest["job_id"] / "manifest.json").exists()
    assert settled_leftovers(sandbox, manifest["cluster_id"]) == []
