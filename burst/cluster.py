"""BurstCluster: a real `distributed` cluster object whose machines are rented for the job.

    with BurstCluster(cores=8, max_runtime="15m") as cluster, Client(cluster) as client:
        ...

Creating it plans, provisions and bootstraps; closing it tears everything down and verifies
that nothing is left (see `teardown_report`).
"""

from __future__ import annotations

import atexit
import contextlib
import html
import signal
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from distributed.core import rpc
from distributed.deploy import Cluster

from burst import bootstrap, storage, tls
from burst.catalog import architecture_of, default_zones, offers_for
from burst.cloud import sandbox
from burst.cloud.aws import AwsProvider, ClusterIdentity, NodeEnvironment
from burst.cloud.base import CloudError, Fulfilment, InstanceRecord, PoolError, TeardownReport
from burst.plan import Plan, plan_within_budget
from burst.provision import acquire_workers
from burst.spec import JobSpec, parse_spec

EventHandler = Callable[..., None]


def new_job_id(name: str) -> str:
    return f"{name}-{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:4]}"


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Teardown must finish: ignore Ctrl-C and SIGTERM while it runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _client_cidr() -> str:
    """The client's public address, to which alone the scheduler port is opened."""
    with urllib.request.urlopen("https://checkip.amazonaws.com", timeout=10) as reply:
        return f"{reply.read().decode().strip()}/32"


