"""What a cluster really cost: each instance's price at launch times its billed uptime.

EC2 bills Linux instances per second with a 60-second minimum, on-demand and spot alike. An
instance's price includes its public IPv4 address ($0.005/h, see burst.catalog), billed here
over the instance's own seconds: AWS bills the address for the hours it is held, which is the
instance's lifetime.
"""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_CEILING, Decimal
from typing import TYPE_CHECKING

from burst.money import MICRODOLLAR

if TYPE_CHECKING:  # an annotation only: cost sits below the cloud layer
    from burst.cloud.base import InstanceRecord

MINIMUM_BILLED_SECONDS = 60


def billed_seconds(record: InstanceRecord, now: datetime) -> int:
    """Until termination, or until now for an instance still running."""
    ended = record.end_time or now
    return max(MINIMUM_BILLED_SECONDS, int((ended - record.launch_time).total_seconds()))


def instance_cost(record: InstanceRecord, now: datetime) -> Decimal | None:
    if record.hourly is None:
        return None
    cost = record.hourly * billed_seconds(record, now) / 3600
    return cost.quantize(MICRODOLLAR, ROUND_CEILING)


def cost_report(instances: list[InstanceRecord], plan: dict, now: datetime) -> dict:
    """The real cost next to the plan's estimate (`plan` as Plan.to_dict gives it, which a
    detached job keeps in its bucket), each saying where its prices came from."""
    costs = [instance_cost(r, now) for r in instances]
    known = [c for c in costs if c is not None]
    return {
        "actual": str(sum(known, Decimal(0))),
        "actual_complete": len(known) == len(costs),  # False if a price was unknown
        "still_running": sum(1 for r in instances if r.end_time is None),
        "planned_hourly": plan["hourly"],
        # Within the hourly prices above (and so within `actual`): the public IPv4 addresses
        # and the root volumes.
        "public_ipv4": plan.get("public_ipv4", {"addresses": 0, "hourly": "0"}),
        "root_volumes": plan.get("root_volumes", {"volumes": 0, "hourly": "0"}),
        "launched_hourly": str(sum((r.hourly or Decimal(0) for r in instances), Decimal(0))),
        "cost_bound": plan["cost_bound"],
        "price_source": plan["price_source"],
        "billing": f"per second, {MINIMUM_BILLED_SECONDS} s minimum",
    }
