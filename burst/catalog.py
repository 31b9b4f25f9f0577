"""Instance types and their prices.

The bundled snapshot holds public on-demand list prices (us-east-1, Linux) for the types the
walking skeleton plans with; the spot model gives each (type, zone) pool a stable discount so
sandbox plans are deterministic. The capacity issue replaces this with live EC2 prices.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import Decimal

SNAPSHOT_DATE = "2026-11-01"
# The regions the sandbox cloud hosts (its hypervisor boots instances there).
SANDBOX_REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
SNAPSHOT_SOURCE = f"snapshot {SNAPSHOT_DATE} (public on-demand list prices, us-east-1)"


@dataclass(frozen=True)
class InstanceType:
    name: str
    vcpus: int
    memory_gib: float
    architecture: str
    on_demand_hourly: Decimal

    @property
    def family(self) -> str:
        return self.name.split(".")[0]


def _types(rows: list[tuple[str, int, float, str, str]]) -> dict[str, InstanceType]:
    return {r[0]: InstanceType(r[0], r[1], r[2], r[3], Decimal(r[4])) for r in rows}


SNAPSHOT: dict[str, InstanceType] = _types(
    [
        ("c5.large", 2, 4, "x86_64", "0.085"),
        ("c5.xlarge", 4, 8, "x86_64", "0.17"),
        ("c5.2xlarge", 8, 16, "x86_64", "0.34"),
        ("c5.4xlarge", 16, 32, "x86_64", "0.68"),
        ("c6i.large", 2, 4, "x86_64", "0.085"),
        ("c6i.xlarge", 4, 8, "x86_64", "0.17"),
        ("c6i.2xlarge", 8, 16, "x86_64", "0.34"),
        ("c6i.4xlarge", 16, 32, "x86_64", "0.68"),
        ("m5.large", 2, 8, "x86_64", "0.096"),
        ("m5.xlarge", 4, 16, "x86_64", "0.192"),
        ("m5.2xlarge", 8, 32, "x86_64", "0.384"),
        ("m5.4xlarge", 16, 64, "x86_64", "0.768"),
    ]
)


def families() -> set[str]:
    return {t.family for t in SNAPSHOT.values()}


def matching_types(patterns: list[str]) -> list[InstanceType]:
    """Exact types or whole families, in the snapshot's order."""
    wanted = set(patterns)
    return [t for t in SNAPSHOT.values() if t.name in wanted or t.family in wanted]


def spot_discount(instance_type: str, zone: str) -> Decimal:
    """A stable 55-75 % discount per pool, like typical spot savings, so plans are repeatable."""
    digest = hashlib.sha256(f"{instance_type}/{zone}".encode()).digest()
    return Decimal(55 + digest[0] % 21) / 100


def hourly_price(instance_type: str, zone: str, market: str) -> Decimal:
    on_demand = SNAPSHOT[instance_type].on_demand_hourly
    if market == "on-demand":
        return on_demand
    return (on_demand * (1 - spot_discount(instance_type, zone))).quantize(Decimal("0.0001"))
