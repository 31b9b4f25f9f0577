"""BurstCluster: a real `distributed` cluster object whose machines are rented for the job."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import html
import signal
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from distributed.core import Status, rpc
from distributed.deploy import Cluster
from tornado.ioloop import PeriodicCallback

from burst import bootstrap, events, preflight, tls
from burst.catalog import architecture_of, default_zones, offers_for
from burst.cloud.base import (
    CloudError,
    ClusterIdentity,
    Fulfilment,
    InstanceRecord,
    PoolError,
    TeardownReport,
)
from burst.cloud.connect import Connection, open_provider
from burst.errors import BurstError
from burst.events import EventHandler
from burst.plan import Plan, plan_within_budget
from burst.provision import acquire_workers, check_nodes, launch_request
from burst.spec import JobSpec, format_duration, parse_spec
from burst.storage import Bucket

POLL_SECONDS = 0.5
# The scheduler's no_client_timeout counts this cluster object as a client while it beats
# (burst.node reads the same metadata key: the nodes have no burst to import it from).
HEARTBEAT_KEY = "burst-heartbeat"
HEARTBEAT_SECONDS = 10


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


class BurstCluster(Cluster):
    """A Dask cluster on cloud instances rented for one job, torn down and verified on close.

    Creating it plans the capacity (and refuses a plan over budget before any cloud call),
    provisions the instances, starts a scheduler and workers that talk only over TLS with a
    fresh certificate authority, and waits until enough workers have joined. Closing it
    deletes everything it created and verifies that nothing is left.

    Parameters
    ----------
    spec : JobSpec, optional
        A validated job spec (`burst.spec.parse_spec`). Give a spec or its fields, not both.
    job_id : str, optional
        Names the job in the resources' tags and the results folder. New by default.
    on_event : callable, optional
        Called with each progress event (`burst.events`), e.g. to drive a progress display.
        Every event is also kept for ``get_logs()``.
    boot_timeout : float, default 900
        Seconds to wait for the scheduler to start and the workers to join.
    quiet : bool, default False
        Do not print progress lines (on stderr; ``get_logs()`` keeps them either way).
    **fields
        JobSpec fields when no spec is given: ``cores=8, max_runtime="15m", cloud="aws"``.

    Attributes
    ----------
    cluster_id, job_id : str
        The ids every resource is tagged with (``burst:cluster``, ``burst:job``).
    capacity_plan : burst.plan.Plan
        The instance mix, its price per hour and its cost bound.
    instances : dict of str to InstanceRecord
        Every instance launched, by id; ``workers`` holds the workers alone.
    teardown_report : TeardownReport or None
        After closing: what was deleted and whether nothing is left (``.verified``).

    Notes
    -----
    Resources created, each tagged with the cluster and job ids, ``burst:managed=true`` and
    ``burst:deadline``: a security group open to this machine's address only, an IAM role and
    instance profile for the nodes, an S3 bucket, an SSM SecureString with the nodes' TLS
    material, one on-demand scheduler instance, a launch template and one EC2 Fleet per
    planned pool of workers.

    Teardown runs on ``close()``, on leaving a ``with`` block, and at interpreter exit for
    clusters left open. Should this process die, every instance powers itself off at the
    deadline (max_runtime + grace), and ``burst gc`` deletes what is left after it.

    The cluster has the cores of its spec: ``scale()`` and ``adapt()`` are refused.

    Examples
    --------
    >>> from distributed import Client
    >>> from burst import BurstCluster
    >>> with BurstCluster(cores=8, max_runtime="15m") as cluster, Client(cluster) as client:
    ...     client.submit(sum, [1, 2, 3]).result()
    6
    >>> cluster.teardown_report.verified
    True
    """

    _supports_scaling = False
    _open: ClassVar[weakref.WeakSet[BurstCluster]] = weakref.WeakSet()

    def __init__(
        self,
        spec: JobSpec | None = None,
        *,
        job_id: str | None = None,
        on_event: EventHandler | None = None,
        boot_timeout: float = 900,
        quiet: bool = False,
        **fields: Any,
    ):
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
        self.boot_timeout = boot_timeout
        self.instances: dict[str, InstanceRecord] = {}
        self.capacity_errors: list[PoolError] = []  # pools that EC2 could not fill
        self.fleet_ids: list[str] = []
        self.teardown_report: TeardownReport | None = None
        self._beats = 0
        self._detached = False
        self._on_event = on_event or events.ignore
        self._connection: Connection | None = None
        # Cloud calls run in a thread while the event loop waits; closing stops further ones
        # and waits for the one in flight, so that teardown never races a launch.
        self._closing = threading.Event()
        self._cloud_lock = threading.Lock()
        super().__init__(asynchronous=False, name=self.cluster_id, quiet=quiet)
        self._loop_runner.start()
        BurstCluster._open.add(self)
        self._emit(events.Planned(self.capacity_plan, self.cluster_id, self.job_id, self))
        try:
            self.sync(self._start)
        except BaseException:
            self.close()
            raise

    def _emit(self, event: events.Event) -> None:
        self._log(str(event))
        self._on_event(event)

    def _log(self, log: str) -> None:
        """Kept for get_logs(), as distributed does, but printed on stderr: a script's stdout
        is its own."""
        self._cluster_manager_logs.append((datetime.now(), log))
        if not self.quiet:
            print(log, file=sys.stderr, flush=True)

    @property
    def workers(self) -> dict[str, InstanceRecord]:
        """The worker instances by id (a worker's Dask name is its instance id)."""
        return {i: r for i, r in self.instances.items() if r.role == "worker"}

    @property
    def worker_instances(self) -> list[InstanceRecord]:
        return list(self.workers.values())

    @property
    def provider(self):
        if self._connection is None:
            raise BurstError(f"cluster {self.cluster_id} never reached its cloud")
        return self._connection.provider

    @property
    def bucket(self) -> Bucket:
        """The cluster's S3 bucket (job code, inputs, task outputs), deleted at teardown."""
        return self.provider.bucket(self.identity)

    def scale(self, n: int = 0, **kwargs: Any) -> None:
        raise BurstError(
            f"BurstCluster {self.cluster_id} does not scale: it runs the {self.spec.cores} "
            "cores of its spec",
            "close it and start a BurstCluster(cores=N) of the size you need",
        )

    def adapt(self, *args: Any, **kwargs: Any) -> Any:
        raise BurstError(
            f"BurstCluster {self.cluster_id} does not adapt: it runs the {self.spec.cores} "
            "cores of its spec until closed or its max_runtime ends",
            "close it and start a BurstCluster(cores=N) of the size you need",
        )

    # ---------------------------------------------------------------- start

    async def _cloud(self, call: Callable[..., Any], *args: Any) -> Any:
        """A blocking cloud call, in a thread, unless the cluster is closing."""

        def guarded() -> Any:
            with self._cloud_lock:
                if self._closing.is_set():
                    raise CloudError(f"cluster {self.cluster_id} closed while starting")
                return call(*args)

        return await asyncio.to_thread(guarded)

    async def _start(self) -> None:
        self.status = Status.starting
        await self._cloud(self._provision)
        give_up = time.monotonic() + self.boot_timeout
        started = time.monotonic()
        while (address := await self._cloud(self._scheduler_address, give_up)) is None:
            await asyncio.sleep(POLL_SECONDS)
        self._emit(events.SchedulerUp(address["public"], address.get("dashboard")))
        self.scheduler_comm = rpc(
            address["public"], connection_args=self.security.get_connection_args("client")
        )
        # Started and stopped with the cluster's other periodic callbacks, by distributed.
        self.periodic_callbacks["burst-heartbeat"] = PeriodicCallback(
            self._heartbeat, HEARTBEAT_SECONDS * 1000
        )
        await self._heartbeat()
        await super()._start()
        joined = -1
        while True:
            expected = len(await self._cloud(self._check_nodes, give_up, "the workers to join"))
            count = len(self.scheduler_info["workers"])
            if count != joined:
                self._emit(events.WorkersJoined(count, expected))
                joined = count
            if count >= expected:
                break
            await asyncio.sleep(POLL_SECONDS)
        self.timings["bootstrap"] = time.monotonic() - started

    async def _heartbeat(self) -> None:
        self._beats += 1
        with contextlib.suppress(OSError):  # a missed beat is fine: the timeout spans several
            await self.scheduler_comm.set_metadata(keys=[HEARTBEAT_KEY], value=self._beats)

    def _provision(self) -> None:
        started = time.monotonic()
        self._connection = open_provider(self.spec.cloud, self.spec.region)
        if self._connection.endpoint:
            private = self._connection.private_sandbox is not None
            self._emit(events.SandboxUsed(self._connection.endpoint, private))
        provider = self._connection.provider
        # Reaching the cloud (starting a private sandbox) is timed apart from provisioning.
        self.timings["connect"] = time.monotonic() - started
        started = time.monotonic()
        preflight.require(provider, self.capacity_plan)  # a shortfall costs nothing
        credentials = tls.issue(self.cluster_id, self.spec.max_runtime + self.spec.grace)
        self.security = credentials.client_security()
        # Every zone the planner may use, so that re-plans after capacity errors have subnets.
        offered = {o.zone for o in self.offers or ()} or set(default_zones(self.spec.region))
        zones = sorted(offered | {line.zone for line in self.capacity_plan.lines})
        env = provider.prepare(
            self.identity,
            zones,
            self._connection.client_cidr(),
            credentials.node_bundle(),
            architectures={self.spec.architecture}
            | {architecture_of(line.instance_type) for line in self.capacity_plan.lines},
            read_objects=[i for i in self.spec.inputs if i.startswith("s3://")],
        )
        for line in self.capacity_plan.lines:
            if line.role != "worker":
                user_data = self._user_data(line.role)
                record = provider.launch_instance(
                    self.identity, env, launch_request(line), user_data
                )
                self._launched(Fulfilment([record]))
        template = provider.launch_template(
            self.identity, env, self._user_data("worker"), self.spec.architecture
        )
        got = acquire_workers(
            provider,
            self.identity,
            env,
            template,
            self.capacity_plan,
            self.spec,
            offers=self.offers,
            on_launch=self._launched,
        )
        if got.cores < self.spec.cores:  # at least min_cores, or acquire_workers raised
            self._emit(events.CapacityShort(got.cores, self.spec.cores))
        self.timings["provision"] = time.monotonic() - started

    def _launched(self, got: Fulfilment) -> None:
        self.instances.update({r.instance_id: r for r in got.records})
        self.capacity_errors += got.errors
        self.fleet_ids += got.fleet_ids
        for role in sorted({r.role for r in got.records}):
            self._emit(events.Launched(role, tuple(r for r in got.records if r.role == role)))
        for error in got.errors:
            self._emit(events.CapacityRefused(error))
        if self._closing.is_set():  # stop launching: teardown is waiting
            raise CloudError(f"cluster {self.cluster_id} closed while starting")

    def _user_data(self, role: str) -> str:
        return bootstrap.render(
            bootstrap.NodeConfig(
                role=role,
                cluster_id=self.cluster_id,
                deadline=self.deadline,
                port=self.provider.scheduler_port,
                dashboard_port=self.provider.dashboard_port,
                pip=tuple(self.spec.software.pip) if self.spec.software else (),
                idle_timeout=self.spec.idle_timeout.total_seconds(),
                no_client_timeout=self.spec.no_client_timeout.total_seconds(),
            )
        )

    def _scheduler_address(self, give_up: float) -> dict | None:
        self._check_nodes(give_up, "the scheduler to start")
        return self.provider.scheduler_address(self.identity)

    def _check_nodes(self, give_up: float, waiting_for: str) -> list[InstanceRecord]:
        alive = check_nodes(
            self.provider, self.identity, list(self.instances.values()), self.spec.min_cores
        )
        if time.monotonic() > give_up:
            raise CloudError(
                f"timed out after {format_duration(timedelta(seconds=self.boot_timeout))} waiting "
                f"for {waiting_for}",
                "on AWS, the instances' console output shows why; or raise boot_timeout",
            )
        return alive

    # ------------------------------------------------------------- teardown

    def detach(self) -> None:
        """Let go of the cluster without tearing it down: its instances run on, and power
        off when the job's driver ends them, at no_client_timeout without any client, or at
        the deadline. What costs nothing stays for `burst wait`, `burst cancel` or gc."""
        if self._connection is not None and self._connection.private_sandbox is not None:
            raise BurstError(
                "a private sandbox dies with this process: nothing can outlive it",
                "start the long-lived sandbox first: burst sandbox up",
            )
        self._detached = True
        self.close()

    def close(self, timeout: float | None = None) -> Any:
        BurstCluster._open.discard(self)
        self._closing.set()
        with shielded():
            try:
                super().close(timeout)
            finally:
                self._teardown()
                self._loop_runner.stop()

    def _teardown(self) -> None:
        with self._cloud_lock:  # the cloud call in flight, if any, finishes first
            if self.teardown_report is not None or self._connection is None or self._detached:
                return
            started = time.monotonic()
            self._emit(events.TearingDown())
            try:
                self.teardown_report = self.provider.teardown(self.identity)
                if self.teardown_report.verified:
                    ended = datetime.now(UTC)
                    for record in self.instances.values():
                        record.state = "terminated"
                        record.end_time = record.end_time or ended
                self.timings["teardown"] = time.monotonic() - started
                self._emit(events.TornDown(self.teardown_report))
            finally:
                self._connection.close()

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


@atexit.register
def _close_open_clusters() -> None:
    """A notebook kernel restarted with clusters open still tears them down."""
    for cluster in list(BurstCluster._open):
        cluster.close()
