"""Getting the workers' cores: the plan's pools first, then re-plans of the shortfall over the
next cheapest pools, then (`spot-with-fallback`) on-demand, never above the budget.

Each pool is asked by its own EC2 Fleet, so what launches is what was planned; a pool that
reports an error (no capacity, price too low, ...) or fills short is left out of re-plans.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal

from burst.catalog import Offer
from burst.cloud.base import (
    CloudError,
    ClusterIdentity,
    Fulfilment,
    InstanceRecord,
    LaunchRequest,
    NodeEnvironment,
    PoolError,
    Provider,
)
from burst.errors import PlanError
from burst.plan import (
    LAUNCH_BUCKET,
    LAUNCH_REFILL,
    Plan,
    PlanLine,
    fallback_plan,
    plan,
    worker_market,
)
from burst.spec import JobSpec

# Rounds per market: the plan's pools, then up to two re-plans without the pools that failed.
ROUNDS_PER_MARKET = 3
# Errors of the account, not of a pool: every other pool of the market would answer the same,
# so the market is closed at once (and, with spot-with-fallback, on-demand is asked next).
ACCOUNT_WIDE = {"VcpuLimitExceeded", "MaxSpotInstanceCountExceeded", "RequestLimitExceeded"}


def launch_request(line: PlanLine) -> LaunchRequest:
    """A plan line as the provider takes it: one pool, one instance's vCPUs and price."""
    return LaunchRequest(
        line.instance_type,
        line.zone,
        line.market,
        line.vcpus,
        line.node_hourly,  # what the node bills: its IPv4 address and root volume included
        line.role,
        line.ipv4_hourly,
        line.disk_hourly,
    )


def acquire_workers(
    provider: Provider,
    ident: ClusterIdentity,
    env: NodeEnvironment,
    template_id: str,
    capacity_plan: Plan,
    spec: JobSpec,
    offers: Sequence[Offer] | None = None,
    on_launch: Callable[[Fulfilment], None] = lambda got: None,
) -> Fulfilment:
    """Launch the plan's workers, a fleet per pool (so the plan's mix and its pool share
    hold); raise CloudError when fewer than `min_cores` came up once every round is spent.
    `on_launch` sees each fleet's result at once; the caller tears down either way."""
    budget = _hourly_budget(capacity_plan, spec)
    got = _fill(
        provider, ident, env, template_id, spec, spec.cores, capacity_plan.workers, budget,
        Decimal(0), offers, (), on_launch,
    )  # fmt: skip
    if got.cores < spec.min_cores:
        reasons = "; ".join(str(e) for e in got.errors) or (
            "the budget allows no more" if budget is not None else "the cloud gave no more"
        )
        account = [e for e in got.errors if e.code in ACCOUNT_WIDE]
        raise CloudError(
            f"only {got.cores} of the {spec.min_cores} cores needed came up ({reasons})",
            f"the account's limit was reached ({account[0].code}): burst doctor shows the "
            "quotas; request an increase or lower cores"
            if account
            else "allow more instance types or zones, use spot-with-fallback, or lower min_cores",
        )
    return got


def top_up(
    provider: Provider,
    ident: ClusterIdentity,
    env: NodeEnvironment,
    template_id: str,
    capacity_plan: Plan,
    spec: JobSpec,
    cores: int,
    running_hourly: Decimal,
    offers: Sequence[Offer] | None = None,
    exclude: Iterable[tuple[str, str, str]] = (),
    on_launch: Callable[[Fulfilment], None] = lambda got: None,
) -> Fulfilment:
    """More workers for a running cluster: `cores` more (a scale-up, or the cores of
    interrupted workers), planned anew without the `exclude`d pools, spot first then
    on-demand under spot-with-fallback, a fleet per pool, and never above the hourly budget
    given what already runs (`running_hourly`, its workers). Returns what came up, which may
    be less; it does not raise for a shortfall."""
    first = plan_top_up(spec, cores, sorted(env.subnets), offers, exclude)
    return _fill(
        provider, ident, env, template_id, spec, cores, first.workers,
        _hourly_budget(capacity_plan, spec), running_hourly, offers, exclude, on_launch,
    )  # fmt: skip


def plan_top_up(
    spec: JobSpec,
    cores: int,
    zones: list[str],
    offers: Sequence[Offer] | None = None,
    exclude: Iterable[tuple[str, str, str]] = (),
    market: str | None = None,
) -> Plan:
    """The workers `top_up` asks first: the planner's cheapest mix for `cores`, with the
    spec's pool share when no pool is excluded, else the cheapest cover of what is left."""
    market = market or worker_market(spec)
    exclude = list(exclude)
    if not exclude and market == worker_market(spec):
        with contextlib.suppress(PlanError):
            more = spec.model_copy(update={"cores": cores, "min_cores": cores})
            return plan(more, zones, offers=offers)
    return fallback_plan(spec, cores, exclude, market=market, zones=zones, offers=offers)


def hourly_budget_left(capacity_plan: Plan, spec: JobSpec, running_hourly: Decimal):
    """What more workers may cost per hour, given the workers that run: None, no budget."""
    budget = _hourly_budget(capacity_plan, spec)
    return None if budget is None else budget - running_hourly


