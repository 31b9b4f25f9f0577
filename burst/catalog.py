"""Instance types, the pools they run in and what an hour of them costs.

An *offer* is one pool (instance type x availability zone x market) with its price per hour
and where that price came from. Offers come from two places:

- the bundled **snapshot**: public on-demand Linux list prices for us-east-1 (dated
  `SNAPSHOT_DATE`), other regions through a documented per-region, per-family multiplier
  table (`REGION_MULTIPLIERS`), and for spot a stable per-pool discount model (55-75 %, from a
  hash of the pool's name) so that sandbox and offline plans are deterministic;
- the **live** EC2 APIs (`live_offers`): the types' shapes from `describe_instance_types`, the
  zones that offer them from `describe_instance_type_offerings`, and the latest spot price per
  type and zone from `describe_spot_price_history`; on-demand prices still come from the
  snapshot (EC2 has no on-demand price API; the Pricing API is a separate service).

Every price carries its source, so every cost figure can say which it used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from typing import Any

SNAPSHOT_DATE = "2026-11-01"
# The regions the sandbox cloud hosts (its hypervisor boots instances there).
SANDBOX_REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
ARCHITECTURES = ("x86_64", "arm64")
MARKETS = ("spot", "on-demand")

# Every public IPv4 address, an instance's included, is billed $0.005 per hour since
# February 2024, in every region: https://aws.amazon.com/vpc/pricing/ ("Public IPv4 address").
PUBLIC_IPV4_HOURLY = Decimal("0.005")


# Every node's root volume is gp3 (burst.cloud.aws), billed per GB-month while it exists, per
# second with a 60 s minimum like the instance: https://aws.amazon.com/ebs/pricing/. List
# prices per region (others as us-east-1); an hour is 1/730 of a month, as AWS converts them.
GP3_GB_MONTH = {
    "us-east-1": Decimal("0.08"),
    "us-west-2": Decimal("0.08"),
    "eu-west-1": Decimal("0.088"),
}
HOURS_PER_MONTH = 730
IMAGE_ROOT_GB = 8  # Amazon Linux 2023's root volume, when the spec sets no disk_gb


def root_volume_hourly(disk_gb: int | None, region: str) -> Decimal:
    """What one node's root volume costs per hour, rounded up to a micro-dollar."""
    per_gb = GP3_GB_MONTH.get(region, GP3_GB_MONTH["us-east-1"]) / HOURS_PER_MONTH
    return (per_gb * (disk_gb or IMAGE_ROOT_GB)).quantize(Decimal("0.000001"), ROUND_CEILING)


def public_ipv4_hourly(public_ip: str, role: str) -> Decimal:
    """What one node's public IPv4 address costs per hour under the spec's
    `network.public_ip` (all, scheduler, none): the address's price, or nothing."""
    if public_ip == "all" or (public_ip == "scheduler" and role == "scheduler"):
        return PUBLIC_IPV4_HOURLY
    return Decimal(0)


# Sizes in the snapshot: name -> (vCPUs, multiple of the .large price). Prices are linear in
# size within a family (AWS list prices are), so one .large price per family suffices.
_SIZES = {
    "large": 2,
    "xlarge": 4,
    "2xlarge": 8,
    "4xlarge": 16,
    "8xlarge": 32,
    "9xlarge": 36,
    "12xlarge": 48,
    "16xlarge": 64,
    "18xlarge": 72,
    "24xlarge": 96,
}

