"""The manifest's record of lost and replaced workers, one shape for `burst run`'s
BurstCluster and a detached job's `burst wait`: each interruption, each replacement launched
for the interruptions not yet replaced, when it rejoined, and what it cost."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from burst.cloud.base import Fulfilment, InstanceRecord
from burst.cost import instance_cost


def interruption(record: InstanceRecord, reason: str, when: datetime) -> dict:
    """A worker lost (its instance, pool and cores), not replaced yet."""
    return {
        "instance_id": record.instance_id,
        "reason": reason,
        "time": when.isoformat(timespec="milliseconds"),
        "instance_type": record.instance_type,
        "zone": record.zone,
        "market": record.market,
        "vcpus": record.vcpus,
        "replaced_by": None,
    }


def replacement(
    interruptions: list[dict], replacements: list[dict], got: Fulfilment, when: datetime
) -> None:
    """Record what `got` launched as the replacement of every interruption not replaced yet."""
    pending = [i for i in interruptions if i["replaced_by"] is None]
    for lost in pending:
        lost["replaced_by"] = len(replacements)
    replacements.append(
        {
            "for": [i["instance_id"] for i in pending],
            "cores_lost": sum(i["vcpus"] for i in pending),
            "instances": [r.instance_id for r in got.records],
            "cores": got.cores,
            "pools": sorted({f"{r.instance_type} {r.zone} {r.market}" for r in got.records}),
            "hourly": str(sum((r.hourly or Decimal(0) for r in got.records), Decimal(0))),
            "launched": when.isoformat(timespec="milliseconds"),
            "rejoined": None,
            "seconds_to_rejoin": None,
        }
    )


def rejoined(
    interruptions: list[dict], replacements: list[dict], joined: set[str], now: datetime
) -> list[dict]:
    """Mark the replacements whose workers have all joined: the seconds from the first
    interruption they replace. Returns those just marked."""
    marked = []
    for done in replacements:
        if done["rejoined"] is None and set(done["instances"]) <= joined:
            noticed = min(
                datetime.fromisoformat(i["time"])
                for i in interruptions
                if i["instance_id"] in done["for"]
            )
            done["rejoined"] = now.isoformat(timespec="seconds")
            done["seconds_to_rejoin"] = round((now - noticed).total_seconds(), 1)
            marked.append(done)
    return marked


def record(
    target_cores: int,
    scaling: list[dict],
    interruptions: list[dict],
    replacements: list[dict],
    instances: dict[str, InstanceRecord],
    now: datetime,
) -> dict:
    """The manifest's `elasticity`: each replacement with its cost so far, and their total."""
    priced = []
    for done in replacements:
        launched = [instances[i] for i in done["instances"] if i in instances]
        cost = sum((instance_cost(r, now) or Decimal(0) for r in launched), Decimal(0))
        priced.append({**done, "cost": str(cost)})
    return {
        "target_cores": target_cores,
        "scaling": list(scaling),
        "interruptions": list(interruptions),
        "replacements": priced,
        "replacement_cost": str(sum((Decimal(r["cost"]) for r in priced), Decimal(0))),
    }
