"""The provider seam: the operations the upper layers use, and the plain records they exchange.

Modelled on SkyPilot's `sky/provision/`: a provider is a few plain operations on plain records,
so the policy above it (re-plans, fallback, budgets, node checks) is tested against a fake in
milliseconds, and the sandbox proves the real path end to end. A provider raises only burst's
errors (`CloudError`), never its SDK's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from burst.errors import CloudError

if TYPE_CHECKING:
    from burst.storage import Bucket

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


@dataclass(frozen=True)
class ClusterIdentity:
    """Names and tags shared by every resource of one cluster."""

    cluster_id: str
    job_id: str
    deadline: datetime

    @property
    def parameter_path(self) -> str:
        return f"/burst/{self.cluster_id}"

    @property
    def name(self) -> str:
        return f"burst-{self.cluster_id}"

    def tags(self, role: str) -> list[dict[str, str]]:
        return [
            {"Key": TAG_CLUSTER, "Value": self.cluster_id},
            {"Key": TAG_JOB, "Value": self.job_id},
            {"Key": TAG_ROLE, "Value": role},
            {"Key": TAG_DEADLINE, "Value": self.deadline.isoformat(timespec="seconds")},
            {"Key": TAG_MANAGED, "Value": "true"},
            {"Key": "Name", "Value": f"{self.name}-{role}"},
        ]

    def tag_specifications(self, role: str, *resource_types: str) -> list[dict[str, Any]]:
        return [{"ResourceType": r, "Tags": self.tags(role)} for r in resource_types]


@dataclass(frozen=True)
class NetworkRequest:
    """Where a cluster's nodes go: its subnets (none: the default VPC's, one per zone) and
    which nodes get a public IPv4 address (all, the scheduler only, or none)."""

    subnets: tuple[str, ...] = ()
    public_ip: str = "all"

    def public(self, role: str) -> bool:
        return self.public_ip == "all" or (self.public_ip == "scheduler" and role == "scheduler")


@dataclass(frozen=True)
class Network:
    """A network resolved in the cloud: the VPC and a subnet per zone."""

    vpc_id: str
    subnets: dict[str, str]  # zone -> subnet id


@dataclass(frozen=True)
class NodeEnvironment:
    """Where the nodes of one cluster live: created once, before any instance."""

    vpc_id: str
    subnets: dict[str, str]  # zone -> subnet id
    security_group_id: str
    instance_profile: str  # the scheduler's (and every node's, when no worker_profile)
    images: dict[str, str]  # architecture -> machine image id
    worker_profile: str = ""  # the workers' own, with fewer rights than the scheduler's
    disk_gb: int | None = None  # each node's root volume; None: the image's default
    # Which nodes get a public IPv4 address, set on each node's network interface; None: the
    # subnet's own default (the default VPC's subnets give every node one).
    network: NetworkRequest | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> NodeEnvironment:
        network = data.get("network")
        return cls(
            **{
                **data,
                "network": None
                if network is None
                else NetworkRequest(tuple(network["subnets"]), network["public_ip"]),
            }
        )


@dataclass(frozen=True)
class LaunchRequest:
    """One capacity pool to ask (type x zone x market), with one instance's vCPUs and price."""

    instance_type: str
    zone: str
    market: str  # "spot" or "on-demand"
    vcpus: int
    hourly: Decimal  # the node's price: the instance, its public IPv4 address, its root volume
    role: str = "worker"
    ipv4_hourly: Decimal = Decimal(0)  # the public IPv4 address's part of `hourly`
    disk_hourly: Decimal = Decimal(0)  # the root volume's part of `hourly`

    @property
    def instance_hourly(self) -> Decimal:
        """The instance's own price: what EC2 holds to a fleet's MaxTotalPrice."""
        return self.hourly - self.ipv4_hourly - self.disk_hourly

    @property
    def pool(self) -> tuple[str, str, str]:
        return (self.instance_type, self.zone, self.market)


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
    private_ip: str | None = None  # where the other nodes reach it

    def to_dict(self) -> dict:
        data = asdict(self)
        data["launch_time"] = self.launch_time.isoformat()
        data["end_time"] = self.end_time.isoformat() if self.end_time else None
        data["hourly"] = str(self.hourly) if self.hourly is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> InstanceRecord:
        return cls(
            **{
                **data,
                "launch_time": datetime.fromisoformat(data["launch_time"]),
                "end_time": datetime.fromisoformat(data["end_time"])
                if data.get("end_time")
                else None,
                "hourly": Decimal(data["hourly"]) if data.get("hourly") else None,
            }
        )


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


