"""BurstCluster as a notebook user meets it: a real distributed cluster over TLS."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import ssl
import time
from datetime import timedelta

import pytest
from distributed import Client
from distributed.comm import connect
from distributed.comm.core import CommClosedError
from distributed.security import Security

from burst import bootstrap, events, tls
from burst.cloud.base import CloudError
from burst.cluster import BurstCluster
from tests.conftest import client, settled_leftovers


async def _handshake(address: str, context: ssl.SSLContext) -> None:
    """Open a comm to the scheduler as Client does, and exchange a message over it."""
    comm = await connect(address, timeout=5, ssl_context=context)
    try:
        await comm.write({"op": "identity"})
        await comm.read()
    finally:
        comm.abort()


@pytest.fixture(scope="module")
def shared_cluster(sandbox):
    """One cluster for the tests that only inspect it (each cluster start costs seconds).
    Its teardown is checked when the module is done with it."""
    seen: list[events.Event] = []
    with BurstCluster(cores=4, max_runtime="5m", instance_types=["c5.large"], disk_gb=20,
                      on_event=seen.append) as cluster:
        yield cluster
    assert cluster.teardown_report.verified
    assert isinstance(seen[0], events.Planned) and isinstance(seen[-1], events.TornDown)
    assert settled_leftovers(sandbox, cluster.cluster_id) == []


def test_cluster_is_a_distributed_cluster_over_tls(sandbox, shared_cluster):
    cluster = shared_cluster
    assert cluster.scheduler_address.startswith("tls://")
    assert cluster.dashboard_link.startswith("http://")
    assert "BurstCluster(" in repr(cluster) and "workers=2" in repr(cluster)
    # distributed's own log of the cluster manager has the same progress, one line each.
    logs = cluster.get_logs(scheduler=False, workers=False)["Cluster"]
    assert "launched 1 scheduler instance(s)" in logs and "2 of 2 workers joined" in logs
    workers = {r.instance_id for r in cluster.worker_instances}
    assert cluster.plan == cluster.requested == cluster.observed == workers
    # The notebook card: the instances' memory (2 x c5.large, 4 GiB each), not the host's.
    card = cluster._repr_html_()
    assert "<strong>Total memory:</strong> 8.00 GiB" in card
    assert "2 serving, 4 cores, 8 GiB memory" in card
    with Client(cluster) as c:
        assert sum(c.nthreads().values()) == 4
        assert c.submit(sum, [1, 2, 3]).result() == 6
        names = set(c.run(lambda dask_worker: dask_worker.name).values())
        assert names == {r.instance_id for r in cluster.worker_instances}
    # Without the cluster's client certificate the scheduler refuses the TLS handshake:
    # with no client pair (only the CA, to trust the scheduler), or another cluster's pair.
    ca_only = ssl.create_default_context(cadata=cluster.security.tls_ca_file)
    ca_only.check_hostname = False
    # (TLS 1.3 checks the client's certificate after the client's side of the handshake: the
    # scheduler's alert arrives, or its close wins the race and the client sees an EOF.)
    eof = "EOF occurred in violation of protocol"
    with pytest.raises(CommClosedError, match=f"ALERT_CERTIFICATE_REQUIRED|{eof}"):
        asyncio.run(_handshake(cluster.scheduler_address, ca_only))
    other = tls.issue("another", timedelta(minutes=5))
    foreign = Security(tls_ca_file=cluster.security.tls_ca_file,
                       tls_client_cert=other.client_cert, tls_client_key=other.client_key,
                       require_encryption=True)
    with pytest.raises(CommClosedError, match=f"ALERT_UNKNOWN_CA|{eof}"):
        Client(cluster.scheduler_address, security=foreign, timeout=5)
    # With no TLS settings at all, distributed will not even try a tls:// address.
    with pytest.raises(TypeError, match="TLS expects a `ssl_context` argument"):
        Client(cluster.scheduler_address, timeout=3)


def test_instances_are_tagged_secured_and_carry_no_secret(sandbox, shared_cluster):
    cluster = shared_cluster
    ec2 = client(sandbox, "ec2")
    reply = ec2.describe_instances(Filters=[
        {"Name": "tag:burst:cluster", "Values": [cluster.cluster_id]}])
    described = [i for r in reply["Reservations"] for i in r["Instances"]]
    assert len(described) == 1 + len(cluster.worker_instances) == 3
    for instance in described:
        tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
        assert tags["burst:managed"] == "true" and tags["burst:job"] == cluster.job_id
        assert tags["burst:role"] in ("scheduler", "worker")
        assert tags["burst:deadline"].startswith(str(cluster.deadline.year))
        user_data = ec2.describe_instance_attribute(
            InstanceId=instance["InstanceId"], Attribute="userData")["UserData"]["Value"]
        assert "PRIVATE KEY" not in user_data and "BEGIN" not in user_data
    # The scheduler is launched directly; workers by a fleet from a launch template, whose
    # settings moto does not copy onto instances: check what burst asked EC2 to apply.
    scheduler = next(i for i in described if i["InstanceId"] in {
        r.instance_id for r in cluster.instances.values() if r.role == "scheduler"})
    assert scheduler["MetadataOptions"]["HttpTokens"] == "required"
    behaviour = ec2.describe_instance_attribute(
        InstanceId=scheduler["InstanceId"], Attribute="instanceInitiatedShutdownBehavior")
    assert behaviour["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
    template = ec2.describe_launch_templates(Filters=[
        {"Name": "tag:burst:cluster", "Values": [cluster.cluster_id]}])["LaunchTemplates"]
    assert len(template) == 1
    data = ec2.describe_launch_template_versions(
        LaunchTemplateId=template[0]["LaunchTemplateId"])["LaunchTemplateVersions"][0][
        "LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["InstanceInitiatedShutdownBehavior"] == "terminate"
    # The workers' own role (the scheduler has another, with more rights: test_identities).
    assert data["IamInstanceProfile"]["Name"] == f"burst-{cluster.cluster_id}-worker"
    assert data["SecurityGroupIds"] == [
        g["GroupId"] for s in scheduler["SecurityGroups"] for g in [s]]
    assert b"PRIVATE KEY" not in base64.b64decode(data["UserData"])
    # disk_gb: every node's root volume, the scheduler's and the workers' template alike.
    root = [{"DeviceName": "/dev/xvda",
             "Ebs": {"VolumeSize": 20, "VolumeType": "gp3", "DeleteOnTermination": True}}]
    assert data["BlockDeviceMappings"] == root
    volumes = [m["Ebs"]["VolumeId"] for m in scheduler["BlockDeviceMappings"]]
    sizes = [v["Size"] for v in ec2.describe_volumes(VolumeIds=volumes)["Volumes"]]
    assert 20 in sizes
    fleets = [f for f in ec2.describe_fleets()["Fleets"]
              if {"Key": "burst:cluster", "Value": cluster.cluster_id} in f.get("Tags", [])]
    assert [f["Type"] for f in fleets] == ["instant"] * len(cluster.capacity_plan.workers)
    for role in ("scheduler", "worker", "driver"):  # one secret per role (burst.tls)
        secret = client(sandbox, "ssm").get_parameter(
            Name=f"/burst/{cluster.cluster_id}/tls-{role}")
        assert secret["Parameter"]["Type"] == "SecureString"
    group = ec2.describe_security_groups(Filters=[
        {"Name": "tag:burst:cluster", "Values": [cluster.cluster_id]}])["SecurityGroups"][0]
    cidrs = [r["CidrIp"] for p in group["IpPermissions"] for r in p["IpRanges"]]
    assert cidrs == ["127.0.0.1/32"]  # the client's own address only


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (killed, waiting for its parent to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_workers_run_under_a_nanny_as_dask_worker_starts_them(sandbox):
    """One BLAS/OpenMP thread per task thread, the instance type's memory as the limit, a
    dead worker process restarted; and the power-off still kills the whole node."""
    with BurstCluster(cores=2, max_runtime="5m", instance_types=["c5.large"]) as cluster, \
            Client(cluster) as c:
        (name,) = cluster.workers
        environ = c.run(lambda: {k: os.environ.get(k) for k in (
            "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
        assert list(environ.values()) == [dict.fromkeys(
            ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), "1")]
        (info,) = cluster.scheduler_info["workers"].values()
        assert info["memory_limit"] == 4 * 2**30  # a c5.large's 4 GiB, not the host's
        assert info["nanny"] and info["name"] == name
        ((address, pid),) = c.run(os.getpid).items()
        nanny = c.run(os.getppid)[address]
        os.kill(pid, signal.SIGKILL)  # the worker process dies; its Nanny starts another
        give_up = time.monotonic() + 60
        while True:
            with contextlib.suppress(Exception):
                pids = c.run(os.getpid, wait=True)
                if pids and pid not in pids.values():
                    break
            assert time.monotonic() < give_up, "the worker process was never restarted"
            time.sleep(0.5)
        (new_pid,) = pids.values()
        assert c.submit(sum, [1, 2, 3], pure=False).result(timeout=30) == 6
        assert c.run(lambda dask_worker: dask_worker.name) == {next(iter(pids)): name}
        cluster_id = cluster.cluster_id
    assert cluster.teardown_report.verified
    assert settled_leftovers(sandbox, cluster_id) == []
    give_up = time.monotonic() + 30  # killed with the instance's process group
    while not all(_gone(p) for p in (nanny, new_pid)) and time.monotonic() < give_up:
        time.sleep(0.2)
    assert [p for p in (nanny, new_pid) if not _gone(p)] == []


def test_dead_mans_switch_powers_off_at_the_deadline(sandbox):
    """The client goes silent; the instances terminate themselves at max_runtime + grace."""
    cluster = BurstCluster(cores=2, max_runtime="10s", grace=0, instance_types=["c5.large"])
    try:
        ids = list(cluster.instances)
        ec2 = client(sandbox, "ec2")
        deadline = time.monotonic() + 60
        states: set[str] = set()
        while time.monotonic() < deadline:
            reply = ec2.describe_instances(InstanceIds=ids)
            states = {i["State"]["Name"] for r in reply["Reservations"] for i in r["Instances"]}
            if states == {"terminated"}:
                break
            time.sleep(1)
        assert states == {"terminated"}
    finally:
        cluster.close()
    assert cluster.teardown_report.verified


def test_version_mismatch_fails_fast_with_the_cause(sandbox, monkeypatch):
    real = bootstrap.client_versions()
    monkeypatch.setattr(bootstrap, "client_versions", lambda: {**real, "distributed": "0.0.1"})
    seen: list[events.Event] = []
    with pytest.raises(CloudError, match="version mismatch.*distributed"):
        BurstCluster(cores=2, max_runtime="5m", instance_types=["c5.large"], boot_timeout=120,
                     on_event=seen.append)
    report = next(e.report for e in seen if isinstance(e, events.TornDown))
    assert report.verified
    cluster_id = next(e.cluster_id for e in seen if isinstance(e, events.Planned))
    assert settled_leftovers(sandbox, cluster_id) == []


@pytest.mark.parametrize("notice", ["spot interruption", "rebalance recommendation"])
def test_spot_interruption_notice_retires_the_worker_and_the_work_goes_on(
        sandbox, monkeypatch, notice):
    monkeypatch.setenv("BURST_SPOT_POLL_SECONDS", "0.5")  # the hypervisor passes it to nodes
    with BurstCluster(cores=4, max_runtime="5m", instance_types=["c5.large"]) as cluster, \
            Client(cluster) as c:
        victim, survivor = (r.instance_id for r in cluster.worker_instances)

        def square(x):
            from distributed import get_worker

            time.sleep(0.5)
            return x * x, get_worker().name

        futures = c.map(square, range(40), pure=False)  # 5 s of work on 2 x 2 threads
        give_up = time.monotonic() + 30
        while sum(f.done() for f in futures) < 8:  # both workers are busy
            assert time.monotonic() < give_up, "the work never started"
            time.sleep(0.05)
        if notice == "spot interruption":
            sandbox.hypervisor.interrupt(victim, notice_seconds=60)
        else:  # EC2's earlier warning: nothing is terminated, the worker leaves by itself
            sandbox.hypervisor.recommend_rebalance(victim)
        console = sandbox.folder / victim / "console.log"
        give_up = time.monotonic() + 30
        while f"{notice} notice: retiring this worker" not in console.read_text():
            assert time.monotonic() < give_up, "the worker never saw the interruption notice"
            time.sleep(0.1)
        assert sum(f.done() for f in futures) < 40  # retired while work was still running
        results = c.gather(futures)
        assert [square for square, _ in results] == [x * x for x in range(40)]
        ran_on = [name for _, name in results]
        replacement = set(cluster.instances) - {victim, survivor} - {
            i for i, r in cluster.instances.items() if r.role == "scheduler"}
        # Both worked; the replacement too, if it joined before the work ran out.
        assert {victim, survivor} <= set(ran_on) <= {victim, survivor} | replacement, ran_on
        # The retired worker's cores are replaced by a new worker, in another pool.
        give_up = time.monotonic() + 60
        while time.monotonic() < give_up:
            names = {w["name"] for w in cluster.scheduler_info["workers"].values()}
            if victim not in names and len(names) == 2:
                break
            time.sleep(0.5)
        assert victim not in names and survivor in names and len(names) == 2
        assert names - {survivor} == replacement and len(replacement) == 1
        assert names == set(cluster.workers) and cluster.cores == 4
        (interruption,) = cluster.interruptions
        assert interruption["instance_id"] == victim
        assert interruption["reason"] == notice
        cluster_id = cluster.cluster_id
    assert settled_leftovers(sandbox, cluster_id) == []


def test_a_node_that_dies_silently_fails_fast(sandbox, monkeypatch):
    monkeypatch.setattr(bootstrap, "render", lambda config: "#!/bin/bash\nexit 0\n")
    planned = []
    with pytest.raises(CloudError, match="powered off before joining"):
        BurstCluster(cores=2, max_runtime="5m", instance_types=["c5.large"],
                     on_event=lambda event: isinstance(event, events.Planned) and planned.append(
                         event.cluster_id))
    assert settled_leftovers(sandbox, planned[0]) == []


def test_a_worker_lost_while_booting_is_tolerated_down_to_min_cores_then_replaced(sandbox):
    """A spot interruption during boot: the cluster comes up on what is left, if enough, and
    the lost cores are replaced from another pool like any interruption."""
    ec2 = client(sandbox, "ec2")
    lost: list[str] = []
    planned: list[str] = []

    def interrupt_one(event):
        if isinstance(event, events.Planned):
            planned.append(event.cluster_id)
        if isinstance(event, events.Launched) and event.role == "worker" and not lost:
            lost.append(event.records[0].instance_id)
            ec2.terminate_instances(InstanceIds=lost)

    with BurstCluster(cores=4, min_cores=2, max_runtime="5m", instance_types=["c5.large"],
                      max_pool_share=1.0, on_event=interrupt_one) as cluster:
        first = {r.instance_id for r in cluster.worker_instances}
        assert len(first) == 1 and not first & set(lost)
        assert cluster.target_cores == 4  # the cores launched, not the 2 that joined
        (interruption,) = cluster.interruptions
        assert interruption["instance_id"] == lost[0]
        assert interruption["reason"] == "lost while booting"
        with Client(cluster) as c:
            c.wait_for_workers(2, timeout=90)
            joined = set(c.run(lambda dask_worker: dask_worker.name).values())
        assert first < joined and lost[0] not in joined and cluster.cores == 4
        (replacement,) = cluster.replacements
        assert replacement["for"] == lost and set(replacement["instances"]) == joined - first
        # Not the pool the loss came from.
        lost_pool = f"c5.large {interruption['zone']} {interruption['market']}"
        assert lost_pool not in replacement["pools"]
        cluster_id = cluster.cluster_id
    assert settled_leftovers(sandbox, cluster_id) == []

    lost.clear()
    with pytest.raises(CloudError, match="2 worker cores left of the 4 needed"):
        BurstCluster(cores=4, max_runtime="5m", instance_types=["c5.large"],
                     max_pool_share=1.0, on_event=interrupt_one)
    assert settled_leftovers(sandbox, planned[-1]) == []