# family -> (architecture, GiB of memory per vCPU, us-east-1 on-demand $/h of .large, sizes).
# Linux, shared tenancy, as published on the EC2 on-demand pricing page.
_FAMILIES: dict[str, tuple[str, int, str, tuple[str, ...]]] = {
    "c5": (
        "x86_64",
        2,
        "0.085",
        ("large", "xlarge", "2xlarge", "4xlarge", "9xlarge", "12xlarge", "18xlarge", "24xlarge"),
    ),
    "c6i": (
        "x86_64",
        2,
        "0.085",
        ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge"),
    ),
    "c7i": (
        "x86_64",
        2,
        "0.08925",
        ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge"),
    ),
    "c6a": (
        "x86_64",
        2,
        "0.0765",
        ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge"),
    ),
    "c7a": (
        "x86_64",
        2,
        "0.10264",
        ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge"),
    ),
    "m5": (
        "x86_64",
        4,
        "0.096",
        ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge"),
    ),
    "m6i": (
        "x86_64",
        4,
        "0.096",
        ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge"),
    ),
    "m7i": (
        "x86_64",
        4,
        "0.1008",
        ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge"),
    ),
    "m6a": (
        "x86_64",
        4,
        "0.0864",
        ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge"),
    ),
    "r6i": (
        "x86_64",
        8,
        "0.126",
        ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge"),
    ),
    "r7i": (
        "x86_64",
        8,
        "0.1323",
        ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge"),
    ),
    "c7g": (
        "arm64",
        2,
        "0.0725",
        ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge"),
    ),
    "m7g": (
        "arm64",
        4,
        "0.0816",
        ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge"),
    ),
}

# On-demand list prices of other regions relative to us-east-1, per family class (the letter
# before the generation). An approximation, documented as such: us-west-2 (Oregon) lists the
# same prices as us-east-1 for these families; eu-west-1 (Ireland) lists c at about +13 %,
# m at about +11.5 % and r at about +12 % (e.g. c5.large $0.096, m5.large $0.107). Regions not
# in this table are priced as us-east-1, and their offers' source says so.
REGION_MULTIPLIERS: dict[str, dict[str, Decimal]] = {
    "us-east-1": {"c": Decimal("1"), "m": Decimal("1"), "r": Decimal("1")},
    "us-west-2": {"c": Decimal("1"), "m": Decimal("1"), "r": Decimal("1")},
    "eu-west-1": {"c": Decimal("1.13"), "m": Decimal("1.115"), "r": Decimal("1.12")},
}


@dataclass(frozen=True)
class InstanceType:
    name: str
    vcpus: int
    memory_gib: float
    architecture: str
    on_demand_hourly: Decimal  # us-east-1 list price

    @property
    def family(self) -> str:
        return self.name.split(".")[0]


def _tidy(price: Decimal) -> Decimal:
    """Drop trailing zeros without switching to exponent notation (10.0 -> 10, not 1E+1)."""
    return price.quantize(Decimal(1)) if price == price.to_integral() else price.normalize()


def _snapshot() -> dict[str, InstanceType]:
    types = {}
    for family, (arch, gib_per_vcpu, large, sizes) in _FAMILIES.items():
        for size in sizes:
            vcpus = _SIZES[size]
            price = _tidy(Decimal(large) * vcpus / 2)
            name = f"{family}.{size}"
            types[name] = InstanceType(name, vcpus, float(vcpus * gib_per_vcpu), arch, price)
    return types


SNAPSHOT: dict[str, InstanceType] = _snapshot()


@dataclass(frozen=True)
class Offer:
    """One pool: an instance type in one zone and market, at a price per instance-hour."""

    instance_type: str
    vcpus: int
    memory_gib: float
    architecture: str
    zone: str
    market: str  # "spot" or "on-demand"
    hourly: Decimal
    source: str

    @property
    def family(self) -> str:
        return self.instance_type.split(".")[0]

    @property
    def pool(self) -> tuple[str, str, str]:
        return (self.instance_type, self.zone, self.market)

    @property
    def memory_per_vcpu(self) -> float:
        return self.memory_gib / self.vcpus


def architecture_of(instance_type: str) -> str:
    """From the snapshot; otherwise AWS's naming (a `g` after the generation is Graviton)."""
    if instance_type in SNAPSHOT:
        return SNAPSHOT[instance_type].architecture
    family = instance_type.split(".")[0]
    return "arm64" if len(family) > 2 and "g" in family[2:] else "x86_64"


def families() -> set[str]:
    return {t.family for t in SNAPSHOT.values()}


