"""What a cluster and a job report as they go: small records passed to `on_event`.

Each event reads as one log line (`str(event)`), which is what `BurstCluster.get_logs()` keeps;
a display matches on the type:

    def show(event):
        match event:
            case TasksProgress(done=done, total=total):
                print(f"{done}/{total}")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from burst.cloud.base import InstanceRecord, PoolError, TeardownReport
from burst.plan import Plan


@dataclass(frozen=True)
class Event:
    def __str__(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class Planned(Event):
    """The capacity plan, within budget; nothing is launched yet."""

    plan: Plan
    cluster_id: str
    job_id: str
    cluster: Any = field(repr=False, compare=False)  # the BurstCluster, even if it fails later

    def __str__(self) -> str:
        return (
            f"planned {self.plan.worker_cores} worker cores on {self.plan.instances} instances, "
            f"${self.plan.hourly:.4f}/h (cluster {self.cluster_id}, job {self.job_id})"
        )


@dataclass(frozen=True)
class SandboxUsed(Event):
    endpoint: str
    private: bool  # started for this cluster alone, stopped with it

    def __str__(self) -> str:
        kind = "private, for this run" if self.private else "running"
        return f"sandbox cloud ({kind}) at {self.endpoint}"


@dataclass(frozen=True)
class Launched(Event):
    role: str
    records: tuple[InstanceRecord, ...]

    def __str__(self) -> str:
        return f"launched {len(self.records)} {self.role} instance(s)"


@dataclass(frozen=True)
class CapacityRefused(Event):
    """One pool that EC2 could not fill; re-plans go elsewhere."""

    error: PoolError

    def __str__(self) -> str:
        return f"no capacity: {self.error}"


@dataclass(frozen=True)
class CapacityShort(Event):
    """Fewer cores than asked came up, but at least min_cores: the job goes on with them."""

    cores: int
    wanted: int

    def __str__(self) -> str:
        return f"only {self.cores} of {self.wanted} cores came up (at least min_cores)"


@dataclass(frozen=True)
class SchedulerUp(Event):
    address: str
    dashboard: str | None

    def __str__(self) -> str:
        return f"scheduler {self.address}  dashboard {self.dashboard}"


@dataclass(frozen=True)
class WorkersJoined(Event):
    joined: int
    expected: int

    def __str__(self) -> str:
        return f"{self.joined} of {self.expected} workers joined"


@dataclass(frozen=True)
class TasksProgress(Event):
    done: int
    failed: int
    total: int

    def __str__(self) -> str:
        return f"tasks: {self.done} done, {self.failed} failed of {self.total}"


@dataclass(frozen=True)
class TearingDown(Event):
    def __str__(self) -> str:
        return "tearing down"


@dataclass(frozen=True)
class TornDown(Event):
    report: TeardownReport

    def __str__(self) -> str:
        if self.report.verified:
            return "torn down: verified, nothing left"
        return f"torn down, NOT verified: {self.report.leftovers} {self.report.errors}"


@dataclass(frozen=True)
class ManifestWritten(Event):
    path: Path
    manifest: dict = field(repr=False)

    def __str__(self) -> str:
        return f"manifest written to {self.path}"


EventHandler = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The handler when none is given."""
