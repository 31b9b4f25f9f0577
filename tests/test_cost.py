"""Real cost: price at launch x billed uptime (per second, 60 s minimum)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from burst.cloud.base import InstanceRecord
from burst.cost import billed_seconds, cost_report, instance_cost
from burst.plan import plan
from burst.spec import parse_spec

START = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def record(seconds: float | None, hourly: str | None = "0.36") -> InstanceRecord:
    return InstanceRecord(
        instance_id="i-1", role="worker", instance_type="c5.2xlarge", zone="us-east-1a",
        market="spot", state="terminated", launch_time=START, vcpus=8,
        end_time=None if seconds is None else START + timedelta(seconds=seconds),
        hourly=None if hourly is None else Decimal(hourly),
    )


def test_a_short_life_is_billed_one_minute():
    assert billed_seconds(record(5), START) == 60
    assert instance_cost(record(5), START) == Decimal("0.006")


def test_billing_is_per_second_after_the_minimum():
    assert billed_seconds(record(7200.9), START) == 7200
    assert instance_cost(record(7200), START) == Decimal("0.72")
    assert instance_cost(record(61), START) == Decimal("0.0061")


def test_a_running_instance_is_billed_until_now():
    assert instance_cost(record(None), START + timedelta(hours=1)) == Decimal("0.36")


def test_report_totals_and_flags_unknown_prices():
    capacity_plan = plan(parse_spec({"name": "c", "cores": 8, "max_runtime": "1h"}))
    report = cost_report([record(3600), record(3600, None)], capacity_plan.to_dict(), START)
    assert Decimal(report["actual"]) == Decimal("0.36")
    assert report["actual_complete"] is False
    assert report["still_running"] == 0
    assert report["cost_bound"] == str(capacity_plan.cost_bound)
    assert "snapshot" in report["price_source"]
