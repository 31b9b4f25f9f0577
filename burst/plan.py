"""Capacity planning: a pure function from a spec and a list of offers to the instances to
launch and their cost. No I/O: offers come from the catalog (snapshot or live).

The objective: the mix of worker pools (type x zone x market) with the least cost per hour
that gives at least the cores; ties go to fewer instances. Spot pools are capped: no spot pool
holds more than `max_pool_share` of the cores (or a single instance, when one instance is
bigger than that), because interruptions are correlated within a pool. When the cap makes the
plan infeasible (too few pools, or over `max_hourly`) it is relaxed, and the plan says so.

It is an integer covering problem, solved exactly by dynamic programming over the cores in
units of the gcd of the pools' vCPUs (a bounded knapsack: each pool split into binary chunks
of instances, the state clipped at the cores wanted), vectorised with numpy: 10,000 cores over
100 pools take a few tens of milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from fractions import Fraction

import numpy as np

from burst import errors
from burst.catalog import (
    SNAPSHOT,
    SPOT_MODEL,
    Offer,
    default_zones,
    hourly_price,
    matches,
    public_ipv4_hourly,
    region_of,
    root_volume_hourly,
    snapshot_offers,
    snapshot_source,
)
from burst.errors import PlanError
from burst.money import HUNDREDTH_CENT
from burst.spec import JobSpec, capacity_problems, format_duration


@dataclass(frozen=True)
class PlanLine:
    role: str  # "scheduler" or "worker"
    instance_type: str
    zone: str
    market: str  # "spot" or "on-demand"
    count: int
    vcpus: int  # per instance
    hourly: Decimal  # per instance: the instance's own price
    memory_gib: float = 0.0  # per instance
    source: str = ""  # where the price comes from
    ipv4_hourly: Decimal = Decimal(0)  # per instance: its public IPv4 address, if it has one
    disk_hourly: Decimal = Decimal(0)  # per instance: its root volume (gp3)

    @property
    def cores(self) -> int:
        return self.count * self.vcpus

    @property
    def node_hourly(self) -> Decimal:
        """One node's price: the instance, its public IPv4 address and its root volume."""
        return self.hourly + self.ipv4_hourly + self.disk_hourly

    @property
    def total_hourly(self) -> Decimal:
        return self.node_hourly * self.count

    @property
    def pool(self) -> tuple[str, str, str]:
        return (self.instance_type, self.zone, self.market)


def cost_bound(hourly: Decimal, hours: Decimal) -> Decimal:
    """$/h x hours, rounded up to 1/100 of a cent: never below the exact cost."""
    return (hourly * hours).quantize(HUNDREDTH_CENT, ROUND_CEILING)


