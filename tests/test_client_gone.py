"""When the client is gone: a killed `burst run`'s cluster powers itself off and `burst cancel`
finds it by its job's tag; a live BurstCluster object keeps its cluster. Drills on the sandbox."""

from __future__ import annotations

import json
import re
import subprocess
import time

from distributed import Client

from burst.cluster import BurstCluster
from tests.conftest import BURST, client, leftovers, settled_leftovers
from tests.test_durability import SLOW, lines_of
from tests.test_pipeline import write_job


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
    status = json.loads(subprocess.run([BURST, "status", job_id, "--json"], cwd=tmp_path,
                                       capture_output=True, text=True, timeout=60).stdout)
    assert status["state"] == "running" and status["instances"] >= 2  # from the index
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
        time.sleep(16)  # past the timeout and a poll, with heartbeats only
        assert len(cluster.scheduler_info["workers"]) == 1
        with Client(cluster) as dask:
            assert dask.submit(sum, [1, 2]).result() == 3
        cluster_id = cluster.cluster_id
    assert settled_leftovers(sandbox, cluster_id) == []
