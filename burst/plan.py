"""Capacity planning: a pure function from a spec to the instances to launch and their cost.

Walking-skeleton planner: one worker pool, the (type, zone) with the lowest cost per hour that
covers the cores, ties to fewer instances. The capacity issue deepens it to an optimal mix.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from decimal import ROUND_CEILING, Decimal

from burst.catalog import SNAPSHOT, SNAPSHOT_SOURCE, hourly_price, matching_types
from burst.spec import JobSpec


@dataclass(frozen=True)
class PlanLine:
    role: str  # "scheduler" or "worker"
    instance_type: str
    zone: str
    market: str  # "spot" or "on-demand"
    count: int
    vcpus: int  # per instance
    hourly: Decimal  # per instance

    @property
    def cores(self) -> int:
        return self.count * self.vcpus

    @property
    def total_hourly(self) -> Decimal:
        return self.hourly * self.count


@dataclass(frozen=True)
class Plan:
    lines: tuple[PlanLine, ...]
    max_runtime_hours: Decimal
    price_source: str

    @property
    def workers(self) -> list[PlanLine]:
        return [line for line in self.lines if line.role == "worker"]

    @property
    def worker_cores(self) -> int:
        return sum(line.cores for line in self.workers)

    @property
    def hourly(self) -> Decimal:
        return sum((line.total_hourly for line in self.lines), Decimal(0))

    @property
    def cost_bound(self) -> Decimal:
        """The most the cluster can cost: every instance billed until the deadline."""
        return (self.hourly * self.max_runtime_hours).quantize(Decimal("0.0001"), ROUND_CEILING)

    def to_dict(self) -> dict:
        return {
            "lines": [
                {**asdict(line), "hourly": str(line.hourly), "cores": line.cores}
                for line in self.lines
            ],
            "worker_cores": self.worker_cores,
            "hourly": str(self.hourly),
            "cost_bound": str(self.cost_bound),
            "price_source": self.price_source,
        }


def plan(spec: JobSpec, zones: list[str] | None = None) -> Plan:
    """Zones default to the region's first three, which every region has."""
    zones = zones or [f"{spec.region}{letter}" for letter in "abc"]
    market = "on-demand" if spec.spot == "on-demand" else "spot"
    candidates = []
    for itype in matching_types(spec.instance_types):
        for zone in zones:
            count = math.ceil(spec.cores / itype.vcpus)
            price = hourly_price(itype.name, zone, market)
            candidates.append((price * count, count, itype.name, zone, itype.vcpus, price))
    _, count, name, zone, vcpus, price = min(candidates)
    scheduler_type = spec.scheduler_instance_type
    hours = Decimal(int((spec.max_runtime + spec.grace).total_seconds())) / 3600
    return Plan(
        lines=(
            PlanLine(
                "scheduler",
                scheduler_type,
                zones[0],
                "on-demand",
                1,
                SNAPSHOT[scheduler_type].vcpus,
                hourly_price(scheduler_type, zones[0], "on-demand"),
            ),
            PlanLine("worker", name, zone, market, count, vcpus, price),
        ),
        max_runtime_hours=hours,
        price_source=SNAPSHOT_SOURCE,
    )
