"""Finished work is never lost: results stream to disk as tasks finish, the deadline is its
own outcome (exit 5) and a resumed job runs only what is missing. Drills on the sandbox."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time

import numpy as np
from distributed import Client

from burst.cluster import BurstCluster
from burst.runner import run
from tests.conftest import BURST, client, leftovers, settled_leftovers
from tests.test_pipeline import write_job

SLOW = """
    import time

    import numpy as np

    def task(x):
        time.sleep({seconds})
        return {{"x": x, "square": np.int64(x * x), "pair": np.arange(2) * x}}
    """


def lines_of(folder) -> list[dict]:
    path = folder / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_the_deadline_keeps_results_exits_5_and_resume_runs_the_rest(sandbox, tmp_path):
    spec = write_job(tmp_path, "deadline_job", SLOW.format(seconds=0.3), tasks="{range: 400}",
                     extra="grace: 2m\n")
    spec.write_text(spec.read_text().replace("max_runtime: 5m", "max_runtime: 20s"))
    stopped = subprocess.run([BURST, "run", str(spec), "--json"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert stopped.returncode == 5, stopped.stderr
    first = json.loads(stopped.stdout)
    folder = tmp_path / "results" / first["job_id"]
    done = [line for line in lines_of(folder) if line["status"] == "done"]
    assert first["status"] == "deadline" and first["tasks"]["done"] == len(done)
    assert 0 < len(done) < 400 and first["teardown"]["verified"]
    assert f"max_runtime 20s reached: {len(done)} of 400 tasks done, results kept" in (
        stopped.stderr)
    assert f"--resume {first['job_id']}" in stopped.stderr
    # numpy values are JSON numbers and lists in results.jsonl
    line = done[0]
    x = line["input"]
    assert line["result"] == {"x": x, "square": x * x, "pair": [0, x]}

    spec.write_text(spec.read_text().replace("max_runtime: 20s", "max_runtime: 5m"))
    resumed = subprocess.run([BURST, "run", str(spec), "--resume", first["job_id"], "--json"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    second = json.loads(resumed.stdout)
    assert second["job_id"] == first["job_id"] and second["status"] == "succeeded"
    assert second["tasks"]["done"] == 400 and second["tasks"]["ran"] == 400 - len(done)
    assert [r["cluster_id"] for r in second["runs"]] == [first["cluster_id"],
                                                          second["cluster_id"]]
    assert sorted(line["task"] for line in lines_of(folder)) == list(range(400))
    for manifest in (first, second):
        assert settled_leftovers(sandbox, manifest["cluster_id"]) == []


def test_ctrl_c_keeps_the_finished_tasks_lines(sandbox, tmp_path):
    spec = write_job(tmp_path, "interrupted_job", SLOW.format(seconds=0.5), tasks="{range: 400}")
    process = subprocess.Popen([BURST, "run", str(spec), "--json"], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    give_up = time.monotonic() + 180
    folders = []
    while time.monotonic() < give_up:
        folders = list((tmp_path / "results").glob("*"))
        if folders and len(lines_of(folders[0])) >= 3:
            break
        time.sleep(0.2)
    assert folders, "no task finished"
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    manifest = json.loads(stdout)
    kept = lines_of(folders[0])
    assert manifest["status"] == "interrupted" and len(kept) >= 3
    assert manifest["tasks"]["done"] == len(kept) < 400  # the manifest counts the lines
    assert manifest["teardown"]["verified"]
    assert settled_leftovers(sandbox, manifest["cluster_id"]) == []


def test_function_tasks_have_a_timeout_and_their_output_captured(sandbox, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = write_job(tmp_path, "talkative_job", """
        import logging
        import time

        import numpy as np

        def task(x):
            print(f"hello {x}")
            logging.getLogger("science").warning("careful %s", x)
            if x == 3:
                time.sleep(60)
            return np.arange(3) * x
        """, tasks="{range: 4}", extra="")
    spec.write_text(spec.read_text() + "  timeout: 2s\n  retries: 0\n")
    result = run(spec)
    assert result.status == "failed"
    [failure] = result.failures
    assert failure.task == 3 and failure.error.startswith("TimeoutError: timed out after 2s")
    assert failure.stdout_tail == "hello 3"
    done = {o.task: o for o in result.outcomes if o.status == "done"}
    assert sorted(done) == [0, 1, 2]
    assert done[2].stdout_tail == "hello 2" and "careful 2" in done[2].stderr_tail
    # burst.run returns the real objects; results.jsonl holds them as JSON
    assert isinstance(done[2].result, np.ndarray) and done[2].result.tolist() == [0, 2, 4]
    stored = {line["task"]: line for line in lines_of(result.folder)}
    assert stored[2]["result"] == [0, 2, 4] and stored[2]["stdout_tail"] == "hello 2"
    assert stored[3]["status"] == "failed" and stored[3]["stdout_tail"] == "hello 3"
    assert settled_leftovers(sandbox, result.manifest["cluster_id"]) == []


def test_burst_cancel_tears_down_a_run_whose_client_was_killed(sandbox, tmp_path):
    spec = write_job(tmp_path, "orphan_job", SLOW.format(seconds=0.5), tasks="{range: 400}")
    with open(tmp_path / "stderr", "w") as stderr:
        process = subprocess.Popen([BURST, "run", str(spec)], cwd=tmp_path,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    give_up = time.monotonic() + 180
    folders = []
    while time.monotonic() < give_up and not (folders and len(lines_of(folders[0])) >= 2):
        folders = list((tmp_path / "results").glob("*"))
        time.sleep(0.2)
    process.kill()  # kill -9: no teardown, no manifest
    process.wait()
    job_id, cluster_id = re.search(r"job (\S+)  cluster (\S+)",
                                   (tmp_path / "stderr").read_text()).groups()
    assert any(f.startswith("instance") for f in leftovers(sandbox, cluster_id))
    kept = lines_of(folders[0])
    assert len(kept) >= 2

    cancelled = subprocess.run([BURST, "cancel", job_id, "--json"], cwd=tmp_path,
                               capture_output=True, text=True, timeout=300)
    assert cancelled.returncode == 0, cancelled.stderr
    [cluster] = json.loads(cancelled.stdout)
    assert cluster["cluster_id"] == cluster_id and cluster["teardown"]["verified"]
    assert settled_leftovers(sandbox, cluster_id) == []
    assert lines_of(folders[0])[: len(kept)] == kept  # the finished work is still there
    again = subprocess.run([BURST, "cancel", job_id], cwd=tmp_path, capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0 and f"nothing of job {job_id}" in again.stderr


def test_a_cluster_whose_client_was_killed_powers_itself_off(sandbox, tmp_path):
    """No client for no_client_timeout: the scheduler closes its workers and every instance
    powers off, long before the deadline; what costs nothing is left for cancel or gc."""
    spec = write_job(tmp_path, "abandoned_job", SLOW.format(seconds=0.5), tasks="{range: 400}",
                     extra="no_client_timeout: 10s\n")
    with open(tmp_path / "stderr", "w") as stderr:
        process = subprocess.Popen([BURST, "run", str(spec)], cwd=tmp_path,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    give_up = time.monotonic() + 180
    while time.monotonic() < give_up and not list((tmp_path / "results").glob("*/results.jsonl")):
        time.sleep(0.2)
    process.kill()
    process.wait()
    killed = time.monotonic()
    job_id, cluster_id = re.search(r"job (\S+)  cluster (\S+)",
                                   (tmp_path / "stderr").read_text()).groups()
    ec2 = client(sandbox, "ec2")
    tag = [{"Name": "tag:burst:cluster", "Values": [cluster_id]}]
    states: set[str] = set()
    while time.monotonic() - killed < 10 + 60 + 30:  # the timeout, a minute, and slack
        reply = ec2.describe_instances(Filters=tag)
        states = {i["State"]["Name"] for r in reply["Reservations"] for i in r["Instances"]}
        if states == {"terminated"}:
            break
        time.sleep(1)
    assert states == {"terminated"}
    seconds = time.monotonic() - killed
    consoles = [p.read_text(errors="replace") for p in sandbox.folder.glob("i-*/console.log")]
    assert any("no client for 10s: shutting the cluster down" in text for text in consoles)
    assert seconds < 70
    cancelled = subprocess.run([BURST, "cancel", job_id], cwd=tmp_path, capture_output=True,
                               text=True, timeout=300)
    assert cancelled.returncode == 0, cancelled.stderr
    assert settled_leftovers(sandbox, cluster_id) == []


def test_a_live_cluster_object_counts_as_a_client(sandbox):
    """A notebook holding a BurstCluster, with no Dask Client yet, keeps its cluster."""
    with BurstCluster(cores=2, max_runtime="5m", no_client_timeout="10s",
                      instance_types=["c5.large"], quiet=True) as cluster:
        time.sleep(20)  # twice the timeout, with heartbeats only
        assert len(cluster.scheduler_info["workers"]) == 1
        with Client(cluster) as dask:
            assert dask.submit(sum, [1, 2]).result() == 3
        cluster_id = cluster.cluster_id
    assert settled_leftovers(sandbox, cluster_id) == []