# EC2's per-region vCPU quotas of the standard families (A, C, D, H, I, M, R, T, Z), by the
# market each bounds: https://docs.aws.amazon.com/ec2/latest/instancetypes/ec2-instance-quotas.html
VCPU_QUOTAS = {"on-demand": "L-1216C47A", "spot": "L-34B43A08"}
STANDARD_FAMILIES = frozenset("acdhimrtz")


def standard_family(instance_type: str) -> bool:
    """Does this type count against the standard vCPU quotas (c5, m7g, r6i, ...)?"""
    return instance_type[:1].lower() in STANDARD_FAMILIES


@dataclass(frozen=True)
class VcpuQuota:
    """One market's vCPU quota in a region and what already uses it."""

    market: str  # "spot" or "on-demand"
    code: str  # the Service Quotas code, L-34B43A08 / L-1216C47A
    limit: float | None  # None: the quota could not be read
    in_use: int  # vCPUs of the region's pending and running instances in that market


@dataclass
class Remnant:
    """One burst-managed resource found in a region, for `burst gc`."""

    resource: str  # "instance i-0abc (running)", "bucket burst-...", ...
    tags: dict[str, str]
    created: datetime | None = None
    running: bool = False  # an instance pending or running


class Provider(Protocol):
    """What the layers above the cloud call. Every method raises CloudError, nothing else."""

    region: str
    scheduler_port: int  # 0: any free port (the sandbox, where nodes share one host)
    dashboard_port: int

    def prepare(
        self,
        ident: ClusterIdentity,
        zones: list[str],
        client_cidr: str | Sequence[str],
        node_secret: dict[str, dict[str, str]],
        architectures: set[str] = ...,
        read_objects: list[str] | None = None,
        network: NetworkRequest | None = None,
    ) -> NodeEnvironment:
        """Network, node role, bucket, secret and images of a cluster; the scheduler's port
        is opened to `client_cidr` (one CIDR or several)."""

    def network(self, subnets: Sequence[str] = (), zones: Sequence[str] = ()) -> Network:
        """The VPC and a subnet per zone: of the given subnets (which must exist and share
        one VPC), else of the default VPC in `zones` (all the region's when empty)."""

    def launch_template(
        self, ident: ClusterIdentity, env: NodeEnvironment, user_data: str, architecture: str
    ) -> str:
        """The workers' launch template; returns its id."""

    def fleet_chunks(self, cores: int, vcpus: int) -> list[int]:
        """How one pool's `cores` split into fleets within the cloud's per-fleet limits."""

    def launch_fleet(
        self,
        ident: ClusterIdentity,
        env: NodeEnvironment,
        template_id: str,
        request: LaunchRequest,
        cores: int,
        max_hourly: Decimal | None = None,
    ) -> Fulfilment:
        """Ask one pool for `cores` vCPUs, never spending above `max_hourly`."""

    def launch_instance(
        self, ident: ClusterIdentity, env: NodeEnvironment, request: LaunchRequest, user_data: str
    ) -> InstanceRecord:
        """One on-demand instance (the scheduler)."""

    def instances(
        self, ident: ClusterIdentity, states: list[str] | None = None
    ) -> list[InstanceRecord]:
        """The cluster's instances, found by tag, optionally in some states only."""

    def terminate(self, ident: ClusterIdentity, instance_ids: list[str]) -> list[str]:
        """Terminate some of the cluster's instances (found by its tag); returns the ids now
        ended or ending."""

    def scheduler_address(self, ident: ClusterIdentity) -> dict | None:
        """What the scheduler published once it listens; None until then."""

    def node_failures(self, ident: ClusterIdentity) -> list[str]:
        """Messages of nodes that gave up before joining."""

    def bucket(self, ident: ClusterIdentity) -> Bucket:
        """The cluster's storage for job code, inputs and task outputs."""

    def teardown(
        self, ident: ClusterIdentity, wait: float = 600, instance_ids: Sequence[str] = ()
    ) -> TeardownReport:
        """Delete everything of the cluster, found by tag (instances also by the ids the
        caller recorded), then verify nothing is left."""

    def leftovers(self, ident: ClusterIdentity) -> list[str]:
        """Everything of the cluster that still exists."""

    def survey(self) -> list[Remnant]:
        """Every burst-managed resource in the region (for gc)."""

    def account(self) -> str:
        """Who the credentials are: the first call that fails without them."""

    def zones(self) -> list[str]:
        """The region's available zones."""

    def offered(self, instance_types: set[str], zones: set[str]) -> set[tuple[str, str]]:
        """Which (instance type, zone) pairs the region offers, of those asked about."""

    def vcpu_quotas(self) -> list[VcpuQuota]:
        """The standard vCPU quotas of each market, with what uses them now."""