def _fill(
    provider: Provider,
    ident: ClusterIdentity,
    env: NodeEnvironment,
    template_id: str,
    spec: JobSpec,
    want: int,
    first_pools: list[PlanLine],
    budget: Decimal | None,
    running_hourly: Decimal,
    offers: Sequence[Offer] | None,
    exclude: Iterable[tuple[str, str, str]],
    on_launch: Callable[[Fulfilment], None],
) -> Fulfilment:
    """Ask for `want` cores: the first pools, then re-plans of the shortfall over the next
    cheapest pools of the workers' market (then on-demand under spot-with-fallback), a fleet
    per pool (split at the cloud's fleet limits)."""
    got = Fulfilment()
    zones = sorted(env.subnets)
    fallback = ["on-demand"] if spec.spot == "spot-with-fallback" else []
    for market in [worker_market(spec), *fallback]:
        failed: set[tuple[str, str, str]] = set(exclude)
        for round_number in range(ROUNDS_PER_MARKET):
            missing = want - got.cores
            if missing <= 0 or _account_wide(got, market):
                break
            if round_number == 0 and first_pools and market == first_pools[0].market:
                pools = first_pools
            else:
                try:
                    pools = fallback_plan(
                        spec, missing, failed, market=market, zones=zones, offers=offers
                    ).workers
                except PlanError:
                    break  # no pool left in this market
            for pool in pools:
                if pool.zone not in env.subnets:
                    no_subnet = PoolError(*pool.pool, "NoSubnet", "no default subnet in the zone")
                    got.errors.append(no_subnet)
                    on_launch(Fulfilment(errors=[no_subnet]))
                    continue
                request = launch_request(pool)
                for units in provider.fleet_chunks(pool.cores, pool.vcpus):
                    spent = running_hourly + sum(
                        (r.hourly or Decimal(0) for r in got.records), Decimal(0)
                    )
                    cap = None if budget is None else budget - spent
                    if cap is not None and cap < pool.node_hourly:
                        break  # not one more instance fits the budget
                    LaunchPacer.of(provider.region).take(-(-units // request.vcpus))
                    fleet = provider.launch_fleet(ident, env, template_id, request, units, cap)
                    got.extend(fleet)
                    on_launch(fleet)
                    if fleet.errors or fleet.cores < units:
                        failed.add(request.pool)  # short, with or without an error
                        break  # so its other fleets would be short too
                if _account_wide(got, market):
                    break
            failed |= {(e.instance_type, e.zone, e.market) for e in got.errors}
    return got


def _account_wide(got: Fulfilment, market: str) -> bool:
    return any(e.code in ACCOUNT_WIDE and e.market == market for e in got.errors)


def _hourly_budget(capacity_plan: Plan, spec: JobSpec) -> Decimal | None:
    """What the workers may cost per hour so the whole cluster stays within the budget."""
    limits = []
    if spec.max_cost is not None:
        limits.append(spec.max_cost / capacity_plan.max_runtime_hours)
    if spec.max_hourly is not None:
        limits.append(spec.max_hourly)
    if not limits:
        return None
    schedulers = sum(
        (line.total_hourly for line in capacity_plan.lines if line.role != "worker"), Decimal(0)
    )
    return min(limits) - schedulers


def check_nodes(
    provider: Provider,
    ident: ClusterIdentity,
    launched: list[InstanceRecord],
    min_cores: int,
) -> list[InstanceRecord]:
    """Fail fast when a node reports a failure, a non-worker (the scheduler) dies, or so many
    workers die (a spot interruption while booting) that fewer than `min_cores` remain,
    instead of waiting for nothing. Returns the workers still to be expected."""
    failures = provider.node_failures(ident)
    if failures:
        # The same cause on many nodes is said once, with how many; the scheduler's first.
        counted = Counter(failures)
        said = sorted(counted, key=lambda message: "of the scheduler" not in message)
        raise CloudError(
            "nodes failed to start: "
            + "; ".join(m + (f" ({counted[m]} nodes)" if counted[m] > 1 else "") for m in said),
            "the node's message above says why; fix the spec or its software and run again",
        )
    gone = {r.instance_id for r in provider.instances(ident, ["shutting-down", "terminated"])}
    alive = [r for r in launched if r.role == "worker" and r.instance_id not in gone]
    dead = [r for r in launched if r.instance_id in gone]
    cores_left = sum(r.vcpus for r in alive)
    if dead and (any(r.role != "worker" for r in dead) or cores_left < min_cores):
        raise CloudError(
            "instances powered off before joining: "
            + ", ".join(f"{r.role} {r.instance_id}" for r in dead)
            + f"; {cores_left} worker cores left of the {min_cores} needed",
            "on AWS, the instances' console output shows why; lower min_cores to go on with "
            "fewer cores",
        )
    return alive


class LaunchPacer:
    """EC2's instance-launch bucket, mirrored here: 1,000 instances, refilling 2 per second
    per account and region, drawn on by RunInstances and EC2 Fleet alike
    (https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html). A fleet waits
    until the bucket holds its instances, so a cluster of thousands of instances launches at
    the rate EC2 allows instead of failing with RequestLimitExceeded. One per region, for
    every cluster this process launches."""

    _regions: dict[str, LaunchPacer] = {}

    def __init__(
        self,
        size: float = LAUNCH_BUCKET,
        refill: float = LAUNCH_REFILL,
        clock=time.monotonic,
        sleep=time.sleep,
    ):
        self.size, self.refill, self.clock, self.sleep = size, refill, clock, sleep
        self.tokens, self.stamp = size, clock()
        self.waited = 0.0

    @classmethod
    def of(cls, region: str) -> LaunchPacer:
        return cls._regions.setdefault(region, cls())

    def take(self, instances: int) -> float:
        """Wait until `instances` may launch; returns the seconds waited."""
        now = self.clock()
        self.tokens = min(self.size, self.tokens + (now - self.stamp) * self.refill)
        self.stamp = now
        wait = max(0.0, (min(instances, self.size) - self.tokens) / self.refill)
        if wait:
            self.sleep(wait)
            self.tokens += wait * self.refill
            self.stamp = self.clock()
        self.tokens -= instances  # a fleet above the bucket's size leaves it in debt
        self.waited += wait
        return wait