def matching_types(patterns: Iterable[str]) -> list[InstanceType]:
    """Exact types or whole families, in the snapshot's order."""
    wanted = set(patterns)
    return [t for t in SNAPSHOT.values() if t.name in wanted or t.family in wanted]


def matches(instance_type: str, patterns: Iterable[str]) -> bool:
    """Is this type named by one of the patterns (an exact type or its family)?"""
    wanted = set(patterns)
    return instance_type in wanted or instance_type.split(".")[0] in wanted


def region_of(zone: str) -> str:
    """'us-east-1a' -> 'us-east-1' (zone names are the region and one letter)."""
    return zone[:-1] if zone and zone[-1].isalpha() else zone


def region_multiplier(instance_type: str, region: str) -> Decimal:
    table = REGION_MULTIPLIERS.get(region, REGION_MULTIPLIERS["us-east-1"])
    return table.get(instance_type[0], Decimal(1))


# On AWS the modelled discount stands in where no live spot price was read: it must not pass
# for one (nor for the sandbox's).
SPOT_MODEL = " x a modelled 55-75% spot discount, not a live price"


def snapshot_source(region: str, market: str = "on-demand") -> str:
    """Where a snapshot price comes from, for the manifest and the plan table."""
    if region == "us-east-1":
        where = "us-east-1"
    elif region in REGION_MULTIPLIERS:
        where = f"us-east-1 x the {region} multiplier"
    else:
        where = f"us-east-1; no snapshot for {region}"
    source = f"snapshot {SNAPSHOT_DATE} on-demand list price ({where})"
    return source + SPOT_MODEL if market == "spot" else source


def spot_discount(instance_type: str, zone: str) -> Decimal:
    """A stable 55-75 % discount per pool, like typical spot savings, so plans are repeatable."""
    digest = hashlib.sha256(f"{instance_type}/{zone}".encode()).digest()
    return Decimal(55 + digest[0] % 21) / 100


def on_demand_price(instance_type: str, region: str) -> Decimal:
    price = SNAPSHOT[instance_type].on_demand_hourly * region_multiplier(instance_type, region)
    return _tidy(price.quantize(Decimal("0.00001"), ROUND_HALF_UP))


def hourly_price(instance_type: str, zone: str, market: str) -> Decimal:
    """The snapshot price of one instance-hour in a pool (the sandbox's spot model for spot)."""
    on_demand = on_demand_price(instance_type, region_of(zone))
    if market == "on-demand":
        return on_demand
    return (on_demand * (1 - spot_discount(instance_type, zone))).quantize(Decimal("0.0001"))


def default_zones(region: str) -> list[str]:
    """The region's first three zones, which every region has."""
    return [f"{region}{letter}" for letter in "abc"]


def snapshot_offers(
    region: str,
    zones: Iterable[str] | None = None,
    types: Iterable[str] | None = None,
    markets: Iterable[str] = MARKETS,
) -> list[Offer]:
    """Offers priced from the snapshot: every type (or those the patterns name) in every zone
    (default: the region's first three) and market."""
    zones = list(zones) if zones is not None else default_zones(region)
    chosen = matching_types(types) if types is not None else list(SNAPSHOT.values())
    offers = []
    for itype in chosen:
        for zone in zones:
            for market in markets:
                source = snapshot_source(region_of(zone), market)
                offers.append(
                    Offer(
                        itype.name,
                        itype.vcpus,
                        itype.memory_gib,
                        itype.architecture,
                        zone,
                        market,
                        hourly_price(itype.name, zone, market),
                        source,
                    )
                )
    return offers


# --------------------------------------------------------------------------- live (AWS)


def _pages(ec2: Any, operation: str, key: str, **request: Any) -> list[dict]:
    return [item for page in ec2.get_paginator(operation).paginate(**request) for item in page[key]]


def _architecture(described: dict) -> str | None:
    supported = described.get("ProcessorInfo", {}).get("SupportedArchitectures", [])
    return next((a for a in ARCHITECTURES if a in supported), None)


