"""BurstCluster.scale and adapt on the sandbox: whole pools in, retired workers out."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import pytest
from distributed import Client, wait

from burst.cluster import BurstCluster
from burst.errors import BudgetError, SpecError
from tests.conftest import client, settled_leftovers


def _running_workers(sandbox, cluster_id: str) -> set[str]:
    reply = client(sandbox, "ec2").describe_instances(Filters=[
        {"Name": "tag:burst:cluster", "Values": [cluster_id]},
        {"Name": "tag:burst:role", "Values": ["worker"]},
        {"Name": "instance-state-name", "Values": ["pending", "running"]}])
    return {i["InstanceId"] for r in reply["Reservations"] for i in r["Instances"]}


def _fleets(sandbox, cluster_id: str) -> list[dict]:
    return [f for f in client(sandbox, "ec2").describe_fleets()["Fleets"]
            if {"Key": "burst:cluster", "Value": cluster_id} in f.get("Tags", [])]


def _until(condition, seconds: float, what: str) -> None:
    give_up = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < give_up, what
        time.sleep(0.25)


def test_scale_4_to_12_to_4_cores_by_pools_and_graceful_retirement(sandbox):
    with BurstCluster(cores=4, max_runtime="10m", instance_types=["c5.large"],
                      max_pool_share=1.0, quiet=True) as cluster, Client(cluster) as c:
        cid = cluster.cluster_id
        assert cluster.cores_per_worker == 2 and cluster.target_cores == 4
        first = set(cluster.workers)
        assert _running_workers(sandbox, cid) == first and len(first) == 2
        # Bad input is refused before any cloud call, naming the argument.
        with pytest.raises(SpecError, match=r"scale: cores must be a whole number >= 0 \(got -4\)"):
            cluster.scale(cores=-4)
        with pytest.raises(SpecError, match="exactly one"):
            cluster.scale(2, cores=4)

        cluster.scale(cores=12)
        assert cluster.target_cores == cluster.cores == 12 and len(cluster.workers) == 6
        assert cluster.plan == cluster.requested == set(cluster.workers) > first
        # The 8 cores more came as one fleet (one pool), not an instance per call.
        assert len(_fleets(sandbox, cid)) == 2
        assert _running_workers(sandbox, cid) == set(cluster.workers)
        c.wait_for_workers(6, timeout=120)
        _until(lambda: cluster.observed == cluster.plan, 30, "the scheduler never saw all 6")
        assert sum(c.nthreads().values()) == 12

        # Data held on the workers survives the scale-down: retire_workers moves it first.
        futures = c.map(lambda x: x * 10, range(60), pure=False)
        wait(futures)
        assert len({w for ws in c.who_has(futures).values() for w in ws}) > 2
        cluster.scale(cores=4)
        assert cluster.target_cores == cluster.cores == 4 and len(cluster.workers) == 2
        removed = set(cluster.instances) - set(cluster.workers) - {
            i for i, r in cluster.instances.items() if r.role == "scheduler"}
        assert len(removed) == 4
        assert all(cluster.instances[i].end_time is not None for i in removed)
        _until(lambda: _running_workers(sandbox, cid) == set(cluster.workers), 30,
               "the retired workers' instances were not terminated")
        assert c.gather(futures) == [x * 10 for x in range(60)]
        _until(lambda: cluster.observed == cluster.plan, 30, "retired workers still listed")
        assert cluster.scaling[-2:] == [
            {**cluster.scaling[-2], "from_cores": 4, "to_cores": 12},
            {**cluster.scaling[-1], "from_cores": 12, "to_cores": 4}]
        cluster.scale(2)  # two workers of 2 vCPUs: the same 4 cores, nothing changes
        assert set(cluster.workers) <= first | set(cluster.instances)
        assert cluster.cores == 4 and len(_fleets(sandbox, cid)) == 2
    assert cluster.teardown_report.verified
    assert settled_leftovers(sandbox, cid) == []


def test_a_scale_over_max_hourly_is_refused_saying_what_fits(sandbox):
    with BurstCluster(cores=2, max_runtime="10m", instance_types=["c5.large"],
                      max_pool_share=1.0, quiet=True) as cluster:
        worker = cluster.capacity_plan.workers[0].hourly
        scheduler = cluster.capacity_plan.hourly - worker
        cluster.spec = cluster.spec.model_copy(
            update={"max_hourly": scheduler + 3 * worker + worker / 2})
        with pytest.raises(BudgetError, match=r"scale to 16 cores refused: over the budget "
                           r"\(max_hourly \$[0-9.]+\); 6 worker cores fit"):
            cluster.scale(cores=16)
        assert cluster.cores == 2 and len(_running_workers(sandbox, cluster.cluster_id)) == 1
        # Adaptive asking for more than fits gets what fits, and the refusal is logged once.
        adaptive = cluster.adapt(minimum_cores=16, maximum_cores=16, interval="200ms")
        _until(lambda: cluster.target_cores == 6, 60, "adapt never scaled up to what fits")
        time.sleep(1)  # several more ticks: it stays at what fits
        adaptive.stop()
        assert cluster.target_cores == cluster.cores == 6
        assert len(_running_workers(sandbox, cluster.cluster_id)) == 3
        assert cluster._running_worker_hourly() + scheduler <= cluster.spec.max_hourly
        logs = cluster.get_logs(scheduler=False, workers=False)["Cluster"]
        assert logs.count("scale to 16 cores refused: over the budget") == 1
    assert cluster.teardown_report.verified


def test_adapt_under_load_grows_then_shrinks_within_its_cores(sandbox):
    with BurstCluster(cores=2, max_runtime="10m", instance_types=["c5.large"],
                      max_pool_share=1.0, quiet=True) as cluster, Client(cluster) as c:
        with pytest.raises(SpecError, match="minimum_cores 8 is above maximum_cores 4"):
            cluster.adapt(minimum_cores=8, maximum_cores=4)
        adaptive = cluster.adapt(minimum_cores=2, maximum_cores=6, interval="500ms",
                                 wait_count=2, target_duration="2s")
        assert (adaptive.minimum, adaptive.maximum) == (1, 3)

        def busy(x):
            time.sleep(0.5)
            return x

        futures = c.map(busy, range(80), pure=False)  # 40 s of work for one 2-core worker
        _until(lambda: cluster.cores == 6, 60, "adapt never scaled up")
        assert len(cluster.workers) == 3 and cluster.target_cores == 6
        c.wait_for_workers(3, timeout=120)
        assert c.gather(futures) == list(range(80))
        del futures
        _until(lambda: cluster.target_cores == 2 and len(cluster.workers) == 1, 90,
               "adapt never scaled down")
        _until(lambda: len(_running_workers(sandbox, cluster.cluster_id)) == 1, 30,
               "the idle workers' instances were not terminated")
        assert max(s["to_cores"] for s in cluster.scaling) == 6  # never past maximum_cores
        adaptive.stop()
        cid = cluster.cluster_id
    assert settled_leftovers(sandbox, cid) == []


def test_async_with_starts_scales_and_tears_down(sandbox):
    asyncio.run(_async_cluster(sandbox))


async def _async_cluster(sandbox):
    async with BurstCluster(cores=2, max_runtime="5m", instance_types=["c5.large"],
                            quiet=True, asynchronous=True) as cluster:
        assert cluster.cores == 2
        async with Client(cluster, asynchronous=True) as c:
            assert await c.submit(sum, [1, 2, 3]) == 6
        await cluster.scale(cores=4)
        assert cluster.cores == 4 and len(cluster.workers) == 2
        cid = cluster.cluster_id
    assert cluster.teardown_report.verified
    assert settled_leftovers(sandbox, cid) == []
    assert Decimal(cluster.elasticity()["replacement_cost"]) == 0


def test_no_worker_is_launched_for_a_scheduler_that_closed_itself(sandbox):
    """idle_timeout closes the scheduler and its workers power off: those are not lost cores
    to replace (new workers would have nothing to join, and would bill)."""
    with BurstCluster(cores=2, max_runtime="5m", idle_timeout="10s", instance_types=["c5.large"],
                      quiet=True) as cluster:
        cid = cluster.cluster_id
        launched = set(cluster.instances)
        ec2 = client(sandbox, "ec2")
        tag = [{"Name": "tag:burst:cluster", "Values": [cid]}]

        def states() -> set[str]:
            reply = ec2.describe_instances(Filters=tag)
            return {i["State"]["Name"] for r in reply["Reservations"] for i in r["Instances"]}

        _until(lambda: states() == {"terminated"}, 90, "the idle cluster never powered off")
        time.sleep(8)  # several reconcile ticks and a cloud check after the power-off
        assert set(cluster.instances) == launched and states() == {"terminated"}
        assert cluster.replacements == []
    assert settled_leftovers(sandbox, cid) == []


def test_a_retired_worker_the_cloud_did_not_terminate_yet_is_terminated_next_time(
        sandbox, monkeypatch):
    """On AWS a new instance's tags may lag, so terminating by tag can miss it: the next
    reconcile terminates it, rather than leaving it billing until teardown."""
    with BurstCluster(cores=4, max_runtime="5m", instance_types=["c5.large"],
                      max_pool_share=1.0, quiet=True) as cluster:
        real = cluster.provider.terminate
        calls: list[list[str]] = []

        def lagging(ident, ids):
            calls.append(list(ids))
            return [] if len(calls) == 1 else real(ident, ids)  # first: not found by tag yet

        monkeypatch.setattr(cluster.provider, "terminate", lagging)
        # Only the retry may find it ended (the node also powers itself off once retired).
        monkeypatch.setattr("burst.cluster.CLOUD_CHECK_SECONDS", 3600)
        cluster.scale(cores=2)
        assert cluster.cores == 2
        (retired,) = calls[0]
        _until(lambda: cluster.instances[retired].end_time is not None, 30,
               "the retired worker was never terminated again")
        assert calls[1] == [retired]
        _until(lambda: _running_workers(sandbox, cluster.cluster_id) == set(cluster.workers),
               30, "the retired worker's instance still runs")
        cid = cluster.cluster_id
    assert settled_leftovers(sandbox, cid) == []
