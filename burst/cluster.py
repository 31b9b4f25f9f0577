"""BurstCluster: a real `distributed` cluster object whose machines are rented for the job."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import html
import math
import signal
import socket
import sys
import threading
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar

from distributed.core import Status, rpc
from distributed.deploy import Adaptive, Cluster
from tornado.ioloop import PeriodicCallback

from burst import bootstrap, elasticity, events, preflight, tls, wheelhouse
from burst.catalog import SNAPSHOT, architecture_of, default_zones, offers_for
from burst.cloud.base import (
    CloudError,
    ClusterIdentity,
    Fulfilment,
    InstanceRecord,
    NetworkRequest,
    PoolError,
    TeardownReport,
)
from burst.cloud.connect import Connection, open_provider
from burst.cost import instance_cost
from burst.errors import BudgetError, BurstError, PlanError, SpecError
from burst.events import EventHandler
from burst.plan import Plan, plan_within_budget
from burst.provision import (
    acquire_workers,
    check_nodes,
    hourly_budget_left,
    launch_request,
    plan_top_up,
    top_up,
)
from burst.spec import JobSpec, format_duration, parse_spec
from burst.storage import Bucket

POLL_SECONDS = 0.5  # the cloud, while the cluster starts: node failures, instances gone
# The scheduler's published address: one SSM GetParameter, 5 a second of the account's 40
# (https://docs.aws.amazon.com/general/latest/gr/ssm.html; enforced by burst.cloud.limits).
ADDRESS_POLL_SECONDS = 0.2
JOIN_POLL_SECONDS = 0.05  # scheduler_info: in this process, no call
# The scheduler's no_client_timeout counts this cluster object as a client while it beats
# (burst.node reads the same metadata key: the nodes have no burst to import it from).
HEARTBEAT_KEY = "burst-heartbeat"
HEARTBEAT_SECONDS = 10
# Where a worker's node agent says it retires on a spot notice (burst.node, same key).
INTERRUPTED_KEY = "burst-interrupted"
# How often the running set is reconciled against the target cores (losses, scale requests);
# the cloud is asked which instances ended at most this often too.
RECONCILE_SECONDS = 2.0
CLOUD_CHECK_SECONDS = 5.0
# After a top-up that came short or was refused, wait this long before asking again.
RETRY_SECONDS = 30.0
# No new instance when max_runtime ends sooner than this: EC2 bills a minute anyway.
MIN_LAUNCH_SECONDS = 60
MAX_CORES = 100_000


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class BurstAdaptive(Adaptive):
    """distributed's Adaptive, whose scale-ups stop at what the budget and max_runtime allow
    (the most that fits, logged once) instead of raising at every tick."""

    async def scale_up(self, n: int) -> None:
        await self.cluster._scale(n * self.cluster.cores_per_worker, clamp=True)

    async def scale_down(self, workers: list[str]) -> None:
        # Retired by the cluster (retire_workers, then one terminate call), on its loop.
        if workers:
            await self.cluster._scale_down(list(workers))


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

    ``scale(n)`` (workers) or ``scale(cores=N)`` changes the cores, ``adapt(minimum_cores=...,
    maximum_cores=...)`` lets distributed's Adaptive do it with the load: more cores are
    planned and launched a fleet per pool within the budget and before max_runtime ends (a
    scale beyond them is refused, saying why); fewer retire their workers gracefully, then
    terminate those instances in one call. Workers lost to spot interruptions (or retiring on
    a rebalance recommendation) are replaced the same way, without the interrupted pools;
    ``elasticity()`` records the interruptions, the replacements and their cost.

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

    _supports_scaling = True
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
        asynchronous = bool(fields.pop("asynchronous", False))
        if asynchronous:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                raise TypeError(
                    "asynchronous=True needs a running event loop: inside `async def`, use "
                    "`async with BurstCluster(..., asynchronous=True) as cluster`"
                ) from None
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
        # Elasticity: the worker cores wanted, and what became of the workers.
        self._target_cores = 0
        self._retiring: dict[str, str] = {}  # instance id -> why (scale-down, interruption)
        self._gone: set[str] = set()  # workers the cloud says ended
        self._env = None
        self._template_id = ""
        self._subnet_zones: list[str] = []  # network.subnets' zones, once looked up
        self._reconcile_lock: asyncio.Lock | None = None
        self._cloud_checked = 0.0
        self._retry_at = 0.0
        self._refused: str | None = None
        self._scheduler_gone = False
        # How the nodes' environment is provided (the manifest's node_environment).
        self.node_environment: dict[str, Any] = {}
        self._wheelhouses: list[tuple[str, str]] = []  # (uname -m, s3:// prefix)
        self._requirements: tuple[str, ...] = ()
        self.interruptions: list[dict[str, Any]] = []
        self.replacements: list[dict[str, Any]] = []
        self.scaling: list[dict[str, Any]] = []
        super().__init__(asynchronous=asynchronous, name=self.cluster_id, quiet=quiet)
        self._loop_runner.start()
        BurstCluster._open.add(self)
        self._emit(events.Planned(self.capacity_plan, self.cluster_id, self.job_id, self))
        if asynchronous:
            return  # started by `await cluster` or `async with`
        try:
            self.sync(self._start)
        except BaseException:
            self.close()
            raise

    def __await__(self):
        async def started() -> BurstCluster:
            if self.status == Status.created:
                try:
                    await self._start()
                except BaseException:
                    await self._close()
                    raise
            return self

        return started().__await__()

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
        """The worker instances serving the cluster, by id (a worker's Dask name is its
        instance id): launched, not retiring and not ended. ``instances`` has every one."""
        return {
            i: r
            for i, r in self.instances.items()
            if r.role == "worker" and i not in self._gone and i not in self._retiring
        }

    @property
    def plan(self) -> set[str]:
        """The workers wanted (distributed's Adaptive compares it with its target)."""
        return set(self.workers)

    @property
    def requested(self) -> set[str]:
        """The workers launched and wanted: launching is synchronous, so the plan itself."""
        return set(self.workers)

    @property
    def cores(self) -> int:
        """The worker cores serving the cluster now."""
        return sum(r.vcpus for r in self.workers.values())

    @property
    def target_cores(self) -> int:
        """The worker cores the cluster keeps (its spec's, or the last scale's)."""
        return self._target_cores

    @property
    def cores_per_worker(self) -> int:
        """The vCPUs of the plan's most common worker: what ``scale(n)`` counts in."""
        vcpus = Counter()
        for line in self.capacity_plan.workers:
            vcpus[line.vcpus] += line.count
        return vcpus.most_common(1)[0][0] if vcpus else 1

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

    @property
    def launch_setup(self) -> dict[str, Any]:
        """What more workers are launched with (the nodes' network, roles and images, and the
        workers' launch template), as plain data: a detached job keeps it for `burst wait`
        to replace lost workers."""
        return {
            "environment": self._env.to_dict() if self._env else None,
            "template_id": self._template_id,
        }

    def scale(self, n: int | None = None, *, cores: int | None = None) -> Any:
        """Scale to `n` workers (of `cores_per_worker` vCPUs) or to `cores` worker cores.

        More cores are planned (spot first, then on-demand under spot-with-fallback) and
        launched a fleet per pool; fewer retire their workers gracefully, then terminate
        their instances. Returns when the cloud calls are done (awaitable when
        ``asynchronous=True``); the new workers join shortly after.

        Raises
        ------
        SpecError
            `n` or `cores` is not a whole number in 0..100000, or both are given.
        BudgetError
            The cores wanted would cost more per hour than ``max_hourly`` (or than
            ``max_cost`` allows until the deadline), or max_runtime is over.
        """
        target = self._cores_wanted(n, cores)
        return self.sync(self._scale, target)

    def _cores_wanted(self, n: int | None, cores: int | None) -> int:
        if (n is None) == (cores is None):
            raise SpecError(
                [f"scale: give n (workers) or cores=N, exactly one (got n={n!r}, cores={cores!r})"]
            )
        field, value = ("n", n) if cores is None else ("cores", cores)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SpecError([f"scale: {field} must be a whole number >= 0 (got {value!r})"])
        wanted = value * self.cores_per_worker if cores is None else value
        if wanted > MAX_CORES:
            raise SpecError(
                [f"scale: {field}={value} is {wanted} cores; at most {MAX_CORES} are accepted"]
            )
        return wanted

    async def _scale(self, cores: int, clamp: bool = False) -> None:
        """Set the target (after the budget and deadline checks), then reconcile. With
        `clamp` (Adaptive), a target over budget becomes the most that fits, logged once."""
        if cores > self._target_cores:
            fits = await asyncio.to_thread(self._cores_that_fit, cores)
            if fits < cores:
                why = self._refusal(cores, fits)
                if not clamp:
                    raise BudgetError(why, "raise max_hourly or max_cost, or scale less")
                self._note_refusal(why)
                cores = max(fits, self._target_cores)
        self._retry_at = 0.0  # a request asks the cloud now, even after a recent shortfall
        if cores != self._target_cores:
            self.scaling.append(
                {"time": _now(), "from_cores": self._target_cores, "to_cores": cores}
            )
            self._log(f"scaling from {self._target_cores} to {cores} worker cores")
            self._target_cores = cores
        await self._correct_state()

    def _running_worker_hourly(self) -> Decimal:
        return sum(
            (
                r.hourly or Decimal(0)
                for i, r in self.instances.items()
                if r.role == "worker" and i not in self._gone
            ),
            Decimal(0),
        )

    def _seconds_to_end(self) -> float:
        """Until max_runtime ends (the grace after it is for collecting and teardown)."""
        return (self.deadline - self.spec.grace - datetime.now(UTC)).total_seconds()

    def _fits(self, extra: int) -> bool:
        """Whether `extra` more worker cores, as planned now, fit the budget and time."""
        if extra <= 0:
            return True
        if self._seconds_to_end() < MIN_LAUNCH_SECONDS:
            return False
        try:
            more = plan_top_up(self.spec, extra, self._zones(), self.offers)
        except PlanError:
            return False
        added = sum((line.total_hourly for line in more.workers), Decimal(0))
        running = self._running_worker_hourly()
        left = hourly_budget_left(self.capacity_plan, self.spec, running)
        if left is not None and added > left:
            return False
        if self.spec.max_cost is not None:
            # What was spent, plus everything running (and added) until the deadline.
            now = datetime.now(UTC)
            spent = sum(
                (instance_cost(r, now) or Decimal(0) for r in self.instances.values()), Decimal(0)
            )
            hours = Decimal(max(0, (self.deadline - now).total_seconds())) / 3600
            schedulers = sum(
                (r.hourly or Decimal(0) for r in self.instances.values() if r.role != "worker"),
                Decimal(0),
            )
            if spent + (running + schedulers + added) * hours > self.spec.max_cost:
                return False
        return True

    def _cores_that_fit(self, cores: int) -> int:
        """The most worker cores, up to `cores`, that fit (whole workers less at a time)."""
        serving = self.cores
        step = self.cores_per_worker
        while cores > self._target_cores and not self._fits(cores - serving):
            cores -= step
        return cores

    def _refusal(self, cores: int, fits: int) -> str:
        if self._seconds_to_end() < MIN_LAUNCH_SECONDS:
            return (
                f"scale to {cores} cores refused: max_runtime ends in "
                f"{max(0, self._seconds_to_end()):.0f}s; no instance is launched so late"
            )
        limits = ", ".join(
            f"{name} ${value}"
            for name, value in (
                ("max_hourly", self.spec.max_hourly),
                ("max_cost", self.spec.max_cost),
            )
            if value is not None
        )
        return (
            f"scale to {cores} cores refused: over the budget ({limits or 'no offer left'}); "
            f"{fits} worker cores fit"
        )

    def _note_refusal(self, why: str) -> None:
        if why != self._refused:
            self._refused = why
            self._log(why)

    def scale_down(self, workers: list[str]) -> Any:
        """Retire these workers (by name, their instance ids) and terminate their instances;
        the target drops by their cores. What distributed's Adaptive calls."""
        return self.sync(self._scale_down, list(workers))

    async def _scale_down(self, names: list[str]) -> None:
        chosen = [self.workers[n] for n in names if n in self.workers]
        if not chosen:
            return
        cores = max(0, self._target_cores - sum(r.vcpus for r in chosen))
        self.scaling.append({"time": _now(), "from_cores": self._target_cores, "to_cores": cores})
        self._target_cores = cores
        async with self._lock_for_reconcile():
            await self._retire(chosen, "scale-down")

    def adapt(
        self,
        Adaptive: type[Adaptive] | None = None,
        *,
        minimum_cores: int | None = None,
        maximum_cores: int | None = None,
        **kwargs: Any,
    ) -> Adaptive:
        """Let distributed's Adaptive scale the cluster with its load, between
        `minimum_cores` and `maximum_cores` (or `minimum`/`maximum` workers). Scale-ups stay
        within the budget and max_runtime: beyond them, the most that fits, logged once."""
        step = self.cores_per_worker
        for field, value in (("minimum_cores", minimum_cores), ("maximum_cores", maximum_cores)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CORES
            ):
                raise SpecError(
                    [f"adapt: {field} must be a whole number in 0..{MAX_CORES} (got {value!r})"]
                )
        if (
            minimum_cores is not None
            and maximum_cores is not None
            and minimum_cores > maximum_cores
        ):
            raise SpecError(
                [f"adapt: minimum_cores {minimum_cores} is above maximum_cores {maximum_cores}"]
            )
        if minimum_cores is not None:
            kwargs["minimum"] = math.ceil(minimum_cores / step)
        if maximum_cores is not None:
            kwargs["maximum"] = max(kwargs.get("minimum", 0), maximum_cores // step)
        return super().adapt(Adaptive=Adaptive or BurstAdaptive, **kwargs)

    def elasticity(self) -> dict[str, Any]:
        """A plain record of the cluster's changes, for the manifest: the scale requests, the
        interrupted workers, and the replacement capacity launched for them (instances, pools,
        seconds until the cores were back, and what it cost so far)."""
        return elasticity.record(
            self._target_cores,
            self.scaling,
            self.interruptions,
            self.replacements,
            self.instances,
            datetime.now(UTC),
        )

    # ------------------------------------------------------------ reconcile

    def _lock_for_reconcile(self) -> asyncio.Lock:
        if self._reconcile_lock is None:
            self._reconcile_lock = asyncio.Lock()
        return self._reconcile_lock

    async def _reconcile_tick(self) -> None:
        if self._lock_for_reconcile().locked() or self.status != Status.running:
            return
        try:
            await self._correct_state()
        except Exception as error:  # logged, and tried again at the next tick
            if self._closing.is_set():
                return
            self._note_refusal(f"reconciling the workers failed: {type(error).__name__}: {error}")

    async def _correct_state(self) -> None:
        """Align the running set with the target, as distributed's SpecCluster does: see who
        retired or ended, then launch the missing cores or retire the extra ones."""
        async with self._lock_for_reconcile():
            scheduler_up = await self._observe()
            # Retired, but not terminated yet (on AWS a new instance's tags may lag): again.
            unended = [n for n, why in self._retiring.items() if why == "scale-down"]
            if unended := [n for n in unended if n not in self._gone]:
                await self._terminate(unended)
            serving = self.cores
            if serving > self._target_cores:
                await self._shrink(serving - self._target_cores)
            elif serving < self._target_cores and scheduler_up:
                # Never for a scheduler that is gone (its idle or no-client timeout closed
                # the cluster): new workers would have nothing to join, and cost.
                await self._grow(self._target_cores - serving)
            self._note_rejoined()

    async def _observe(self) -> bool:
        """Workers retiring on a spot notice (they say so on the scheduler), and workers whose
        instances the cloud says ended: lost cores, replaced by the next step. Returns
        whether the scheduler answered and its instance still runs."""
        if self.scheduler_comm is None or self._scheduler_gone:
            return False
        try:
            notices = await self.scheduler_comm.get_metadata(keys=[INTERRUPTED_KEY], default={})
        except OSError:
            return False
        for name, notice in (notices or {}).items():
            if name in self.workers:
                self._interrupted(name, notice.get("reason", "spot interruption"))
        if time.monotonic() - self._cloud_checked < CLOUD_CHECK_SECONDS:
            return True
        self._cloud_checked = time.monotonic()
        ended = await self._cloud(
            self.provider.instances, self.identity, ["shutting-down", "terminated"]
        )
        for record in ended:
            if self.instances.get(record.instance_id, record).role == "scheduler":
                self._scheduler_gone = True
                self._note_refusal("the scheduler's instance ended: no more workers launched")
            mine = self.instances.get(record.instance_id)
            if mine is None or mine.role != "worker" or record.instance_id in self._gone:
                continue
            if record.instance_id not in self._retiring:
                self._interrupted(record.instance_id, "lost without notice")
            self._gone.add(record.instance_id)
            mine.state = "terminated"
            mine.end_time = mine.end_time or datetime.now(UTC)
        return not self._scheduler_gone

    def _interrupted(self, name: str, reason: str) -> None:
        record = self.instances[name]
        self._retiring[name] = reason
        self.interruptions.append(elasticity.interruption(record, reason, datetime.now(UTC)))
        self._log(f"worker {name} ({record.instance_type} {record.market}): {reason}")

    async def _grow(self, missing: int) -> None:
        if time.monotonic() < self._retry_at:
            return
        if self._seconds_to_end() < MIN_LAUNCH_SECONDS:
            self._note_refusal(
                f"not replacing {missing} worker cores: max_runtime ends in "
                f"{max(0, self._seconds_to_end()):.0f}s"
            )
            return
        exclude = {(i["instance_type"], i["zone"], i["market"]) for i in self.interruptions}
        pending = [i for i in self.interruptions if i["replaced_by"] is None]
        got = await self._cloud(
            top_up,
            self.provider,
            self.identity,
            self._env,
            self._template_id,
            self.capacity_plan,
            self.spec,
            missing,
            self._running_worker_hourly(),
            self.offers,
            exclude,
            self._launched,
        )
        if got.cores < missing:
            self._retry_at = time.monotonic() + RETRY_SECONDS
            reasons = "; ".join(str(e) for e in got.errors) or "the budget allows no more"
            self._note_refusal(
                f"only {got.cores} of {missing} more worker cores came up ({reasons}); "
                f"trying again in {RETRY_SECONDS:.0f}s"
            )
        if got.records and pending:
            elasticity.replacement(self.interruptions, self.replacements, got, datetime.now(UTC))

    def _note_rejoined(self) -> None:
        """A replacement is back when all its workers joined: the seconds from the first
        notice of the workers it replaces."""
        back = elasticity.rejoined(
            self.interruptions, self.replacements, self.observed, datetime.now(UTC)
        )
        for replacement in back:
            self._log(
                f"{replacement['cores']} replacement cores joined "
                f"{replacement['seconds_to_rejoin']}s after the interruption"
            )

    async def _shrink(self, excess: int) -> None:
        """Retire whole workers worth at most `excess` cores: those not joined yet first,
        then on-demand before spot, dearest per core first, newest first."""
        observed = self.observed

        def order(record: InstanceRecord) -> tuple:
            per_core = (record.hourly or Decimal(0)) / max(1, record.vcpus)
            return (
                record.instance_id in observed,
                record.market == "spot",
                -per_core,
                -record.launch_time.timestamp(),
            )

        chosen = []
        for record in sorted(self.workers.values(), key=order):
            if record.vcpus <= excess:
                chosen.append(record)
                excess -= record.vcpus
        if chosen:
            await self._retire(chosen, "scale-down")

    async def _retire(self, chosen: list[InstanceRecord], why: str) -> None:
        """Hand their data to the others (distributed's retire_workers), then terminate the
        instances in one call."""
        names = [r.instance_id for r in chosen]
        for name in names:
            self._retiring[name] = why
        self._log(f"retiring {len(names)} worker(s) ({sum(r.vcpus for r in chosen)} cores): {why}")
        with contextlib.suppress(OSError):
            await self.scheduler_comm.retire_workers(
                names=names,
                close_workers=True,
                remove=True,
                stimulus_id=f"burst-{why}-{time.time()}",
            )
        await self._terminate(names)

    async def _terminate(self, names: list[str]) -> None:
        ended = await self._cloud(self.provider.terminate, self.identity, names)
        now = datetime.now(UTC)
        for name in ended:
            self._gone.add(name)
            self.instances[name].state = "terminated"
            self.instances[name].end_time = self.instances[name].end_time or now

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
        checked = float("-inf")
        while True:
            # The nodes' health (a failure report, an instance gone: several API calls) is
            # checked every POLL_SECONDS; the address alone (one SSM read) more often, so
            # that the cluster is not found up to a whole interval late.
            if time.monotonic() - checked >= POLL_SECONDS:
                await self._cloud(self._check_nodes, give_up, "the scheduler to start")
                checked = time.monotonic()
            if address := await self._cloud(self.provider.scheduler_address, self.identity):
                break
            await asyncio.sleep(ADDRESS_POLL_SECONDS)
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
        joined, checked = -1, float("-inf")
        while True:
            # Joins come over the scheduler's stream into scheduler_info, a local look; the
            # cloud (which workers are still alive) is asked every POLL_SECONDS.
            if time.monotonic() - checked >= POLL_SECONDS:
                alive = await self._cloud(self._check_nodes, give_up, "the workers to join")
                checked = time.monotonic()
            expected = len(alive)
            count = len(self.scheduler_info["workers"])
            if count != joined:
                self._emit(events.WorkersJoined(count, expected))
                joined = count
            if count >= expected:
                break
            await asyncio.sleep(JOIN_POLL_SECONDS)
        self.timings["bootstrap"] = time.monotonic() - started
        # A worker that ended while booting, with no failure of its own published (that
        # would have failed the start), is a loss like a spot interruption: the job starts
        # on what joined and the reconciler replaces it, without its pool.
        launched = self.cores
        for name in set(self.workers) - {r.instance_id for r in alive}:
            self._interrupted(name, "lost while booting")
        # From now on the cores launched are kept: lost workers are replaced, and
        # scale()/adapt() move the target.
        self._target_cores = launched
        reconcile = PeriodicCallback(self._reconcile_tick, RECONCILE_SECONDS * 1000)
        self.periodic_callbacks["burst-reconcile"] = reconcile
        reconcile.start()

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
        network = NetworkRequest(tuple(self.spec.network.subnets), self.spec.network.public_ip)
        if network.subnets:
            self._within_subnets(provider.network(network.subnets).subnets)
        # A shortfall costs nothing.
        preflight.require(
            provider, self.capacity_plan, self._connection.node_python(), network.subnets
        )
        architectures = {self.spec.architecture} | {
            architecture_of(line.instance_type) for line in self.capacity_plan.lines
        }
        # A stock image's environment, resolved here, before anything is created: a
        # requirement without a wheel for the instances is refused now, not at every boot.
        python = self._connection.node_python()
        pip = tuple(self.spec.software.pip) if self.spec.software else ()
        houses = (
            [wheelhouse.build(pip, python, arch) for arch in sorted(architectures)]
            if python
            else []
        )
        credentials = tls.issue(self.cluster_id, self.spec.max_runtime + self.spec.grace)
        self.security = credentials.client_security()
        # Every zone the planner may use, so that re-plans after capacity errors have subnets.
        zones = self._zones()
        env = provider.prepare(
            self.identity,
            zones,
            self.spec.network.client_cidrs
            or self._connection.client_cidr(private=network.public_ip == "none"),
            credentials.node_bundle(),
            architectures=architectures,
            read_objects=[i for i in self.spec.inputs if i.startswith("s3://")],
            network=network,
        )
        env = dataclasses.replace(env, disk_gb=self.spec.disk_gb)
        self._upload_wheelhouses(houses)
        # The scheduler's port is known before it starts (on the sandbox's one host, a free
        # one), and its address once it is launched: the workers get it in their user data
        # rather than polling SSM, whose reads are 40 per second for the whole account.
        port = provider.scheduler_port or _free_port()
        scheduler = ""
        for line in self.capacity_plan.lines:
            if line.role != "worker":
                user_data = self._user_data(line.role, port)
                record = provider.launch_instance(
                    self.identity, env, launch_request(line), user_data
                )
                self._launched(Fulfilment([record]))
                if line.role == "scheduler" and record.private_ip:
                    scheduler = f"tls://{record.private_ip}:{port}"
        template = provider.launch_template(
            self.identity, env, self._user_data("worker", port, scheduler), self.spec.architecture
        )
        self._env, self._template_id = env, template  # for scale-ups and replacements
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

    def _upload_wheelhouses(self, houses: list[wheelhouse.Wheelhouse]) -> None:
        """Into the cluster's bucket (which the nodes' roles read), before any node boots."""
        if not houses:
            self.node_environment = {"provided": "client-interpreter"}
            return
        bucket = self.provider.bucket(self.identity)
        for house in houses:
            prefix = f"wheelhouse/{house.sha256}/"
            for name in house.wheels:
                bucket.upload(house.folder / name, prefix + name)
            self._wheelhouses.append((house.machine, f"s3://{bucket.name}/{prefix}"))
        self._requirements = houses[0].requirements
        self.node_environment = {
            **houses[0].record(),
            **({"by_machine": {h.machine: h.record() for h in houses}} if len(houses) > 1 else {}),
        }

    def _zones(self) -> list[str]:
        if self._subnet_zones:
            return list(self._subnet_zones)
        offered = {o.zone for o in self.offers or ()} or set(default_zones(self.spec.region))
        return sorted(offered | {line.zone for line in self.capacity_plan.lines})

    def _within_subnets(self, subnets: dict[str, str]) -> None:
        """network.subnets name the zones the cluster may use (known once the cloud is
        reached): a plan with capacity elsewhere is made again within them, before anything
        is created (and refused, as any plan, when over budget)."""
        self._subnet_zones = sorted(subnets)
        outside = sorted({line.zone for line in self.capacity_plan.lines} - set(subnets))
        if outside:
            self.capacity_plan = plan_within_budget(
                self.spec, self._subnet_zones, offers=self.offers
            )
            self._log(
                f"planned again within the subnets' zones {', '.join(self._subnet_zones)} "
                f"(no subnet in {', '.join(outside)}): ${self.capacity_plan.hourly}/h"
            )

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

    def _user_data(self, role: str, port: int, scheduler: str = "") -> str:
        return bootstrap.render(
            bootstrap.NodeConfig(
                role=role,
                cluster_id=self.cluster_id,
                deadline=self.deadline,
                port=port,
                scheduler=scheduler,
                dashboard_port=self.provider.dashboard_port,
                wheelhouses=tuple(self._wheelhouses),
                requirements=self._requirements,
                idle_timeout=self.spec.idle_timeout.total_seconds(),
                no_client_timeout=self.spec.no_client_timeout.total_seconds(),
            )
        )

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
        if self.asynchronous:
            return self._close()
        with shielded():
            try:
                super().close(timeout)
            finally:
                self._teardown()
                self._loop_runner.stop()

    async def _close(self) -> None:
        BurstCluster._open.discard(self)
        self._closing.set()
        try:
            await super()._close()
        finally:
            if self.asynchronous:  # the sync close() tears down in its own thread
                await asyncio.to_thread(self._teardown)

    def _teardown(self) -> None:
        with self._cloud_lock:  # the cloud call in flight, if any, finishes first
            if self.teardown_report is not None or self._connection is None or self._detached:
                return
            started = time.monotonic()
            self._emit(events.TearingDown())
            try:
                self.teardown_report = self.provider.teardown(
                    self.identity, instance_ids=list(self.instances)
                )
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

    def _memory_gib(self, instance_type: str) -> float | None:
        """An instance type's memory, from the plan, the offers or the catalog's snapshot."""
        for item in (*self.capacity_plan.lines, *(self.offers or ())):
            if getattr(item, "instance_type", None) == instance_type and item.memory_gib:
                return item.memory_gib
        known = SNAPSHOT.get(instance_type)
        return known.memory_gib if known else None

    def _workers_summary(self) -> str:
        """The serving workers' cores and memory, as the instance types have them (not the
        memory of the machine this runs on, which a sandbox's instances share)."""
        workers = list(self.workers.values())
        memory = [self._memory_gib(r.instance_type) for r in workers]
        total = f", {sum(memory):g} GiB memory" if workers and None not in memory else ""
        return f"{len(workers)} serving, {sum(r.vcpus for r in workers)} cores{total}"

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
            "workers": self._workers_summary(),
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
        if cluster.asynchronous:  # its event loop may be gone: tear down directly
            cluster._closing.set()
            cluster._teardown()
        else:
            cluster.close()


def _free_port() -> int:
    """A port free on this host now: the sandbox scheduler's, chosen before it starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
