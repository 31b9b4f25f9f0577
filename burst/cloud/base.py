"""What a provider returns: plain records the runner and the manifest can rely on."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal

from burst.errors import CloudError

__all__ = ["CloudError"]


TAG_CLUSTER = "burst:cluster"
TAG_JOB = "burst:job"
TAG_ROLE = "burst:role"
TAG_DEADLINE = "burst:deadline"
TAG_MANAGED = "burst:managed"
TAG_REGION = "burst:region"  # on global resources (IAM) only


def tag_dict(tags: list[dict] | None) -> dict[str, str]:
    """AWS's [{"Key": k, "Value": v}, ...] as {k: v}."""
    return {t["Key"]: t["Value"] for t in tags or []}


@dataclass
class InstanceRecord:
    instance_id: str
    role: str
    instance_type: str
    zone: str
    market: str
    state: str
    launch_time: datetime
    vcpus: int = 0
    end_time: datetime | None = None
    hourly: Decimal | None = None  # the price it was launched at

    def to_dict(self) -> dict:
        data = asdict(self)
        data["launch_time"] = self.launch_time.isoformat()
        data["end_time"] = self.end_time.isoformat() if self.end_time else None
        data["hourly"] = str(self.hourly) if self.hourly is not None else None
        return data


@dataclass(frozen=True)
class PoolError:
    """Why one capacity pool (type x zone x market) gave nothing, as EC2 said it."""

    instance_type: str
    zone: str
    market: str
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.instance_type} in {self.zone} ({self.market}): {self.code} {self.message}"


@dataclass
class Fulfilment:
    """What a capacity request got, and what each failing pool said."""

    records: list[InstanceRecord] = field(default_factory=list)
    errors: list[PoolError] = field(default_factory=list)
    fleet_ids: list[str] = field(default_factory=list)

    @property
    def cores(self) -> int:
        return sum(r.vcpus for r in self.records)

    def extend(self, other: Fulfilment) -> None:
        self.records += other.records
        self.errors += other.errors
        self.fleet_ids += other.fleet_ids


@dataclass
class TeardownReport:
    terminated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return not self.leftovers and not self.errors

    def to_dict(self) -> dict:
        return {**asdict(self), "verified": self.verified}