@dataclass(frozen=True)
class Plan:
    lines: tuple[PlanLine, ...]
    max_runtime_hours: Decimal  # max_runtime + grace: every instance is gone by then
    price_source: str
    cores: int = 0  # requested
    notes: tuple[str, ...] = ()
    max_pool_share: float | None = None  # the spot pool cap applied, None when none was
    share_binds: bool = False  # the cap made the plan dearer or bigger than without it

    @property
    def workers(self) -> list[PlanLine]:
        return [line for line in self.lines if line.role == "worker"]

    @property
    def worker_cores(self) -> int:
        return sum(line.cores for line in self.workers)

    @property
    def spot_cores(self) -> int:
        return sum(line.cores for line in self.workers if line.market == "spot")

    @property
    def instances(self) -> int:
        return sum(line.count for line in self.lines)

    @property
    def hourly(self) -> Decimal:
        return sum((line.total_hourly for line in self.lines), Decimal(0))

    @property
    def public_ipv4(self) -> int:
        """The public IPv4 addresses the plan pays for (one per node that gets one)."""
        return sum(line.count for line in self.lines if line.ipv4_hourly)

    @property
    def ipv4_hourly(self) -> Decimal:
        """Their price per hour, within `hourly`."""
        return sum((line.ipv4_hourly * line.count for line in self.lines), Decimal(0))

    @property
    def disk_hourly(self) -> Decimal:
        """The nodes' root volumes per hour, within `hourly`."""
        return sum((line.disk_hourly * line.count for line in self.lines), Decimal(0))

    @property
    def cost_bound(self) -> Decimal:
        """The most the cluster can cost: every instance billed until the deadline."""
        return cost_bound(self.hourly, self.max_runtime_hours)

    def to_dict(self) -> dict:
        return {
            "lines": [
                {
                    **asdict(line),
                    "hourly": str(line.hourly),
                    "ipv4_hourly": str(line.ipv4_hourly),
                    "disk_hourly": str(line.disk_hourly),
                    "cores": line.cores,
                }
                for line in self.lines
            ],
            "cores": self.cores,
            "worker_cores": self.worker_cores,
            "spot_cores": self.spot_cores,
            "on_demand_cores": self.worker_cores - self.spot_cores,
            "instances": self.instances,
            "hourly": str(self.hourly),
            "public_ipv4": {"addresses": self.public_ipv4, "hourly": str(self.ipv4_hourly)},
            "root_volumes": {"volumes": self.instances, "hourly": str(self.disk_hourly)},
            "max_runtime_hours": str(self.max_runtime_hours),
            "cost_bound": str(self.cost_bound),
            "price_source": self.price_source,
            "max_pool_share": self.max_pool_share,
            "share_binds": self.share_binds,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        """The plan `to_dict` wrote (a detached job keeps it in its bucket)."""
        lines = tuple(
            PlanLine(
                **{
                    **{k: v for k, v in line.items() if k != "cores"},
                    "hourly": Decimal(line["hourly"]),
                    "ipv4_hourly": Decimal(line["ipv4_hourly"]),
                    "disk_hourly": Decimal(line.get("disk_hourly", "0")),  # older records
                }
            )
            for line in data["lines"]
        )
        return cls(
            lines,
            Decimal(data["max_runtime_hours"]),
            data["price_source"],
            cores=data["cores"],
            notes=tuple(data["notes"]),
            max_pool_share=data["max_pool_share"],
            share_binds=data["share_binds"],
        )


# --------------------------------------------------------------------------- the solver


def cheapest_cover(
    offers: Sequence[Offer], cores: int, caps: Sequence[int | None] | None = None
) -> list[int] | None:
    """Instances per offer with the least total $/h giving at least `cores` vCPUs, ties to
    fewer instances (then to earlier offers); `caps` bounds each offer's instances (None: no
    bound). None when the caps cannot give the cores. Exact."""
    if cores <= 0:
        return [0] * len(offers)
    if not offers:
        return None
    caps = list(caps) if caps is not None else [None] * len(offers)
    unit = math.gcd(*(o.vcpus for o in offers))
    target = -(-cores // unit)
    weights = [o.vcpus // unit for o in offers]
    bounds = [
        -(-target // w) if cap is None else min(cap, -(-target // w))
        for w, cap in zip(weights, caps, strict=True)
    ]
    if sum(b * w for b, w in zip(bounds, weights, strict=True)) < target:
        return None
    places = max(-o.hourly.as_tuple().exponent for o in offers)
    scale = Decimal(10) ** max(places, 0)
    prices = [int(o.hourly * scale) for o in offers]
    # One integer key per instance: cost first, then one per instance (fewer instances win).
    spread = sum(bounds) + 1
    keys = [p * spread + 1 for p in prices]
    worst = sum(b * k for b, k in zip(bounds, keys, strict=True))
    infinity = 1 << 62
    dtype: type = np.int64 if worst < infinity else object
    if dtype is object:
        infinity = worst + 1
    best = np.full(target + 1, infinity, dtype=dtype)
    best[0] = 0
    steps: list[tuple[int, int, int, np.ndarray, int]] = []  # offer, instances, weight, taken
    for i, (w, bound, key) in enumerate(zip(weights, bounds, keys, strict=True)):
        chunk, left = 1, bound
        while left > 0:  # binary chunks 1, 2, 4, ..., rest: any count up to the bound
            k = min(chunk, left)
            left -= k
            chunk *= 2
            kw, kk = k * w, k * key
            candidate = np.full(target + 1, infinity, dtype=dtype)
            if kw < target:
                candidate[kw:target] = best[: target - kw] + kk
            low = max(0, target - kw)  # every state that this chunk lifts to the target
            top_from = low + int(np.argmin(best[low : target + 1]))
            candidate[target] = best[top_from] + kk
            taken = candidate < best
            best = np.where(taken, candidate, best)
            steps.append((i, k, kw, taken, top_from))
    if best[target] >= infinity:
        return None
    counts = [0] * len(offers)
    state = target
    for i, k, kw, taken, top_from in reversed(steps):
        if taken[state]:
            counts[i] += k
            state = top_from if state == target else state - kw
    if state != 0:
        raise RuntimeError(f"planner bug: the reconstruction ended at {state} cores, not 0")
    return counts


# --------------------------------------------------------------------------- planning


def _hours(spec: JobSpec) -> Decimal:
    return Decimal(int((spec.max_runtime + spec.grace).total_seconds())) / 3600


def worker_market(spec: JobSpec) -> str:
    return "on-demand" if spec.spot == "on-demand" else "spot"


def _zones_of(spec: JobSpec, zones: Iterable[str] | None, offers: Sequence[Offer] | None):
    if zones:
        return list(zones)
    if offers is not None:
        return sorted({o.zone for o in offers}) or default_zones(spec.region)
    return default_zones(spec.region)


def usable_offers(
    spec: JobSpec,
    market: str,
    zones: list[str],
    offers: Sequence[Offer] | None = None,
    exclude: Iterable[str | tuple[str, ...]] = (),
) -> list[Offer]:
    """The offers the spec allows for workers in a market: its types or families, its
    architecture, its memory per core, the zones, and none of the excluded pools (exact
    types, (type, zone) or (type, zone, market)). Sorted by $ per vCPU, then by name."""
    if offers is None:
        offers = snapshot_offers(spec.region, zones, spec.instance_types, [market])
    barred = {(item,) if isinstance(item, str) else tuple(item) for item in exclude}
    wanted = set(zones)
    usable = [
        o
        for o in offers
        if o.market == market
        and o.zone in wanted
        and matches(o.instance_type, spec.instance_types)
        and o.architecture == spec.architecture
        and (spec.min_memory_per_core is None or o.memory_per_vcpu >= spec.min_memory_per_core)
        and not ({(o.instance_type,), (o.instance_type, o.zone), o.pool} & barred)
    ]
    extra = _node_extras(spec, "worker")
    return sorted(
        usable, key=lambda o: (Fraction(o.hourly + extra) / o.vcpus, o.instance_type, o.zone)
    )


def _node_extras(spec: JobSpec, role: str) -> Decimal:
    """What a node bills besides its instance: its public IPv4 address and root volume."""
    return public_ipv4_hourly(spec.network.public_ip, role) + root_volume_hourly(
        spec.disk_gb, spec.region
    )


def _node_priced(spec: JobSpec, offers: Sequence[Offer]) -> list[Offer]:
    """The offers at a worker node's price: a worker's public IPv4 address and root volume are
    billed with it, so the solver weighs them too (it favours fewer, bigger instances at equal
    cost per core)."""
    extra = _node_extras(spec, "worker")
    return [replace(o, hourly=o.hourly + extra) for o in offers]


def _no_offers(spec: JobSpec, market: str, zones: list[str]) -> PlanError:
    problems = capacity_problems(spec)
    if problems:
        return PlanError(problems)
    return PlanError(
        [
            f"instance_types: no {market} offer of {spec.instance_types} "
            f"({spec.architecture}"
            + (
                f", >= {spec.min_memory_per_core:g} GiB per vCPU"
                if spec.min_memory_per_core
                else ""
            )
            + f") in zones {zones} (got {spec.instance_types!r}); accepted: other types or "
            "families, another region, or on-demand"
        ]
    )


def _worker_lines(spec: JobSpec, offers: Sequence[Offer], counts: Sequence[int]) -> list[PlanLine]:
    ipv4 = public_ipv4_hourly(spec.network.public_ip, "worker")
    disk = root_volume_hourly(spec.disk_gb, spec.region)
    return [
        PlanLine(
            "worker",
            o.instance_type,
            o.zone,
            o.market,
            n,
            o.vcpus,
            o.hourly,
            o.memory_gib,
            o.source,
            ipv4,
            disk,
        )
        for o, n in zip(offers, counts, strict=True)
        if n > 0
    ]


def _scheduler_line(spec: JobSpec, zones: list[str], offers: Sequence[Offer] | None) -> PlanLine:
    name = spec.scheduler_instance_type
    ipv4 = public_ipv4_hourly(spec.network.public_ip, "scheduler")
    disk = root_volume_hourly(spec.disk_gb, spec.region)
    own = [
        o
        for o in offers or ()
        if o.instance_type == name and o.market == "on-demand" and o.zone in zones
    ]
    own.sort(key=lambda o: zones.index(o.zone))
    if own:
        o = own[0]
        return PlanLine(
            "scheduler",
            name,
            o.zone,
            "on-demand",
            1,
            o.vcpus,
            o.hourly,
            o.memory_gib,
            o.source,
            ipv4,
            disk,
        )
    itype = SNAPSHOT[name]
    zone = zones[0]
    return PlanLine(
        "scheduler",
        name,
        zone,
        "on-demand",
        1,
        itype.vcpus,
        hourly_price(name, zone, "on-demand"),
        itype.memory_gib,
        snapshot_source(region_of(zone)),
        ipv4,
        disk,
    )


def summarize_sources(sources: Iterable[str]) -> str:
    """The distinct price sources, said once: live spot timestamps folded into one range, and
    the modelled spot discount of a snapshot price named after that price."""
    live_prefix = "live spot price history "
    stamps: list[str] = []
    others: list[str] = []
    for source in sources:
        if source.startswith(live_prefix):
            stamps.append(source.removeprefix(live_prefix))
        elif source and source not in others:
            others.append(source)
    modelled = [o for o in others if o.endswith(SPOT_MODEL)]
    for source in modelled:
        if source.removesuffix(SPOT_MODEL) in others:  # "X" and "X x the model": say X once
            others.remove(source)
            others.append("spot:" + SPOT_MODEL.removeprefix(" x a").replace(" spot", "", 1))
    if stamps:
        first, last = min(stamps), max(stamps)
        span = first if first == last else f"{first} .. {last}"
        others.insert(0, f"{live_prefix}{span}")
    return "; ".join(others)


# Dask's scheduler runs on one thread and holds every worker's and task's state: the number
# of worker instances (each is one Dask worker) sets the size it needs. Unless the spec names
# scheduler_instance_type, the planner picks the first size whose limit the workers are under.
SCHEDULER_SIZES: tuple[tuple[int, str], ...] = (
    (250, "m5.large"),
    (1000, "m5.xlarge"),
    (2500, "m5.2xlarge"),
)
BIGGEST_SCHEDULER = "m5.4xlarge"
MANY_WORKERS = 1000  # from here, the plan warns that one scheduler serves them all


def scheduler_type_for(workers: int) -> str:
    """The scheduler instance type the planner picks for this many worker instances."""
    return next((name for limit, name in SCHEDULER_SIZES if workers < limit), BIGGEST_SCHEDULER)


def share_cap(offer: Offer, cores: int, share: float) -> int:
    """At most share x cores vCPUs in a spot pool, or one instance if it alone is bigger."""
    return max(1, math.floor(Fraction(repr(share)) * cores / offer.vcpus))


def plan(
    spec: JobSpec, zones: list[str] | None = None, *, offers: Sequence[Offer] | None = None
) -> Plan:
    """The least-$/h plan for the spec's cores over the offers (default: the snapshot's for
    the spec's region, in `zones`, default the region's first three). The scheduler is one
    on-demand `scheduler_instance_type`. Raises PlanError when no offer fits the constraints;
    a plan over max_hourly is returned (with a note) for `check_budget` to refuse."""
    zones = _zones_of(spec, zones, offers)
    market = worker_market(spec)
    usable = usable_offers(spec, market, zones, offers)
    if not usable:
        raise _no_offers(spec, market, zones)
    scheduler = _scheduler_line(spec, zones, offers)
    hours = _hours(spec)

    def attempt(share: float) -> Plan | None:
        caps = [share_cap(o, spec.cores, share) if share < 1 else None for o in usable]
        counts = cheapest_cover(_node_priced(spec, usable), spec.cores, caps)
        if counts is None:
            return None
        lines = (scheduler, *_worker_lines(spec, usable, counts))
        return Plan(
            lines=lines,
            max_runtime_hours=hours,
            price_source=summarize_sources(line.source for line in lines),
            cores=spec.cores,
            max_pool_share=share if share < 1 else None,
        )

    def good(p: Plan | None) -> bool:
        return p is not None and (spec.max_hourly is None or p.hourly <= spec.max_hourly)

    notes: list[str] = []
    share = spec.max_pool_share
    if market != "spot" or share >= 1:
        chosen = attempt(1.0)
    elif len(usable) == 1:
        notes.append("max_pool_share not applied: only one spot pool is allowed")
        chosen = attempt(1.0)
    else:
        chosen = attempt(share)
        if not good(chosen):
            why = (
                f"the {len(usable)} allowed spot pools cannot hold {spec.cores} cores at "
                f"{share:.0%} each"
                if chosen is None
                else f"at {share:.0%} the plan costs ${chosen.hourly}/h, over max_hourly"
            )
            # The loosest cap that works, in whole percent: caps only loosen as the share
            # grows, so both the capacity and the cost are monotone and bisection is exact.
            low, high = math.floor(share * 100), 100
            while high - low > 1:
                middle = (low + high) // 2
                if good(attempt(middle / 100)):
                    high = middle
                else:
                    low = middle
            chosen = attempt(high / 100)
            relaxed = f"{high / 100:g}" if high < 100 else "none (1)"
            notes.append(f"max_pool_share relaxed from {share:g} to {relaxed}: {why}")
    if chosen is None:  # uncapped, the usable offers always cover the cores
        raise RuntimeError(f"planner bug: no cover of {spec.cores} cores without a share cap")
    if chosen.max_pool_share is not None:
        free = attempt(1.0)
        binds = free is not None and (free.hourly, free.instances) < (
            chosen.hourly,
            chosen.instances,
        )
        chosen = replace(chosen, share_binds=binds)
    workers = sum(line.count for line in chosen.workers)
    if "scheduler_instance_type" not in spec.model_fields_set:
        wanted = scheduler_type_for(workers)
        if wanted != scheduler.instance_type:
            bigger = _scheduler_line(
                spec.model_copy(update={"scheduler_instance_type": wanted}), zones, offers
            )
            lines = (bigger, *chosen.workers)
            chosen = replace(
                chosen, lines=lines, price_source=summarize_sources(line.source for line in lines)
            )
    if workers >= MANY_WORKERS:
        notes.append(
            f"one scheduler serves {workers} worker instances: Dask's scheduler runs on one "
            "thread and slows down past about a thousand workers; fewer, bigger instances "
            "(instance_types: [c5.24xlarge]) keep it responsive"
        )
    if (paced := launch_pacing_seconds(chosen.instances)) > 0:
        notes.append(
            f"{chosen.instances} instances pass EC2's launch bucket (1,000, refilling 2/s): "
            f"launching takes about {paced // 60 + 1} min more; fewer, bigger instances "
            "launch at once"
        )
    if spec.max_hourly is not None and chosen.hourly > spec.max_hourly:
        notes.append(f"the cheapest plan costs ${chosen.hourly}/h, over max_hourly")
    return replace(chosen, notes=tuple(notes))


# EC2's instance-launch bucket per account and region (burst.provision paces launches by it):
# https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html
LAUNCH_BUCKET, LAUNCH_REFILL = 1000, 2


def launch_pacing_seconds(instances: int) -> int:
    """How long EC2's launch rate adds before `instances` have all launched (from a full
    bucket): nothing up to 1,000, then half a second per instance."""
    return max(0, instances - LAUNCH_BUCKET) // LAUNCH_REFILL


def fallback_plan(
    spec: JobSpec,
    missing_cores: int,
    exclude: Iterable[str | tuple[str, ...]] = (),
    *,
    market: str = "on-demand",
    zones: list[str] | None = None,
    offers: Sequence[Offer] | None = None,
) -> Plan:
    """Worker lines (no scheduler) for cores a first request could not fill: the cheapest
    mix in `market` giving at least `missing_cores`, over the spec's types, zones,
    architecture and memory, without the excluded pools (exact types, (type, zone) or
    (type, zone, market)). No pool cap: it tops up what is already spread. Raises
    PlanError when no offer is left."""
    zones = _zones_of(spec, zones, offers)
    usable = usable_offers(spec, market, zones, offers, exclude)
    if not usable:
        raise _no_offers(spec, market, zones)
    counts = cheapest_cover(_node_priced(spec, usable), missing_cores)
    if counts is None:  # uncapped, the usable offers always cover the cores
        raise RuntimeError(f"planner bug: no cover of {missing_cores} cores")
    lines = tuple(_worker_lines(spec, usable, counts))
    return Plan(
        lines=lines,
        max_runtime_hours=_hours(spec),
        price_source=summarize_sources(line.source for line in lines),
        cores=missing_cores,
    )


# --------------------------------------------------------------------------- the budget


class BudgetError(errors.BudgetError):
    """A plan over the spec's max_cost (its cost bound) or max_hourly (its $/h): refused
    before anything is launched, exit code 4. Says by how much, and what would fit."""

    def __init__(
        self,
        field: str,
        limit: Decimal,
        value: Decimal,
        plan: Plan,
        fit_cores: int,
        fit_max_runtime: timedelta | None,
    ):
        self.field = field
        self.limit = limit
        self.value = value
        self.plan = plan
        self.fit_cores = fit_cores
        self.fit_max_runtime = fit_max_runtime
        super().__init__(self.cause)  # `fix` is worked out from the plan, below

    @property
    def over(self) -> Decimal:
        return self.value - self.limit

    @property
    def cause(self) -> str:
        if self.field == "max_cost":
            return (
                f"the cost bound ${self.value} is over max_cost ${self.limit} "
                f"by ${self.over}; nothing was launched"
            )
        return (
            f"the plan's ${self.value}/h is over max_hourly ${self.limit}/h "
            f"by ${self.over}/h; nothing was launched"
        )

    @property
    def fix(self) -> str:
        cores = self.plan.cores
        options = []
        if self.fit_cores:
            options.append(f"{self.fit_cores} cores fit at this max_runtime")
        else:
            options.append("no number of cores fits at this max_runtime")
        if self.fit_max_runtime is not None:
            options.append(
                f"max_runtime {format_duration(self.fit_max_runtime)} fits at {cores} cores"
            )
        elif self.field == "max_cost":
            options.append(f"no max_runtime of 10s or more fits at {cores} cores")
        return "; ".join(options) + f"; or raise {self.field}"

    def to_dict(self) -> dict:
        runtime = self.fit_max_runtime
        return {
            "status": "refused",
            "error": self.cause,
            "field": self.field,
            "limit": str(self.limit),
            "value": str(self.value),
            "over": str(self.over),
            "fits": {
                "cores": self.fit_cores or None,
                "max_runtime": format_duration(runtime) if runtime is not None else None,
                "max_runtime_seconds": int(runtime.total_seconds()) if runtime else None,
            },
            "fix": self.fix,
            "plan": self.plan.to_dict(),
        }


def _within(spec: JobSpec, p: Plan) -> bool:
    if spec.max_hourly is not None and p.hourly > spec.max_hourly:
        return False
    return spec.max_cost is None or p.cost_bound <= spec.max_cost


def _fit_cores(spec: JobSpec, zones, offers) -> int:
    """The most cores (below the spec's) whose plan fits the budget; 0 when none does."""

    def fits(cores: int) -> bool:
        smaller = spec.model_copy(update={"cores": cores, "min_cores": cores})
        return _within(spec, plan(smaller, zones, offers=offers))

    low, high = 0, spec.cores - 1
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def _fit_runtime(spec: JobSpec, p: Plan, max_cost: Decimal) -> timedelta | None:
    """The longest max_runtime whose cost bound at this plan's $/h fits max_cost."""
    limit = max_cost.quantize(HUNDREDTH_CENT, ROUND_FLOOR)
    seconds = int(limit * 3600 / p.hourly)
    while seconds > 0 and cost_bound(p.hourly, Decimal(seconds) / 3600) > max_cost:
        seconds -= 1
    runtime = seconds - int(spec.grace.total_seconds())
    if runtime >= 60:
        runtime -= runtime % 60  # whole minutes read better
    if runtime < 10:
        return None
    return timedelta(seconds=min(runtime, 7 * 24 * 3600))


def check_budget(
    spec: JobSpec, p: Plan, zones: list[str] | None = None, *, offers: Sequence[Offer] | None = None
) -> None:
    """Raise BudgetError if the plan is over max_hourly or its cost bound over max_cost; pure
    (it plans smaller variants to say what would fit). Pass the zones and offers the plan used."""
    if _within(spec, p):
        return
    if spec.max_hourly is not None and p.hourly > spec.max_hourly:
        field, limit, value, runtime = "max_hourly", spec.max_hourly, p.hourly, None
    elif spec.max_cost is not None:
        field, limit, value = "max_cost", spec.max_cost, p.cost_bound
        runtime = _fit_runtime(spec, p, spec.max_cost)
    else:  # _within found a limit broken, so one of the two is set
        raise RuntimeError("planner bug: a plan over budget with no budget")
    raise BudgetError(field, limit, value, p, _fit_cores(spec, zones, offers), runtime)


def plan_within_budget(
    spec: JobSpec, zones: list[str] | None = None, *, offers: Sequence[Offer] | None = None
) -> Plan:
    """plan() then check_budget(): what `burst run` and BurstCluster call before launching."""
    p = plan(spec, zones, offers=offers)
    check_budget(spec, p, zones, offers=offers)
    return p
