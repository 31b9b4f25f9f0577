"""Detached jobs: submitted, then the submitter is gone; found again by id from a fresh
process; waited for, cancelled, listed. Each drill ends with nothing left in the sandbox."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from burst import state
from burst.cloud import sandbox as sandbox_module
from tests.conftest import BURST, settled_leftovers
from tests.test_pipeline import write_job

TASK = """
    import time

    def task(x):
        time.sleep({seconds})
        if x == {fail}:
            raise ValueError(f"bad input {{x}}")
        return x * x
    """


def burst(*args: str, cwd, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([BURST, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def submit(spec, cwd) -> dict:
    done = burst("submit", str(spec), "--json", cwd=cwd)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # the submitting process is gone from here on


def test_a_submitted_job_is_waited_for_by_another_process(sandbox, tmp_path):
    spec = write_job(tmp_path, "detached_job", TASK.format(seconds=0.2, fail=-1),
                     tasks="{range: 12}")
    spec.write_text(spec.read_text() + "  reduce: detached_job:total\n")
    (tmp_path / "detached_job.py").write_text(
        (tmp_path / "detached_job.py").read_text() + "\n\ndef total(values):\n"
        "    return sum(values)\n")
    submitted = submit(spec, tmp_path)
    job_id = submitted["job_id"]
    assert submitted["state"] == "running" and submitted["cloud"] == "sandbox"

    logs = burst("logs", job_id, "--follow", cwd=tmp_path)  # until the driver ends the job
    assert logs.returncode == 0 and "driving 12 tasks" in logs.stdout
    assert f"job {job_id}: succeeded" in logs.stdout
    status = burst("status", job_id, "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["state"] == "succeeded"
    assert json.loads(status.stdout)["tasks"] == {"done": 12, "failed": 0, "total": 12}

    waited = burst("wait", job_id, "--json", cwd=tmp_path)
    assert waited.returncode == 0, waited.stderr
    manifest = json.loads(waited.stdout)
    assert manifest["status"] == "succeeded" and manifest["mode"] == "detached"
    assert manifest["result"] == sum(x * x for x in range(12))
    assert manifest["tasks"] == {"total": 12, "done": 12, "failed": 0, "retried": 0}
    assert manifest["teardown"]["verified"] and float(manifest["cost"]["actual"]) > 0
    folder = tmp_path / "results" / job_id
    lines = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    assert [line["result"] for line in lines] == [x * x for x in range(12)]
    assert json.loads((folder / "manifest.json").read_text())["status"] == "succeeded"
    assert "driving 12 tasks" in (folder / "driver.log").read_text()

    listed = burst("ls", "--json", cwd=tmp_path)
    row = next(r for r in json.loads(listed.stdout) if r["job_id"] == job_id)
    assert row["state"] == "succeeded" and row["mode"] == "detached"
    assert settled_leftovers(sandbox, submitted["cluster_id"]) == []
    # Collected once: the cloud side is gone; waiting again gives the same, and keeps the files.
    before = (folder / "results.jsonl").read_text()
    for command in ("wait", "results"):
        again = burst(command, job_id, "--json", cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout) == manifest
    assert (folder / "results.jsonl").read_text() == before
    status = json.loads(burst("status", job_id, "--json", cwd=tmp_path).stdout)
    assert status["state"] == "succeeded" and status["tasks"]["done"] == 12  # from the manifest


def test_a_failing_detached_job_exits_1_and_keeps_the_rest(sandbox, tmp_path):
    spec = write_job(tmp_path, "failing_detached", TASK.format(seconds=0, fail=3),
                     tasks="{range: 6}", extra="")
    spec.write_text(spec.read_text() + "  retries: 0\n")
    submitted = submit(spec, tmp_path)
    waited = burst("wait", submitted["job_id"], "--json", cwd=tmp_path)
    assert waited.returncode == 1, waited.stderr
    manifest = json.loads(waited.stdout)
    assert manifest["status"] == "failed" and manifest["tasks"]["done"] == 5
    [failure] = manifest["failures"]
    assert failure["task"] == 3 and failure["error"].startswith("ValueError: bad input 3")
    assert settled_leftovers(sandbox, submitted["cluster_id"]) == []


def test_cancel_stops_a_detached_job_and_keeps_what_finished(sandbox, tmp_path):
    spec = write_job(tmp_path, "cancelled_detached", TASK.format(seconds=0.5, fail=-1),
                     tasks="{range: 400}")
    submitted = submit(spec, tmp_path)
    job_id = submitted["job_id"]
    give_up = time.monotonic() + 120
    while time.monotonic() < give_up:
        status = json.loads(burst("status", job_id, "--json", cwd=tmp_path).stdout)
        if (status["tasks"]["done"] or 0) >= 4:
            break
        time.sleep(1)
    cancelled = burst("cancel", job_id, "--json", cwd=tmp_path)
    assert cancelled.returncode == 0, cancelled.stderr
    manifest = json.loads(cancelled.stdout)
    assert manifest["status"] == "cancelled" and manifest["teardown"]["verified"]
    kept = (tmp_path / "results" / job_id / "results.jsonl").read_text().splitlines()
    assert 4 <= len(kept) == manifest["tasks"]["done"] < 400
    assert settled_leftovers(sandbox, submitted["cluster_id"]) == []
    listed = json.loads(burst("ls", "--json", cwd=tmp_path).stdout)
    assert next(r for r in listed if r["job_id"] == job_id)["state"] == "cancelled"


def test_the_job_index_records_and_refuses_unknown_columns(tmp_path, monkeypatch):
    monkeypatch.setenv("BURST_HOME", str(tmp_path))
    state.record("a-1", name="a", mode="attached", state="running", cores=4)
    time.sleep(0.01)
    state.record("b-2", name="b", mode="detached", state="launching")
    state.record("a-1", state="succeeded", cost="0.01")
    assert state.get("a-1")["state"] == "succeeded" and state.get("a-1")["cores"] == "4"
    assert [row["job_id"] for row in state.jobs()] == ["b-2", "a-1"]  # newest first
    assert state.get("missing") is None
    try:
        state.record("a-1", colour="red")
    except ValueError as error:
        assert "colour" in str(error)
    else:
        raise AssertionError("an unknown column was accepted")


@pytest.mark.sandbox
def test_a_sandbox_started_for_detached_jobs_stops_itself_when_idle(tmp_path, monkeypatch):
    monkeypatch.setenv("BURST_HOME", str(tmp_path))
    # 8 s idle: long enough for start_detached to see it answer on a loaded machine (with 2 s it
    # could stop between two of its polls, and the test waited for a sandbox already gone)
    started = sandbox_module.start_detached(idle_stop=8)  # returns once it answered
    assert started["endpoint"].startswith("http://127.0.0.1:")
    give_up = time.monotonic() + 60
    while sandbox_module.state_file().exists() and time.monotonic() < give_up:
        time.sleep(0.5)
    assert not sandbox_module.state_file().exists()
    assert sandbox_module.running_sandbox() is None
    assert "no instance for 8s: the sandbox stops" in (tmp_path / "sandbox.log").read_text()


def test_a_detached_job_whose_tasks_all_fail_alike_stops_early(sandbox, tmp_path):
    spec = write_job(tmp_path, "detached_fails", TASK.format(seconds=0.2, fail="x"),
                     tasks="{range: 200}")
    (tmp_path / "detached_fails.py").write_text(
        (tmp_path / "detached_fails.py").read_text().replace('f"bad input {x}"', '"no model"'))
    submitted = submit(spec, tmp_path)
    waited = burst("wait", submitted["job_id"], "--json", cwd=tmp_path)
    assert waited.returncode == 1, waited.stderr
    manifest = json.loads(waited.stdout)
    assert manifest["status"] == "failed_fast", manifest["error"]
    assert manifest["error"].startswith("stopped early (run.fail_fast): the first 5 tasks all "
                                        "failed the same way (ValueError: no model)")
    assert manifest["tasks"]["failed"] == 5 and manifest["tasks"]["not_run"] == 195
    assert {f["attempts"] for f in manifest["failures"]} == {1}  # not retried
    assert manifest["teardown"]["verified"]
    assert settled_leftovers(sandbox, submitted["cluster_id"]) == []


def test_a_detached_sweep_s_outputs_are_named_by_their_parameters(sandbox, tmp_path):
    (tmp_path / "write.py").write_text(
        "import os, sys\nfrom pathlib import Path\n\n"
        "Path(os.environ['BURST_OUTPUT'], 'out.txt').write_text(' '.join(sys.argv[1:]))\n")
    (tmp_path / "named.yaml").write_text(
        "name: named-detached\ncores: 2\nmax_runtime: 5m\ninstance_types: [c5.large]\n"
        "run:\n  command: python write.py {seed} {temp}\n"
        "  params: {seed: [1, 2], temp: [0.5]}\n")
    submitted = submit(tmp_path / "named.yaml", tmp_path)
    waited = burst("wait", submitted["job_id"], "--json", cwd=tmp_path)
    assert waited.returncode == 0, waited.stderr
    folder = tmp_path / "results" / submitted["job_id"]
    lines = [json.loads(line) for line in (folder / "results.jsonl").open()]
    assert [line["folder"] for line in lines] == ["outputs/seed=1,temp=0.5",
                                                  "outputs/seed=2,temp=0.5"]
    assert (folder / "outputs" / "seed=2,temp=0.5" / "out.txt").read_text() == "2 0.5"
    assert (folder / "outputs" / "index.csv").read_text().splitlines() == [
        "task,folder,seed,temp", '0,"outputs/seed=1,temp=0.5",1,0.5',
        '1,"outputs/seed=2,temp=0.5",2,0.5']
    assert folder.stat().st_mode & 0o777 == 0o700
    assert settled_leftovers(sandbox, submitted["cluster_id"]) == []


def test_wait_replaces_a_detached_job_s_interrupted_worker(sandbox, tmp_path):
    """The driver holds no right to launch; `burst wait` (this machine's keys) sees the
    interrupted worker's instance end and launches its cores again in another pool."""
    from burst import detached

    spec = write_job(tmp_path, "replaced_detached", TASK.format(seconds=1, fail=-1),
                     tasks="{range: 60}")
    submitted = submit(spec, tmp_path)
    job = detached.locate(submitted["job_id"])
    cluster = job.read_json("cluster.json")
    assert cluster["target_cores"] == 4 and cluster["launch"]["template_id"]
    workers = [i for i in cluster["instances"] if i["role"] == "worker"]
    lost = workers[0]
    sandbox.hypervisor.interrupt(lost["instance_id"], notice_seconds=1)

    said: list[str] = []
    manifest = detached.wait(job, replace_every=1, on_log=said.append)
    assert manifest["status"] == "succeeded", manifest["error"]
    # The lost worker's running tasks ran again elsewhere: retried, none failed.
    assert manifest["tasks"]["done"] == 60 and manifest["tasks"]["failed"] == 0
    elasticity = manifest["elasticity"]
    [interruption] = elasticity["interruptions"]
    assert interruption["instance_id"] == lost["instance_id"] and interruption["replaced_by"] == 0
    [replacement] = elasticity["replacements"]
    assert replacement["for"] == [lost["instance_id"]] and replacement["cores"] >= 2
    lost_pool = f"{lost['instance_type']} {lost['zone']} {lost['market']}"
    assert lost_pool not in replacement["pools"]  # planned again without the lost pool
    assert float(replacement["cost"]) > 0 and float(elasticity["replacement_cost"]) > 0
    ids = {i["instance_id"] for i in manifest["instances"]}
    assert set(replacement["instances"]) <= ids  # billed in the manifest's cost
    assert any(line.startswith(f"worker {lost['instance_id']}") for line in said), said
    assert replacement["seconds_to_rejoin"] > 0, said  # the driver listed them as joined
    # The replacement booted and joined the job's scheduler.
    console = sandbox.folder / replacement["instances"][0] / "console.log"
    assert "Registered to:" in console.read_text()
    assert manifest["teardown"]["verified"]
    assert settled_leftovers(sandbox, submitted["cluster_id"]) == []


def test_a_node_environment_and_instance_records_read_back_from_their_dicts():
    """What `wait` launches replacements with, kept as JSON in the job's bucket."""
    from datetime import UTC, datetime
    from decimal import Decimal

    from burst.cloud.base import InstanceRecord, NetworkRequest, NodeEnvironment

    env = NodeEnvironment("vpc-1", {"us-east-1a": "subnet-1"}, "sg-1", "profile-s",
                          {"x86_64": "ami-1"}, "profile-w", disk_gb=30,
                          network=NetworkRequest(("subnet-1",), "scheduler"))
    assert NodeEnvironment.from_dict(json.loads(json.dumps(env.to_dict()))) == env
    bare = NodeEnvironment("vpc-1", {}, "sg-1", "profile-s", {})
    assert NodeEnvironment.from_dict(bare.to_dict()) == bare
    record = InstanceRecord("i-1", "worker", "c5.large", "us-east-1a", "spot", "running",
                            datetime(2026, 1, 1, tzinfo=UTC), vcpus=2,
                            hourly=Decimal("0.0401"), private_ip="10.0.0.1")
    assert InstanceRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record