def live_offers(
    ec2: Any,
    region: str,
    types: Iterable[str],
    now: datetime | None = None,
) -> list[Offer]:
    """Offers from the EC2 APIs of `region` for the types the patterns name (families or exact
    types known to the snapshot): one on-demand offer per zone that offers the type, priced
    from the snapshot, and one spot offer per zone with the latest Linux/UNIX spot price.

    `ec2` is a boto3 EC2 client for the region. Pools without spot price history get no spot
    offer (burst does not invent a live spot price)."""
    names = [t.name for t in matching_types(types)]
    if not names:
        return []
    shapes: dict[str, dict] = {}
    for start in range(0, len(names), 100):  # DescribeInstanceTypes takes up to 100 names
        chunk = names[start : start + 100]
        for described in _pages(
            ec2, "describe_instance_types", "InstanceTypes", InstanceTypes=chunk
        ):
            shapes[described["InstanceType"]] = described
    offered = _pages(
        ec2,
        "describe_instance_type_offerings",
        "InstanceTypeOfferings",
        LocationType="availability-zone",
        Filters=[{"Name": "instance-type", "Values": names}],
    )
    pools = sorted(
        {(o["InstanceType"], o["Location"]) for o in offered if o["InstanceType"] in shapes}
    )
    latest: dict[tuple[str, str], dict] = {}
    for start in range(0, len(names), 100):
        history = _pages(
            ec2,
            "describe_spot_price_history",
            "SpotPriceHistory",
            InstanceTypes=names[start : start + 100],
            ProductDescriptions=["Linux/UNIX"],
            StartTime=now or datetime.now(UTC),  # the price in effect now, per type and zone
        )
        for entry in history:
            if not entry.get("ProductDescription", "Linux/UNIX").startswith("Linux/UNIX"):
                continue
            key = (entry["InstanceType"], entry["AvailabilityZone"])
            if key not in latest or entry["Timestamp"] > latest[key]["Timestamp"]:
                latest[key] = entry
    offers = []
    for name, zone in pools:
        described = shapes[name]
        architecture = _architecture(described)
        if architecture is None:
            continue
        vcpus = int(described["VCpuInfo"]["DefaultVCpus"])
        memory = described["MemoryInfo"]["SizeInMiB"] / 1024
        usage = described.get("SupportedUsageClasses", list(MARKETS))
        shape = (name, vcpus, memory, architecture, zone)
        if "on-demand" in usage:
            source = snapshot_source(region)
            offers.append(Offer(*shape, "on-demand", on_demand_price(name, region), source))
        spot = latest.get((name, zone))
        if spot is not None and "spot" in usage:
            stamp = spot["Timestamp"]
            if isinstance(stamp, datetime):
                stamp = stamp.astimezone(UTC).isoformat(timespec="seconds")
            source = f"live spot price history {stamp}"
            offers.append(Offer(*shape, "spot", _tidy(Decimal(spot["SpotPrice"])), source))
    return offers


def offers_for(spec, warn: Callable[[str], None] = lambda note: None) -> list[Offer] | None:
    """Live offers for a `cloud: aws` spec when credentials exist; None (plan with the
    snapshot) for the sandbox, or when AWS cannot be asked, saying why through `warn`."""
    if spec.cloud != "aws":
        return None
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        session = boto3.Session()
        if session.get_credentials() is None:
            warn("no AWS credentials: planning with the snapshot's prices")
            return None
        # Few, short attempts: with no network, the plan falls back in seconds, not minutes.
        config = Config(connect_timeout=5, read_timeout=20, retries={"max_attempts": 3})
        ec2 = session.client("ec2", region_name=spec.region, config=config)
        types = [*spec.instance_types, spec.scheduler_instance_type]
        offers = live_offers(ec2, spec.region, types)
        if spec.network.subnets:  # the plan keeps to the zones of the spec's subnets
            found = ec2.describe_subnets(SubnetIds=list(spec.network.subnets))["Subnets"]
            zones = {subnet["AvailabilityZone"] for subnet in found}
            offers = [o for o in offers if o.zone in zones]
        return offers or None
    except (BotoCoreError, ClientError) as error:
        warn(f"live prices unavailable ({error}): planning with the snapshot's prices")
        return None
