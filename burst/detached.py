"""Detached jobs: `burst submit` hands a job to a driver on its cluster's scheduler instance
and returns; `status`, `logs`, `wait`, `results` and `cancel` find the job again, from this
machine's index or from the cloud's tags, and read what the driver wrote to the bucket
(see burst.drive for the layout). `wait` and `results` download the results, delete what is
left of the cluster and verify that nothing is.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import cloudpickle
from distributed import Client

from burst import drive, elasticity, events, state, taskrun, transfer
from burst.catalog import offers_for
from burst.cloud.base import ClusterIdentity, InstanceRecord, NodeEnvironment, Provider
from burst.cloud.connect import Connection, open_provider
from burst.cluster import MIN_LAUNCH_SECONDS, BurstCluster, new_job_id
from burst.cost import cost_report, instance_cost
from burst.errors import CloudError, SpecError
from burst.events import EventHandler
from burst.gc import survey
from burst.job import Job
from burst.plan import Plan
from burst.provision import top_up
from burst.results import (
    MANIFEST,
    RESULTS,
    TaskOutcome,
    dumps,
    job_folder,
    output_folders,
    private_folder,
    write_index,
    write_lines,
)
from burst.runner import fail_fast_after, index_job, ship_by_value, task_of
from burst.spec import JobSpec
from burst.storage import Bucket
from burst.sweep import prefix

LIVE = ["pending", "running", "stopping", "stopped", "shutting-down"]
ENDED = ["shutting-down", "terminated", "stopping", "stopped"]
START_SECONDS = 120  # for the driver to report that it runs
REPLACE_SECONDS = 30.0  # how often `wait` looks for lost workers to replace


def submit(job: Job, on_event: EventHandler | None = None) -> dict[str, Any]:
    """Launch the job's cluster, hand the job to a driver on its scheduler, and return once
    the driver reports that it runs: {job_id, cluster_id, cloud, region, state}."""
    emit = on_event or events.ignore
    job_id = new_job_id(job.spec.name)
    folder = job_folder(job.spec.outputs, job_id)
    index_job(job, job_id, "detached", folder, "launching")
    cluster = None
    try:
        cluster = BurstCluster(job.spec, job_id=job_id, on_event=emit, quiet=True)
        state.record(job_id, cluster_id=cluster.cluster_id)
        bucket, base = cluster.bucket, prefix(job_id)
        command = transfer.command_task(job, bucket, job_id) if job.command else None
        ship_by_value(job.folder)
        driver = drive.Driver(
            job_id=job_id,
            cluster_id=cluster.cluster_id,
            region=job.spec.region,
            bucket=bucket.name,
            prefix=base,
            task=task_of(job, command),
            numbered=list(enumerate(job.tasks)),
            command=command is not None,
            retries=job.spec.run.retries,
            stop_at=(cluster.deadline - job.spec.grace).timestamp(),
            reduce=job.reduce,
            attempts_on=taskrun.attempts_on,
            attempt_counter=taskrun.AttemptCounter(),
            instance_ids=sorted(cluster.instances),
            fail_fast=fail_fast_after(job),
            folders=dict(enumerate(output_folders(job.tasks))) if command else None,
        )
        bucket.put(f"{base}/driver.pkl", cloudpickle.dumps(driver))
        bucket.put(f"{base}/cluster.json", dumps(_cluster_record(cluster, job), indent=2))
        with Client(cluster) as client:
            client.run_on_scheduler(
                drive.start_driver, bucket.name, f"{base}/driver.pkl", job.spec.region
            )
        _wait_for_driver(bucket, base)
        state.record(job_id, state="running")
        cluster.detach()  # the driver is the cluster's client now
    except BaseException:
        if cluster is not None:
            cluster.close()
        state.record(job_id, state="error")
        raise
    return {
        "job_id": job_id,
        "cluster_id": cluster.cluster_id,
        "cloud": job.spec.cloud,
        "region": job.spec.region,
        "state": "running",
        "folder": str(folder),
    }


def _wait_for_driver(bucket: Bucket, base: str) -> None:
    give_up = time.monotonic() + START_SECONDS
    while bucket.read(f"{base}/status.json") is None:
        if time.monotonic() > give_up:
            log = (bucket.read(f"{base}/driver.log") or b"").decode(errors="replace")
            raise CloudError(
                f"the job's driver did not start within {START_SECONDS}s: {log[-500:]}",
                "on AWS, the scheduler instance's console output shows why",
            )
        time.sleep(0.5)


def _cluster_record(cluster: BurstCluster, job: Job) -> dict:
    """What the client launched, for the manifest `wait` writes."""
    return {
        "cluster_id": cluster.cluster_id,
        "spec": job.spec.model_dump(mode="json"),
        "plan": cluster.capacity_plan.to_dict(),
        "instances": [r.to_dict() for r in cluster.instances.values()],
        "fleets": cluster.fleet_ids,
        "capacity_errors": [str(e) for e in cluster.capacity_errors],
        "timings": {k: round(v, 3) for k, v in cluster.timings.items()},
        "deadline": cluster.deadline.isoformat(),
        "submitted_at": datetime.now(UTC).isoformat(),
        # What `wait` keeps the job at, and launches replacements with (see replace_lost).
        "target_cores": cluster.cores,
        "launch": cluster.launch_setup,
        "interruptions": [],
        "replacements": [],
    }


# ------------------------------------------------------------- finding a job again


@dataclass
class Located:
    """A submitted job, found again: its cluster, its bucket and what the driver says."""

    job_id: str
    cluster_id: str
    connection: Connection
    index: dict | None  # this machine's row, when it has one

    @property
    def provider(self) -> Provider:
        return self.connection.provider

    @property
    def identity(self) -> ClusterIdentity:
        return ClusterIdentity(self.cluster_id, self.job_id, datetime.now(UTC))

    @property
    def bucket(self) -> Bucket:
        return self.provider.bucket(self.identity)

    @property
    def base(self) -> str:
        return prefix(self.job_id)

    def read_json(self, name: str) -> dict | None:
        body = self.bucket.read(f"{self.base}/{name}")
        return None if body is None else json.loads(body)

    def status(self) -> dict:
        """The driver's status; `state` is `lost` when no driver status can be read and no
        instance of the cluster runs, `launching` while the instances boot."""
        found = self.read_json("status.json")
        running = self.provider.instances(self.identity, LIVE)
        if found is None:
            found = {"state": "launching" if running else "lost"}
        elif found["state"] not in drive.TERMINAL and not running:
            found["state"] = "lost"  # the driver died with its instance, mid-job
            found["error"] = "the cluster's instances are gone and the driver never finished"
        found["instances"] = len(running)
        return found


def locate(job_id: str, cloud: str | None = None, region: str | None = None) -> Located:
    """This machine's index first; else the cloud's tags (a job submitted elsewhere)."""
    job_folder(".", job_id)  # refuses a malformed id before any call
    row = state.get(job_id)
    cloud = cloud or (row or {}).get("cloud") or "sandbox"
    region = region or (row or {}).get("region") or "us-east-1"
    connection = open_provider(cloud, region, start_sandbox=False)
    if connection is None:
        raise CloudError(
            f"job {job_id}: the sandbox is not running, so nothing of the job is left",
            "`burst sandbox up` starts it again (its jobs died with it)",
        )
    cluster_id = (row or {}).get("cluster_id")
    if not cluster_id:
        found = [c for c in survey(connection.provider).values() if c.job_id == job_id]
        if not found:
            raise SpecError([f"job id: no job {job_id!r} in {cloud} {region}"])
        cluster_id = found[0].cluster_id
    return Located(job_id, cluster_id, connection, row)


# ------------------------------------------------------------- status, wait, results


def describe(job: Located) -> dict:
    """What `burst status` says: state, tasks, instances running, cost so far, error. A job
    already collected here is read from its manifest; a `burst run` job from this machine's
    index and the cloud (its client holds the rest)."""
    manifest = collected(job)
    if manifest is not None:
        found = {**manifest["tasks"], "state": manifest["status"], "error": manifest["error"]}
        found["instances"], cost = 0, manifest.get("cost", {}).get("actual")
    elif job.index and job.index.get("mode") == "attached":
        running = job.provider.instances(job.identity, LIVE)
        found = {"state": job.index["state"] if running else "ended", "instances": len(running)}
        cost = job.index.get("cost")
    else:
        found = job.status()
        cost = cost_so_far(job.read_json("cluster.json"), found)
    return {
        "job_id": job.job_id,
        "cluster_id": job.cluster_id,
        "state": found["state"],
        "tasks": {k: found.get(k) for k in ("done", "failed", "total")},
        "instances": found["instances"],
        "cost": None if cost is None else str(cost),
        "error": found.get("error"),
    }


def cost_so_far(cluster: dict | None, status: dict) -> Decimal | None:
    """Billed until now (or until the driver ended the cluster), from the launch records."""
    if cluster is None:
        return None
    now, records = _records(cluster, status)
    return sum((instance_cost(r, now) or Decimal(0) for r in records), Decimal(0))


def _records(cluster: dict, status: dict) -> tuple[datetime, list[InstanceRecord]]:
    """The instances the client launched, each ended when the driver ended the job (or still
    running, until now), and that moment."""
    ended = status.get("ended_at")
    now = datetime.fromtimestamp(ended, UTC) if ended else datetime.now(UTC)
    records = [InstanceRecord.from_dict(data) for data in cluster["instances"]]
    for record in records:
        record.end_time = min(record.end_time or now, now)
    return now, records


def wait(
    job: Located,
    timeout: float | None = None,
    on_status: Callable[[dict], None] = lambda s: None,
    on_log: Callable[[str], None] = lambda line: None,
    replace_every: float = REPLACE_SECONDS,
) -> dict | None:
    """Block until the job ends, then collect it; None when `timeout` came first. Meanwhile,
    every `replace_every` seconds, lost workers are replaced (replace_lost)."""
    give_up = None if timeout is None else time.monotonic() + timeout
    if (done := collected(job)) is not None:
        return done
    replaced_at = time.monotonic()
    while True:
        status = job.status()
        on_status(status)
        if status["state"] in (*drive.TERMINAL, "lost"):
            return collect(job, status)
        if give_up is not None and time.monotonic() > give_up:
            return None
        if time.monotonic() - replaced_at >= replace_every:
            for line in replace_lost(job, status):
                on_log(line)
            replaced_at = time.monotonic()
        time.sleep(min(2, replace_every))


# ------------------------------------------------------------- lost workers, replaced


def replace_lost(job: Located, status: dict) -> list[str]:
    """Replace the workers a running detached job lost (spot interruptions, instances gone),
    keeping the cores launched at submit as a BurstCluster keeps its own: the lost cores are
    planned again without the lost pools, spot first then on-demand under
    spot-with-fallback, within the hourly budget, never in max_runtime's last minute
    (burst.provision.top_up). `burst wait` does it, with this machine's keys: the driver on
    the scheduler holds no right to launch instances. Each loss and replacement is kept in
    the job's cluster.json, for the manifest. Returns what it did, as log lines.

    A worker counts as lost once EC2 says it ended: a new instance missing from an
    eventually consistent answer is never mistaken for one.
    """
    cluster = job.read_json("cluster.json")
    launch = (cluster or {}).get("launch") or {}
    if status.get("state") != "running" or not launch.get("environment"):
        return []  # ended, or submitted by a burst that kept no launch setup
    ended = {r.instance_id for r in job.provider.instances(job.identity, ENDED)}
    records = [InstanceRecord.from_dict(data) for data in cluster["instances"]]
    if any(r.role == "scheduler" and r.instance_id in ended for r in records):
        return []  # the driver ended the cluster, or the scheduler is gone: nothing to join
    now = datetime.now(UTC)
    said, lost = [], {i["instance_id"] for i in cluster["interruptions"]}
    joined = set(status.get("workers") or ())
    for back in elasticity.rejoined(cluster["interruptions"], cluster["replacements"], joined, now):
        said.append(
            f"{back['cores']} replacement cores joined {back['seconds_to_rejoin']}s after "
            "the loss was seen"
        )
    for record in records:
        if record.role == "worker" and record.instance_id in ended - lost:
            record.end_time = now  # seen up to replace_every late: billed a little more
            cluster["interruptions"].append(
                elasticity.interruption(record, "ended (seen by burst wait)", now)
            )
            said.append(f"worker {record.instance_id} ({record.instance_type}) ended")
    live = [r for r in records if r.role == "worker" and r.end_time is None]
    missing = cluster["target_cores"] - sum(r.vcpus for r in live)
    spec = JobSpec.model_validate(cluster["spec"])
    seconds_left = (datetime.fromisoformat(cluster["deadline"]) - spec.grace - now).total_seconds()
    if missing > 0 and seconds_left < MIN_LAUNCH_SECONDS:
        said.append(f"not replacing {missing} cores: max_runtime ends in {seconds_left:.0f}s")
    elif missing > 0:
        got = top_up(
            job.provider,
            job.identity,
            NodeEnvironment.from_dict(launch["environment"]),
            launch["template_id"],
            Plan.from_dict(cluster["plan"]),
            spec,
            missing,
            sum((r.hourly or Decimal(0) for r in live), Decimal(0)),
            offers_for(spec),
            {(i["instance_type"], i["zone"], i["market"]) for i in cluster["interruptions"]},
        )
        records += got.records
        cluster["fleets"] += got.fleet_ids
        cluster["capacity_errors"] += [str(e) for e in got.errors]
        if got.records:
            elasticity.replacement(cluster["interruptions"], cluster["replacements"], got, now)
        short = "; ".join(str(e) for e in got.errors) or "the budget allows no more"
        said.append(
            f"launched {got.cores} worker cores for {missing} lost"
            + (f" (short: {short}; trying again)" if got.cores < missing else "")
        )
    if said:
        cluster["instances"] = [r.to_dict() for r in records]
        job.bucket.put(f"{job.base}/cluster.json", dumps(cluster, indent=2))
    return said


def collect(job: Located, status: dict | None = None) -> dict:
    """Download a finished job's results into its folder, delete what is left of its cluster,
    verify, and write its manifest. Returns the manifest."""
    if (done := collected(job)) is not None:
        return done
    status = status or job.status()
    cluster = job.read_json("cluster.json")
    folder = private_folder(_folder(job, cluster))
    outcomes = _outcomes(job)
    write_lines(folder / RESULTS, outcomes)  # first: a failed download loses no line
    failed, ignored = transfer.download_outputs(job.bucket, job.job_id, folder, outcomes)
    if failed:  # those tasks' outputs could not be collected: they failed
        replaced = {o.task: o for o in failed}
        outcomes = [replaced.get(o.task, o) for o in outcomes]
        write_lines(folder / RESULTS, outcomes)
        if status["state"] == "succeeded":
            status = {**status, "state": "failed", "result": None}
            status["error"] = f"{len(failed)} of {status.get('total')} tasks failed"
    write_index(folder, outcomes)
    log = job.bucket.read(f"{job.base}/driver.log")
    if log is not None:
        (folder / "driver.log").write_bytes(log)
    report = job.provider.teardown(job.identity, wait=300)
    manifest = _manifest(job, status, cluster, outcomes, report.to_dict())
    if ignored:
        manifest["outputs_ignored"] = ignored[:20]
    (folder / MANIFEST).write_text(dumps(manifest, indent=2) + "\n")
    state.record(job.job_id, state=manifest["status"], cost=manifest["cost"].get("actual"))
    return manifest


def collected(job: Located) -> dict | None:
    """The manifest of a job already collected here (downloaded, torn down, verified): wait,
    results and cancel then return it again rather than collect nothing over it."""
    path = _folder(job, None) / MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    verified = manifest.get("teardown", {}).get("verified")
    return manifest if manifest.get("mode") == "detached" and verified else None


def _folder(job: Located, cluster: dict | None) -> Path:
    if job.index and job.index.get("folder"):
        return Path(job.index["folder"])
    outputs = (cluster or {}).get("spec", {}).get("outputs", "results")
    return job_folder(outputs, job.job_id)


def _outcomes(job: Located) -> list[TaskOutcome]:
    """results.jsonl when the driver finished it; else every part it flushed."""
    whole = job.bucket.read(f"{job.base}/{RESULTS}")
    bodies = (
        [whole]
        if whole is not None
        else [job.bucket.read(key) for key in job.bucket.keys(f"{job.base}/results/")]
    )
    outcomes: dict[int, TaskOutcome] = {}
    for body in bodies:
        for line in (body or b"").decode().splitlines():
            if line.strip():
                outcome = TaskOutcome.from_dict(json.loads(line))
                outcomes[outcome.task] = outcome
    return [outcomes[n] for n in sorted(outcomes)]


def _manifest(
    job: Located, status: dict, cluster: dict | None, outcomes: list[TaskOutcome], teardown: dict
) -> dict:
    state_ = status["state"]
    failures = [o for o in outcomes if o.status == "failed"]
    manifest: dict[str, Any] = {
        "job_id": job.job_id,
        "cluster_id": job.cluster_id,
        "mode": "detached",
        "status": "error" if state_ == "lost" else state_,
        "error": status.get("error"),
        "result": status.get("result"),
        "tasks": {
            "total": status.get("total", len(outcomes)),
            "done": len(outcomes) - len(failures),
            "failed": len(failures),
            "retried": sum((o.attempts or 1) > 1 for o in outcomes),
        },
        "failures": [o.to_dict() for o in failures[:50]],
        "teardown": teardown,
        "driver": {k: status.get(k) for k in ("started_at", "ended_at", "updated_at")},
    }
    total = manifest["tasks"]["total"]
    if total is not None and len(outcomes) < total:  # stopped early, cancelled, deadline
        manifest["tasks"]["not_run"] = total - len(outcomes)
    if cluster is not None:
        now, records = _records(cluster, status)
        manifest.update(
            instances=[{**r.to_dict(), "cost": str(instance_cost(r, now))} for r in records],
            cost=cost_report(records, cluster["plan"], now),
            plan=cluster["plan"],
            fleets=cluster["fleets"],
            capacity_errors=cluster["capacity_errors"],
            timings=cluster["timings"],
            spec=cluster["spec"],
            cores={
                "requested": cluster["spec"]["cores"],
                "worker_vcpus": sum(r.vcpus for r in records if r.role == "worker"),
            },
        )
        if "launch" in cluster:  # kept since replacements: the attached manifest's shape
            manifest["elasticity"] = elasticity.record(
                cluster["target_cores"],
                [],  # a detached job is not scaled
                cluster["interruptions"],
                cluster["replacements"],
                {r.instance_id: r for r in records},
                now,
            )
    else:
        manifest["cost"] = {}
    return manifest


def cancel(job: Located, seconds: float = 60) -> dict:
    """Ask the driver to stop, wait for it to end (or `seconds`), then collect what finished."""
    if (done := collected(job)) is not None:
        return done
    if job.status()["state"] not in (*drive.TERMINAL, "lost"):
        job.bucket.put(f"{job.base}/cancel", b"")
        give_up = time.monotonic() + seconds
        while job.status()["state"] not in (*drive.TERMINAL, "lost"):
            if time.monotonic() > give_up:
                break
            time.sleep(1)
    return collect(job)


# ------------------------------------------------------------------------------ ls

UNFINISHED = ("launching", "running")


def reconcile(cloud: str | None = None, region: str = "us-east-1") -> list[dict]:
    """Every job in this machine's index, the unfinished ones refreshed from the cloud (the
    cloud is the truth); with `cloud`, also the jobs found there by tag that the index lacks
    (submitted from another machine). Newest first, each with its age."""
    connections: dict[tuple[str, str], Connection | None] = {}

    def connection(cloud: str, region: str) -> Connection | None:
        if (cloud, region) not in connections:
            connections[cloud, region] = open_provider(cloud, region, start_sandbox=False)
        return connections[cloud, region]

    known = {row["job_id"] for row in state.jobs()}
    if cloud is not None and (found := connection(cloud, region)) is not None:
        for remains in survey(found.provider).values():
            if remains.job_id not in known:
                state.record(
                    remains.job_id,
                    cloud=cloud,
                    region=region,
                    cluster_id=remains.cluster_id,
                    state="running",
                )
    for row in state.jobs():
        if row["state"] not in UNFINISHED or not row["cluster_id"]:
            continue
        reached = connection(row["cloud"], row["region"])
        if reached is None:  # the sandbox is gone, and its jobs with it
            state.record(row["job_id"], state="lost")
            continue
        job = Located(row["job_id"], row["cluster_id"], reached, row)
        found = job.status()
        if row["mode"] == "attached":  # its client tells; the cloud only says if it died
            if found["instances"] == 0:
                state.record(row["job_id"], state="lost")
        elif found["state"] != row["state"]:
            state.record(row["job_id"], state=found["state"])
    now = time.time()
    return [{**row, "age": _age(now - float(row["created_at"]))} for row in state.jobs()]


def _age(seconds: float) -> str:
    minutes, hours, days = seconds / 60, seconds / 3600, seconds / 86400
    if days >= 1:
        return f"{days:.0f}d"
    if hours >= 1:
        return f"{hours:.0f}h"
    return f"{minutes:.0f}m"
