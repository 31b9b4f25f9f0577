"""Tests for capacity planning (burst/plan.py) and the price catalog (burst/catalog.py)."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from burst import catalog
from burst.catalog import (
    SNAPSHOT,
    SNAPSHOT_SOURCE,
    families,
    hourly_price,
    matching_types,
    spot_discount,
)
from burst.plan import Plan, PlanLine, plan
from burst.spec import JobSpec, parse_spec

CORES = [1, 7, 8, 9, 100, 1000]
POLICIES = ["spot", "spot-with-fallback", "on-demand"]
PATTERNS = sorted(families()) + sorted(SNAPSHOT)


def make_spec(**fields: Any) -> JobSpec:
    return parse_spec({"cores": 8, **fields})


def default_zones(spec: JobSpec) -> list[str]:
    return [f"{spec.region}{letter}" for letter in "abc"]


def candidate_pools(spec: JobSpec, zones: list[str] | None = None) -> list[dict[str, Any]]:
    """Every single (type, zone) worker pool that covers the cores, priced from the catalog."""
    market = "on-demand" if spec.spot == "on-demand" else "spot"
    pools = []
    for itype in matching_types(spec.instance_types):
        for zone in zones or default_zones(spec):
            count = math.ceil(spec.cores / itype.vcpus)
            price = hourly_price(itype.name, zone, market)
            pools.append({"type": itype.name, "zone": zone, "count": count, "total": price * count})
    return pools


def cheapest_total(spec: JobSpec, zones: list[str] | None = None) -> Decimal:
    return min(p["total"] for p in candidate_pools(spec, zones))


def worker(p: Plan) -> PlanLine:
    (line,) = p.workers
    return line


def scheduler(p: Plan) -> PlanLine:
    (line,) = [line for line in p.lines if line.role == "scheduler"]
    return line


def exact_cost(p: Plan, spec: JobSpec) -> Fraction:
    seconds = int((spec.max_runtime + spec.grace).total_seconds())
    return Fraction(p.hourly) * seconds / 3600


# --------------------------------------------------------------------------- catalog


def test_snapshot_entries_are_consistent() -> None:
    for name, itype in SNAPSHOT.items():
        assert itype.name == name
        assert itype.family == name.split(".")[0]
        assert itype.vcpus > 0
        assert isinstance(itype.on_demand_hourly, Decimal)
        assert itype.on_demand_hourly > 0


def test_families() -> None:
    assert families() == {"c5", "c6i", "m5"}


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        (["c5"], ["c5.large", "c5.xlarge", "c5.2xlarge", "c5.4xlarge"]),
        (["m5.xlarge"], ["m5.xlarge"]),
        (["m5.xlarge", "c5.large"], ["c5.large", "m5.xlarge"]),  # snapshot order
        (["c5", "c5.large"], ["c5.large", "c5.xlarge", "c5.2xlarge", "c5.4xlarge"]),
        (["z9"], []),
        ([], []),
    ],
)
def test_matching_types(patterns: list[str], expected: list[str]) -> None:
    assert [t.name for t in matching_types(patterns)] == expected


def test_matching_types_all_families_is_whole_snapshot() -> None:
    assert matching_types(sorted(families())) == list(SNAPSHOT.values())


@pytest.mark.parametrize("name", sorted(SNAPSHOT))
def test_on_demand_price_is_list_price(name: str) -> None:
    for zone in ("us-east-1a", "us-east-1b", "eu-west-2c"):
        assert hourly_price(name, zone, "on-demand") == SNAPSHOT[name].on_demand_hourly


@pytest.mark.parametrize("name", sorted(SNAPSHOT))
def test_spot_price_is_stable_and_below_on_demand(name: str) -> None:
    for zone in ("us-east-1a", "us-east-1b", "us-east-1c", "eu-west-2a"):
        spot = hourly_price(name, zone, "spot")
        assert isinstance(spot, Decimal)
        assert spot == hourly_price(name, zone, "spot")  # stable across calls
        assert 0 < spot < hourly_price(name, zone, "on-demand")
        assert spot == spot.quantize(Decimal("0.0001"))
        discount = spot_discount(name, zone)
        assert Decimal("0.55") <= discount <= Decimal("0.75")
        expected = SNAPSHOT[name].on_demand_hourly * (1 - discount)
        assert abs(spot - expected) <= Decimal("0.00005")


def test_spot_prices_differ_between_pools() -> None:
    # The model gives each (type, zone) pool its own discount: not one flat price.
    prices = {hourly_price("c5.xlarge", f"us-east-1{z}", "spot") for z in "abcdef"}
    assert len(prices) > 1


# --------------------------------------------------------------------------- plan shape


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("cores", CORES)
def test_plan_covers_the_cores(cores: int, policy: str) -> None:
    p = plan(make_spec(cores=cores, spot=policy))
    line = worker(p)
    assert p.worker_cores == line.count * line.vcpus >= cores
    # One pool of ceil(cores / vcpus) instances: never an instance more than needed.
    assert line.count == math.ceil(cores / line.vcpus)
    assert line.vcpus == SNAPSHOT[line.instance_type].vcpus


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("cores", CORES)
def test_worker_pool_is_cheapest(cores: int, policy: str) -> None:
    spec = make_spec(cores=cores, spot=policy)
    p = plan(spec)
    line = worker(p)
    pools = candidate_pools(spec)
    best = min(pool["total"] for pool in pools)
    assert line.total_hourly == best
    chosen = {"type": line.instance_type, "zone": line.zone, "count": line.count}
    cheapest = [{k: v for k, v in pool.items() if k != "total"} for pool in pools]
    cheapest = [c for c, pool in zip(cheapest, pools, strict=True) if pool["total"] == best]
    assert chosen in cheapest
    # Ties go to fewer instances.
    assert line.count == min(c["count"] for c in cheapest)


@pytest.mark.parametrize(
    "types", [["c5"], ["m5"], ["c6i.large"], ["m5.4xlarge", "c5.large"], ["c5", "m5.xlarge"]]
)
@pytest.mark.parametrize("cores", [1, 9, 100])
def test_worker_pool_respects_instance_types(types: list[str], cores: int) -> None:
    spec = make_spec(cores=cores, instance_types=types)
    line = worker(plan(spec))
    assert line.instance_type in {t.name for t in matching_types(types)}
    assert line.total_hourly == cheapest_total(spec)


def test_zones_default_to_first_three_of_region() -> None:
    spec = make_spec(region="eu-west-2", cloud="aws", cores=33)
    p = plan(spec)
    assert worker(p).zone in {"eu-west-2a", "eu-west-2b", "eu-west-2c"}
    assert scheduler(p).zone == "eu-west-2a"
    assert worker(p).total_hourly == cheapest_total(spec)


@pytest.mark.parametrize("zones", [["us-east-1d"], ["us-east-1f", "us-east-1e"], [], None])
def test_explicit_zones(zones: list[str] | None) -> None:
    spec = make_spec(cores=50)
    p = plan(spec, zones)
    usable = zones or default_zones(spec)
    assert worker(p).zone in usable
    assert scheduler(p).zone == usable[0]
    assert worker(p).total_hourly == cheapest_total(spec, usable)


@pytest.mark.parametrize("cores", CORES)
def test_on_demand_policy_prices(cores: int) -> None:
    spec = make_spec(cores=cores, spot="on-demand")
    p = plan(spec)
    for line in p.lines:
        assert line.market == "on-demand"
        assert line.hourly == SNAPSHOT[line.instance_type].on_demand_hourly


@pytest.mark.parametrize("policy", ["spot", "spot-with-fallback"])
@pytest.mark.parametrize("cores", CORES)
def test_spot_policies_plan_spot_workers(cores: int, policy: str) -> None:
    spec = make_spec(cores=cores, spot=policy)
    line = worker(plan(spec))
    assert line.market == "spot"
    assert line.hourly == hourly_price(line.instance_type, line.zone, "spot")
    assert line.hourly < SNAPSHOT[line.instance_type].on_demand_hourly


@pytest.mark.parametrize("cores", CORES)
def test_spot_plan_is_cheaper_than_on_demand(cores: int) -> None:
    spot = plan(make_spec(cores=cores, spot="spot"))
    on_demand = plan(make_spec(cores=cores, spot="on-demand"))
    assert worker(spot).total_hourly < worker(on_demand).total_hourly
    assert spot.hourly < on_demand.hourly


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("scheduler_type", ["m5.large", "c5.large", "m5.4xlarge"])
def test_scheduler_line(policy: str, scheduler_type: str) -> None:
    spec = make_spec(cores=20, spot=policy, scheduler_instance_type=scheduler_type)
    p = plan(spec)
    assert [line.role for line in p.lines] == ["scheduler", "worker"]
    line = scheduler(p)
    assert line.instance_type == spec.scheduler_instance_type == scheduler_type
    assert line.market == "on-demand"
    assert line.count == 1
    assert line.vcpus == SNAPSHOT[scheduler_type].vcpus
    assert line.hourly == SNAPSHOT[scheduler_type].on_demand_hourly
    # The scheduler is not a worker: its cores are not counted.
    assert p.worker_cores == worker(p).cores


def test_scheduler_type_outside_instance_types() -> None:
    spec = make_spec(cores=4, instance_types=["c5"], scheduler_instance_type="m5.xlarge")
    p = plan(spec)
    assert scheduler(p).instance_type == "m5.xlarge"
    assert worker(p).instance_type.startswith("c5.")


# --------------------------------------------------------------------------- money


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("cores", CORES)
def test_hourly_is_sum_of_lines(cores: int, policy: str) -> None:
    p = plan(make_spec(cores=cores, spot=policy))
    assert p.hourly == sum(line.hourly * line.count for line in p.lines)
    assert p.hourly == scheduler(p).hourly + worker(p).total_hourly


@pytest.mark.parametrize(
    ("max_runtime", "grace"),
    [("1h", "5m"), ("55m", "5m"), ("10s", "0s"), ("7d", "1h"), ("2h", "90s"), ("17m", "13s")],
)
@pytest.mark.parametrize("policy", ["spot", "on-demand"])
@pytest.mark.parametrize("cores", CORES)
def test_cost_bound(cores: int, policy: str, max_runtime: str, grace: str) -> None:
    spec = make_spec(cores=cores, spot=policy, max_runtime=max_runtime, grace=grace)
    p = plan(spec)
    hours = Fraction(int((spec.max_runtime + spec.grace).total_seconds()), 3600)
    assert abs(Fraction(p.max_runtime_hours) - hours) < Fraction(1, 10**20)
    assert p.cost_bound == p.cost_bound.quantize(Decimal("0.0001"))
    assert p.cost_bound.as_tuple().exponent == -4
    # Rounded to 4 dp: within half a unit of the last place of the exact product.
    assert 0 <= Fraction(p.cost_bound) - exact_cost(p, spec) < Fraction(1, 10000)  # rounded up


@pytest.mark.parametrize("cores", CORES)
def test_cost_bound_whole_hours_is_exact(cores: int) -> None:
    spec = make_spec(cores=cores, max_runtime="2h55m", grace="5m")
    p = plan(spec)
    assert p.max_runtime_hours == 3
    assert p.cost_bound == (p.hourly * 3).quantize(Decimal("0.0001"))
    assert Fraction(p.cost_bound) == round(exact_cost(p, spec), 4)


def test_money_values_are_decimal() -> None:
    for policy in POLICIES:
        p = plan(make_spec(cores=37, spot=policy))
        values = [p.hourly, p.cost_bound, p.max_runtime_hours]
        values += [v for line in p.lines for v in (line.hourly, line.total_hourly)]
        for value in values:
            assert isinstance(value, Decimal), value


def test_plan_is_deterministic() -> None:
    spec = make_spec(cores=123)
    first, second = plan(spec), plan(spec)
    assert first == second
    assert first.to_dict() == second.to_dict()
    assert plan(make_spec(cores=123)) == first


def test_plan_prices_come_from_the_catalog(monkeypatch: pytest.MonkeyPatch) -> None:
    # Worker prices come from the catalog's spot model: replacing it changes the plan.
    spec = make_spec(cores=16, instance_types=["c5.4xlarge"], spot="spot")
    monkeypatch.setattr(catalog, "spot_discount", lambda t, z: Decimal("0.5"))
    line = worker(plan(spec))
    assert line.hourly == Decimal("0.34")


def test_price_source() -> None:
    assert plan(make_spec()).price_source == SNAPSHOT_SOURCE
    assert catalog.SNAPSHOT_DATE in SNAPSHOT_SOURCE


# --------------------------------------------------------------------------- to_dict


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("cores", CORES)
def test_to_dict_is_json(cores: int, policy: str) -> None:
    p = plan(make_spec(cores=cores, spot=policy))
    data = p.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert Decimal(data["hourly"]) == p.hourly
    assert Decimal(data["cost_bound"]) == p.cost_bound
    assert data["worker_cores"] == p.worker_cores
    assert data["price_source"] == p.price_source
    assert len(data["lines"]) == len(p.lines)
    for row, line in zip(data["lines"], p.lines, strict=True):
        assert row == {
            "role": line.role,
            "instance_type": line.instance_type,
            "zone": line.zone,
            "market": line.market,
            "count": line.count,
            "vcpus": line.vcpus,
            "hourly": str(line.hourly),
            "cores": line.cores,
        }
        assert Decimal(row["hourly"]) == line.hourly


# --------------------------------------------------------------------------- properties


@settings(max_examples=300, deadline=None)
@given(
    cores=st.integers(min_value=1, max_value=5000),
    types=st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=6, unique=True),
    policy=st.sampled_from(POLICIES),
)
def test_plan_property(cores: int, types: list[str], policy: str) -> None:
    spec = make_spec(cores=cores, instance_types=types, spot=policy)
    p = plan(spec)
    line = worker(p)
    assert p.worker_cores >= cores
    assert line.instance_type in {t.name for t in matching_types(types)}
    assert line.total_hourly == cheapest_total(spec)
    assert p.hourly == scheduler(p).hourly + line.total_hourly
    assert 0 <= Fraction(p.cost_bound) - exact_cost(p, spec) < Fraction(1, 10000)  # rounded up
    assert line.market == ("on-demand" if policy == "on-demand" else "spot")


# ------------------------------------------------------------- bugs found and fixed


def test_cost_bound_is_never_below_the_exact_cost() -> None:
    # 17 cores on demand for 1h + 5m grace: $0.861/h * 13/12 h = $0.93275 exactly.
    spec = make_spec(cores=17, spot="on-demand", max_runtime="1h")
    p = plan(spec)
    assert exact_cost(p, spec) == Fraction("0.93275")
    assert Fraction(p.cost_bound) >= exact_cost(p, spec)