class BurstCluster(Cluster):
    _supports_scaling = False

    def __init__(
        self,
        spec: JobSpec | None = None,
        *,
        job_id: str | None = None,
        on_event: EventHandler | None = None,
        boot_timeout: float = 900,
        **fields: Any,
    ):
        """Pass a JobSpec, or its fields (cores=..., max_runtime=..., cloud=..., ...)."""
        if spec is not None and not isinstance(spec, JobSpec):
            raise TypeError(
                f"BurstCluster takes a JobSpec or keyword fields such as cores=8, "
                f"max_runtime='30m' (got {type(spec).__name__} {spec!r})"
            )
        if fields.pop("asynchronous", False):
            raise TypeError("BurstCluster is synchronous: use `with`, not `async with`")
        self.spec = spec or parse_spec({"name": "notebook", **fields})
        self.cluster_id = uuid.uuid4().hex[:12]
        self.job_id = job_id or new_job_id(self.spec.name)
        started = time.monotonic()
        # Planned (and refused when over budget) before any cloud call: nothing to tear down.
        # On AWS, today's spot prices (read-only calls); the sandbox plans with the snapshot.
        self.offers = offers_for(self.spec)
        self.capacity_plan: Plan = plan_within_budget(self.spec, offers=self.offers)
        self.timings: dict[str, float] = {"plan": time.monotonic() - started}
        self.deadline = datetime.now(UTC) + self.spec.max_runtime + self.spec.grace
        self.identity = ClusterIdentity(self.cluster_id, self.job_id, self.deadline)
        self.instances: dict[str, InstanceRecord] = {}
        self.capacity_errors: list[PoolError] = []  # pools that EC2 could not fill
        self.fleet_ids: list[str] = []
        self.teardown_report: TeardownReport | None = None
        self._emit = on_event or (lambda event, **info: None)
        self._private_sandbox: sandbox.Sandbox | None = None
        self._provider: AwsProvider | None = None
        super().__init__(asynchronous=False, name=self.cluster_id)
        self._loop_runner.start()
        self._emit("planned", plan=self.capacity_plan, cluster=self)
        # A notebook kernel restarted with the cluster open still tears it down.
        atexit.register(self.close)
        try:
            self._provision()
            self._bootstrap(boot_timeout)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ provision

    def _open_provider(self) -> tuple[AwsProvider, str]:
        if self.spec.cloud == "aws":
            import boto3

            return AwsProvider(boto3.Session(), self.spec.region), _client_cidr()
        state = sandbox.running_sandbox()
        if state is None:
            self._private_sandbox = sandbox.Sandbox().start()
            state = {"endpoint": self._private_sandbox.endpoint}
        self._emit("sandbox", endpoint=state["endpoint"], private=self._private_sandbox is not None)
        # All sandbox instances share one host, so their ports are chosen freely.
        provider = AwsProvider(
            sandbox.session(),
            self.spec.region,
            state["endpoint"],
            scheduler_port=0,
            dashboard_port=0,
        )
        return provider, "127.0.0.1/32"

    def _provision(self) -> None:
        started = time.monotonic()
        self._provider, client_cidr = self._open_provider()
        # Reaching the cloud (starting a private sandbox) is timed apart from provisioning.
        self.timings["connect"] = time.monotonic() - started
        started = time.monotonic()
        credentials = tls.issue(self.cluster_id, self.spec.max_runtime + self.spec.grace)
        self.security = credentials.client_security()
        # Every zone the planner may use, so that re-plans after capacity errors have subnets.
        offered = {o.zone for o in self.offers or ()} or set(default_zones(self.spec.region))
        zones = sorted(offered | {line.zone for line in self.capacity_plan.lines})
        env = self._provider.prepare(
            self.identity,
            zones,
            client_cidr,
            credentials.node_bundle(),
            architectures={self.spec.architecture}
            | {architecture_of(line.instance_type) for line in self.capacity_plan.lines},
            read_objects=[i for i in self.spec.inputs if i.startswith("s3://")],
        )
        for line in self.capacity_plan.lines:
            if line.role != "worker":
                record = self._provider.launch_instance(
                    self.identity, env, line, self._user_data(line.role, env)
                )
                self._launched(Fulfilment([record]))
        template = self._provider.launch_template(
            self.identity, env, self._user_data("worker", env), self.spec.architecture
        )
        got = acquire_workers(
            self._provider,
            self.identity,
            env,
            template,
            self.capacity_plan,
            self.spec,
            offers=self.offers,
            on_launch=self._launched,
        )
        if got.cores < self.spec.cores:  # at least min_cores, or acquire_workers raised
            self._emit("capacity_short", cores=got.cores, wanted=self.spec.cores)
        self.timings["provision"] = time.monotonic() - started

    def _launched(self, got: Fulfilment) -> None:
        self.instances.update({r.instance_id: r for r in got.records})
        self.capacity_errors += got.errors
        self.fleet_ids += got.fleet_ids
        for role in sorted({r.role for r in got.records}):
            self._emit("launched", role=role, records=[r for r in got.records if r.role == role])
        for error in got.errors:
            self._emit("capacity_error", error=error)

    def _user_data(self, role: str, env: NodeEnvironment) -> str:
        assert self._provider is not None
        return bootstrap.render(
            bootstrap.NodeConfig(
                role=role,
                cluster_id=self.cluster_id,
                deadline=self.deadline,
                port=self._provider.scheduler_port,
                dashboard_port=self._provider.dashboard_port,
                pip=tuple(self.spec.software.pip) if self.spec.software else (),
            )
        )

    @property
    def bucket(self) -> storage.Bucket:
        """The cluster's S3 bucket (job code, inputs, task outputs), deleted at teardown."""
        assert self._provider is not None
        return storage.Bucket(
            self._provider.s3, storage.bucket_name(self.identity), self._provider.region
        )

    # ------------------------------------------------------------ bootstrap

    @property
    def worker_instances(self) -> list[InstanceRecord]:
        return [r for r in self.instances.values() if r.role == "worker"]

    def _bootstrap(self, timeout: float) -> None:
        started = time.monotonic()
        give_up = started + timeout
        address = None
        while address is None:
            self._check_nodes(give_up, "the scheduler to start")
            address = self._provider.scheduler_address(self.identity)
            if address is None:
                time.sleep(0.5)
        self._emit("scheduler", address=address["public"], dashboard=address.get("dashboard"))
        self.scheduler_comm = rpc(
            address["public"], connection_args=self.security.get_connection_args("client")
        )
        self.sync(self._start)
        joined = -1
        while True:
            expected = self._check_nodes(give_up, "the workers to join")
            count = len(self.scheduler_info["workers"])
            if count != joined:
                self._emit("workers", joined=count, expected=expected)
                joined = count
            if count >= expected:
                break
            time.sleep(0.5)
        self.timings["bootstrap"] = time.monotonic() - started

    def _check_nodes(self, give_up: float, waiting_for: str) -> int:
        """Fail fast when a node reports a failure, the scheduler dies, or so many workers die
        (a spot interruption while booting) that fewer than `min_cores` remain, instead of
        waiting for nothing. Returns how many workers are still to be expected."""
        failures = self._provider.node_failures(self.identity)
        if failures:
            raise CloudError("nodes failed to start: " + "; ".join(failures))
        gone = {
            r.instance_id
            for r in self._provider.instances(self.identity, ["shutting-down", "terminated"])
        }
        alive = [r for r in self.worker_instances if r.instance_id not in gone]
        dead = [r for r in self.instances.values() if r.instance_id in gone]
        cores_left = sum(r.vcpus for r in alive)
        if dead and (any(r.role != "worker" for r in dead) or cores_left < self.spec.min_cores):
            raise CloudError(
                "instances powered off before joining: "
                + ", ".join(f"{r.role} {r.instance_id}" for r in dead)
                + f"; {cores_left} worker cores left of the "
                f"{self.spec.min_cores} needed (on AWS their console output shows why)"
            )
        if time.monotonic() > give_up:
            raise CloudError(f"timed out waiting for {waiting_for}")
        return len(alive)

    # ------------------------------------------------------------- teardown

    def close(self, timeout: float | None = None) -> Any:
        atexit.unregister(self.close)
        with shielded():
            try:
                super().close(timeout)
            finally:
                self._teardown()
                self._loop_runner.stop()

    def _teardown(self) -> None:
        if self.teardown_report is not None or self._provider is None:
            return
        started = time.monotonic()
        self._emit("teardown")
        try:
            self.teardown_report = self._provider.teardown(self.identity)
            if self.teardown_report.verified:
                ended = datetime.now(UTC)
                for record in self.instances.values():
                    record.state = "terminated"
                    record.end_time = record.end_time or ended
            self.timings["teardown"] = time.monotonic() - started
            self._emit("torn_down", report=self.teardown_report)
        finally:
            if self._private_sandbox is not None:
                self._private_sandbox.stop()

    def __repr__(self) -> str:
        workers = len(self.scheduler_info.get("workers", {}))
        return (
            f"BurstCluster({self.cluster_id!r}, cloud={self.spec.cloud!r}, "
            f"cores={self.spec.cores}, workers={workers}, status={self.status.name})"
        )

    def _repr_html_(self, cluster_status: Any = None) -> str:
        """distributed's cluster card, then what was rented and what it may cost."""
        plan = self.capacity_plan
        rented = ", ".join(
            f"{line.count} × {line.instance_type} {line.market} ({line.role})"
            for line in plan.lines
        )
        rows = {
            "cloud": f"{self.spec.cloud} {self.spec.region}",
            "instances": rented,
            "cost": f"${plan.hourly:.4f}/h planned, bound ${plan.cost_bound:.4f} "
            f"({plan.price_source})",
            "deadline": f"{self.deadline:%Y-%m-%d %H:%M:%S} UTC (instances power off then)",
        }
        if self.teardown_report is not None:
            rows["teardown"] = (
                "verified: nothing left"
                if self.teardown_report.verified
                else f"NOT verified: {self.teardown_report.leftovers}"
            )
        table = "".join(
            f"<tr><th style='text-align:left'>{key}</th><td style='text-align:left'>"
            f"{html.escape(value)}</td></tr>"
            for key, value in rows.items()
        )
        return super()._repr_html_(cluster_status) + f"<table>{table}</table>"
