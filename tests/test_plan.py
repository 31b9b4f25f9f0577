"""Tests for the price catalog (burst/catalog.py) and capacity planning (burst/plan.py)."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from burst import catalog
from burst.catalog import (
    PUBLIC_IPV4_HOURLY,
    REGION_MULTIPLIERS,
    SANDBOX_REGIONS,
    SNAPSHOT,
    SNAPSHOT_DATE,
    Offer,
    families,
    hourly_price,
    live_offers,
    matching_types,
    root_volume_hourly,
    snapshot_offers,
    spot_discount,
)
from burst.plan import (
    BudgetError,
    Plan,
    PlanError,
    PlanLine,
    cheapest_cover,
    check_budget,
    fallback_plan,
    plan,
    plan_within_budget,
    share_cap,
)
from burst.spec import JobSpec, SpecError, parse_spec
from tests.conftest import moto_in_process

POLICIES = ["spot", "spot-with-fallback", "on-demand"]
CORES = [1, 7, 8, 9, 100, 1000]
ISSUE_FAMILIES = {
    "c5", "c6i", "c7i", "c6a", "c7a", "m5", "m6i", "m7i", "m6a", "r6i", "r7i", "c7g", "m7g",
}  # fmt: skip


def make_spec(**fields: Any) -> JobSpec:
    return parse_spec({"cores": 8, **fields})


def scheduler(p: Plan) -> PlanLine:
    (line,) = [line for line in p.lines if line.role == "scheduler"]
    return line


def exact_cost(p: Plan, spec: JobSpec) -> Fraction:
    seconds = int((spec.max_runtime + spec.grace).total_seconds())
    return Fraction(p.hourly) * seconds / 3600


def offer(name: str, vcpus: int, price: str, zone: str = "us-east-1a", market: str = "spot",
          memory: float | None = None, arch: str = "x86_64") -> Offer:  # fmt: skip
    return Offer(name, vcpus, memory or 2.0 * vcpus, arch, zone, market, Decimal(price), "test")


# --------------------------------------------------------------------------- catalog


def test_snapshot_holds_the_issue_families_in_every_sandbox_region() -> None:
    assert families() == ISSUE_FAMILIES
    for family in ISSUE_FAMILIES:
        sizes = {t.name.split(".")[1] for t in matching_types([family])}
        assert {"large", "xlarge", "2xlarge", "4xlarge"} <= sizes
        assert sizes & {"8xlarge", "9xlarge"} and sizes & {"16xlarge", "18xlarge"}
    for region in SANDBOX_REGIONS:
        assert region in REGION_MULTIPLIERS
        zones = [f"{region}{z}" for z in "abc"]
        offers = snapshot_offers(region)
        assert len(offers) == len(SNAPSHOT) * 3 * 2
        assert {o.zone for o in offers} == set(zones)
        assert all(SNAPSHOT_DATE in o.source and o.hourly > 0 for o in offers)


def test_snapshot_entries_are_consistent() -> None:
    for name, itype in SNAPSHOT.items():
        assert itype.name == name and itype.family == name.split(".")[0]
        assert itype.vcpus > 0 and itype.vcpus % 2 == 0
        assert itype.architecture == ("arm64" if itype.family in {"c7g", "m7g"} else "x86_64")
        ratio = itype.memory_gib / itype.vcpus
        assert ratio == {"c": 2, "m": 4, "r": 8}[itype.family[0]]
        # List prices are linear in size within a family.
        large = SNAPSHOT[f"{itype.family}.large"]
        assert itype.on_demand_hourly * 2 == large.on_demand_hourly * itype.vcpus


@pytest.mark.parametrize(
    ("name", "price"),
    [("c5.large", "0.085"), ("c5.4xlarge", "0.68"), ("c6i.xlarge", "0.17"),
     ("c7i.large", "0.08925"), ("c6a.large", "0.0765"), ("m5.large", "0.096"),
     ("m6i.2xlarge", "0.384"), ("m7i.large", "0.1008"), ("r6i.large", "0.126"),
     ("r7i.large", "0.1323"), ("c7g.large", "0.0725"), ("m7g.large", "0.0816")],
)  # fmt: skip
def test_us_east_1_list_prices(name: str, price: str) -> None:
    assert SNAPSHOT[name].on_demand_hourly == Decimal(price)
    assert hourly_price(name, "us-east-1b", "on-demand") == Decimal(price)


def test_other_regions_follow_the_multiplier_table() -> None:
    assert hourly_price("c5.large", "us-west-2a", "on-demand") == Decimal("0.085")
    assert hourly_price("c5.large", "eu-west-1a", "on-demand") == Decimal("0.09605")
    assert hourly_price("m5.large", "eu-west-1c", "on-demand") == Decimal("0.10704")
    # A region without a snapshot is priced as us-east-1, and its source says so.
    assert hourly_price("m5.large", "ap-south-1a", "on-demand") == Decimal("0.096")
    (od,) = snapshot_offers("ap-south-1", ["ap-south-1a"], ["m5.large"], ["on-demand"])
    assert "no snapshot for ap-south-1" in od.source


@pytest.mark.parametrize("name", ["c5.large", "m7g.16xlarge", "r7i.24xlarge", "c6a.8xlarge"])
def test_spot_model_is_stable_and_below_on_demand(name: str) -> None:
    for zone in ("us-east-1a", "us-east-1b", "eu-west-1a", "us-west-2c"):
        spot = hourly_price(name, zone, "spot")
        assert spot == hourly_price(name, zone, "spot")
        assert 0 < spot < hourly_price(name, zone, "on-demand")
        discount = spot_discount(name, zone)
        assert Decimal("0.55") <= discount <= Decimal("0.75")
        expected = hourly_price(name, zone, "on-demand") * (1 - discount)
        assert abs(spot - expected) <= Decimal("0.00005")
    assert len({hourly_price(name, f"us-east-1{z}", "spot") for z in "abcdef"}) > 1


def test_every_offer_says_its_source() -> None:
    spot, on_demand = snapshot_offers("eu-west-1", ["eu-west-1b"], ["c6i.large"])
    assert spot.market == "spot" and "spot discount" in spot.source
    assert on_demand.market == "on-demand" and "spot" not in on_demand.source
    assert "eu-west-1 multiplier" in on_demand.source and SNAPSHOT_DATE in on_demand.source


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [(["c5.xlarge"], ["c5.xlarge"]), (["m5.xlarge", "c5.large"], ["c5.large", "m5.xlarge"]),
     (["z9"], []), ([], [])],
)  # fmt: skip
def test_matching_types(patterns: list[str], expected: list[str]) -> None:
    assert [t.name for t in matching_types(patterns)] == expected
    assert matching_types(["c5"]) == [t for t in SNAPSHOT.values() if t.family == "c5"]


# --------------------------------------------------------------------------- live catalog


@pytest.fixture()
def moto_ec2(monkeypatch: pytest.MonkeyPatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    with moto_in_process():
        import boto3

        yield boto3.client("ec2", region_name="eu-west-1")


def test_live_offers_from_moto(moto_ec2) -> None:
    offers = live_offers(moto_ec2, "eu-west-1", ["c5.large", "c7g.xlarge", "r7i.16xlarge"])
    offered = moto_ec2.describe_instance_type_offerings(
        LocationType="availability-zone",
        Filters=[{"Name": "instance-type", "Values": ["c5.large", "c7g.xlarge", "r7i.16xlarge"]}],
    )["InstanceTypeOfferings"]
    pools = {(o["InstanceType"], o["Location"]) for o in offered}
    assert pools and {(o.instance_type, o.zone) for o in offers} == pools
    for o in offers:
        assert o.zone.startswith("eu-west-1")
        assert o.vcpus == SNAPSHOT[o.instance_type].vcpus
        assert o.memory_gib == SNAPSHOT[o.instance_type].memory_gib
        assert o.architecture == SNAPSHOT[o.instance_type].architecture
        if o.market == "on-demand":
            assert o.hourly == hourly_price(o.instance_type, "eu-west-1a", "on-demand")
            assert SNAPSHOT_DATE in o.source
        else:
            assert o.source.startswith("live spot price history ")
            assert o.hourly == Decimal("0.00001")  # moto's constant spot price
    markets = {(o.instance_type, o.zone): set() for o in offers}
    for o in offers:
        markets[(o.instance_type, o.zone)].add(o.market)
    assert all(m == {"spot", "on-demand"} for m in markets.values())


def test_live_offers_take_the_latest_spot_price_per_pool(moto_ec2) -> None:
    old = datetime(2026, 1, 1, tzinfo=UTC)
    new = old + timedelta(hours=3)

    def history(parsed, **kwargs) -> None:  # moto's history is one constant: write our own
        parsed["SpotPriceHistory"] = [
            {"AvailabilityZone": "eu-west-1a", "InstanceType": "c5.large",
             "ProductDescription": "Linux/UNIX", "SpotPrice": "0.031000", "Timestamp": new},
            {"AvailabilityZone": "eu-west-1a", "InstanceType": "c5.large",
             "ProductDescription": "Linux/UNIX", "SpotPrice": "0.050000", "Timestamp": old},
            {"AvailabilityZone": "eu-west-1b", "InstanceType": "c5.large",
             "ProductDescription": "Windows", "SpotPrice": "0.9", "Timestamp": new},
        ]  # fmt: skip

    moto_ec2.meta.events.register("after-call.ec2.DescribeSpotPriceHistory", history)
    offers = live_offers(moto_ec2, "eu-west-1", ["c5.large"])
    spot = [o for o in offers if o.market == "spot"]
    assert [(o.zone, o.hourly) for o in spot] == [("eu-west-1a", Decimal("0.031"))]
    assert spot[0].source == "live spot price history 2026-01-01T03:00:00+00:00"
    # Pools without a (Linux) spot price get on-demand offers only.
    assert {o.zone for o in offers if o.market == "on-demand"} >= {"eu-west-1a", "eu-west-1b"}


def test_plan_over_live_offers(moto_ec2) -> None:
    spec = make_spec(cores=64, cloud="aws", region="eu-west-1", instance_types=["c5", "m5"])
    offers = live_offers(moto_ec2, "eu-west-1", [*spec.instance_types, "m5.large"])
    p = plan(spec, offers=offers)
    assert p.worker_cores >= 64
    assert all(line.source.startswith("live spot price history") for line in p.workers)
    assert scheduler(p).hourly == hourly_price("m5.large", "eu-west-1a", "on-demand")
    assert "live spot price history" in p.price_source and SNAPSHOT_DATE in p.price_source


# --------------------------------------------------------------------------- the solver


def brute_force(offers: list[Offer], cores: int, caps: list[int | None]):
    """The least (cost, instances) over every assignment of counts; None when infeasible.
    Every pool but the last is enumerated; the last takes just what is still missing."""
    bounds = [
        cap if cap is not None else math.ceil(cores / o.vcpus)
        for o, cap in zip(offers, caps, strict=True)
    ]
    *head, last = offers
    best = None
    for counts in itertools.product(*(range(b + 1) for b in bounds[:-1])):
        have = sum(n * o.vcpus for n, o in zip(counts, head, strict=True))
        need = max(0, math.ceil((cores - have) / last.vcpus))
        if need > bounds[-1]:
            continue
        counts = (*counts, need)
        key = (sum(n * o.hourly for n, o in zip(counts, offers, strict=True)), sum(counts))
        best = key if best is None or key < best else best
    return best


def cost_of(offers: list[Offer], counts: list[int]) -> tuple[Decimal, int]:
    return sum(n * o.hourly for o, n in zip(offers, counts, strict=True)), sum(counts)


def test_cheapest_cover_mixes_pools() -> None:
    # 10 cores: 2 x 4-vCPU at 0.10 + 1 x 2-vCPU at 0.06 (0.26) beats 3 x 4-vCPU (0.30)
    # and 5 x 2-vCPU (0.30).
    offers = [offer("c5.xlarge", 4, "0.10"), offer("c5.large", 2, "0.06")]
    assert cheapest_cover(offers, 10) == [2, 1]
    assert cheapest_cover(offers, 0) == [0, 0]
    assert cheapest_cover(offers, 10, [1, 2]) is None
    assert cheapest_cover([], 4) is None


def test_cheapest_cover_ties_go_to_fewer_instances() -> None:
    offers = [offer("c5.large", 2, "0.05"), offer("c5.xlarge", 4, "0.10", zone="us-east-1b")]
    assert cheapest_cover(offers, 8) == [0, 2]


def test_cheapest_cover_at_scale_is_near_the_lp_bound() -> None:
    spec = make_spec(cores=10_000, instance_types=sorted(families()), architecture="x86_64")
    offers = snapshot_offers("us-east-1", types=spec.instance_types, markets=["spot"])
    offers = [o for o in offers if o.architecture == "x86_64"]
    assert len(offers) >= 100
    caps = [share_cap(o, spec.cores, 0.4) for o in offers]
    counts = cheapest_cover(offers, spec.cores, caps)
    assert counts is not None
    assert sum(n * o.vcpus for o, n in zip(offers, counts, strict=True)) >= spec.cores
    assert all(n <= cap for n, cap in zip(counts, caps, strict=True))
    # The LP relaxation (fill the cheapest $/vCPU pools up to their caps) is a lower bound;
    # rounding its last pool up is feasible, so the optimum is within one instance of it.
    left, bound = Fraction(spec.cores), Fraction(0)
    for o, cap in sorted(zip(offers, caps, strict=True), key=lambda p: p[0].hourly / p[0].vcpus):
        take = min(left, Fraction(cap * o.vcpus))
        bound += take * Fraction(o.hourly) / o.vcpus
        left -= take
    cost, _ = cost_of(offers, counts)
    assert bound <= Fraction(cost) <= bound + max(Fraction(o.hourly) for o in offers)


prices = st.decimals(min_value=Decimal("0.001"), max_value=Decimal("2"), places=4)


@st.composite
def catalogs(draw) -> list[Offer]:
    n = draw(st.integers(1, 4))
    names = draw(st.lists(st.sampled_from(sorted(SNAPSHOT)), min_size=n, max_size=n,
                          unique=True))  # fmt: skip
    return [
        offer(name, draw(st.sampled_from([1, 2, 3, 4, 6, 8, 16])), str(draw(prices)),
              zone=draw(st.sampled_from(["us-east-1a", "us-east-1b"])))
        for name in names
    ]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(offers=catalogs(), cores=st.integers(1, 40), caps=st.lists(st.none() | st.integers(0, 8),
       min_size=4, max_size=4))  # fmt: skip
def test_cheapest_cover_equals_brute_force(offers: list[Offer], cores: int, caps: list) -> None:
    caps = caps[: len(offers)]
    counts = cheapest_cover(offers, cores, caps)
    best = brute_force(offers, cores, caps)
    if best is None:
        assert counts is None
        return
    assert counts is not None
    assert sum(n * o.vcpus for o, n in zip(offers, counts, strict=True)) >= cores
    assert all(cap is None or n <= cap for n, cap in zip(counts, caps, strict=True))
    assert cost_of(offers, counts) == best  # exact: least cost, then fewest instances


# --------------------------------------------------------------------------- the planner


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("cores", CORES)
def test_plan_covers_the_cores_with_distinct_pools(cores: int, policy: str) -> None:
    p = plan(make_spec(cores=cores, spot=policy))
    assert p.worker_cores >= cores and p.cores == cores
    pools = [line.pool for line in p.workers]
    assert len(pools) == len(set(pools))
    market = "on-demand" if policy == "on-demand" else "spot"
    for line in p.workers:
        assert line.market == market and line.count > 0
        assert line.vcpus == SNAPSHOT[line.instance_type].vcpus
        assert line.hourly == hourly_price(line.instance_type, line.zone, market)
        assert line.zone in {"us-east-1a", "us-east-1b", "us-east-1c"}
        assert line.memory_gib == SNAPSHOT[line.instance_type].memory_gib
    # Never an instance more than needed: dropping any one instance falls short.
    assert p.worker_cores - min(line.vcpus for line in p.workers) < cores


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("scheduler_type", ["m5.large", "c5.large", "m5.4xlarge"])
def test_scheduler_line(policy: str, scheduler_type: str) -> None:
    p = plan(make_spec(cores=20, spot=policy, scheduler_instance_type=scheduler_type))
    assert p.lines[0].role == "scheduler"
    line = scheduler(p)
    assert (line.instance_type, line.market, line.count, line.zone) == (
        scheduler_type, "on-demand", 1, "us-east-1a")  # fmt: skip
    assert line.hourly == SNAPSHOT[scheduler_type].on_demand_hourly
    assert p.worker_cores == sum(line.cores for line in p.workers)  # not the scheduler's


@pytest.mark.parametrize("zones", [["us-east-1d"], ["us-east-1f", "us-east-1e"]])
def test_explicit_zones(zones: list[str]) -> None:
    p = plan(make_spec(cores=50), zones)
    assert {line.zone for line in p.workers} <= set(zones)
    assert scheduler(p).zone == zones[0]


def test_regions_price_their_own_zones() -> None:
    p = plan(make_spec(cores=33, region="eu-west-1", spot="on-demand"))
    assert {line.zone for line in p.lines} <= {"eu-west-1a", "eu-west-1b", "eu-west-1c"}
    for line in p.lines:
        assert line.hourly == hourly_price(line.instance_type, "eu-west-1a", "on-demand")
        assert "eu-west-1 multiplier" in line.source


def test_constraints_filter_the_pools() -> None:
    spec = make_spec(cores=64, instance_types=["c7g", "m7g", "m5"], architecture="arm64",
                     min_memory_per_core=4)  # fmt: skip
    p = plan(spec)
    assert {line.instance_type.split(".")[0] for line in p.workers} == {"m7g"}
    memory = make_spec(cores=64, instance_types=["c6i", "m6i", "r6i"], min_memory_per_core=5)
    assert {line.instance_type[:3] for line in plan(memory).workers} == {"r6i"}
    exact = make_spec(cores=64, instance_types=["c6a.2xlarge", "m5"])
    assert {line.instance_type for line in plan(exact).workers} <= (
        {"c6a.2xlarge"} | {t.name for t in matching_types(["m5"])})  # fmt: skip


def test_spot_pools_hold_at_most_their_share() -> None:
    spec = make_spec(cores=10_000)
    p = plan(spec)
    assert p.max_pool_share == 0.4 and p.notes == ()
    assert len(p.workers) >= 3 and p.worker_cores >= 10_000
    for line in p.workers:
        assert line.cores <= 0.4 * 10_000
    half = make_spec(cores=10_000, max_pool_share=0.1)
    assert len(plan(half).workers) >= 10
    assert all(line.cores <= 1000 for line in plan(half).workers)


def test_a_pool_may_always_hold_one_instance() -> None:
    # 8 cores from 16-vCPU instances only: one instance, though it is all of the cores.
    p = plan(make_spec(cores=8, instance_types=["c5.4xlarge"]))
    assert [(line.count, line.vcpus) for line in p.workers] == [(1, 16)]
    assert p.notes == ()


def test_on_demand_plans_are_not_capped() -> None:
    p = plan(make_spec(cores=1000, spot="on-demand", instance_types=["c6a.24xlarge"]))
    assert len(p.workers) == 1 and p.max_pool_share is None


def test_share_is_relaxed_when_infeasible_and_the_plan_says_so() -> None:
    spec = make_spec(cores=100, instance_types=["c5.xlarge"])
    p = plan(spec, ["us-east-1a", "us-east-1b"])
    assert p.worker_cores >= 100
    assert p.max_pool_share == 0.52  # the tightest whole percent that holds 100 cores
    assert len(p.notes) == 1 and "relaxed from 0.4 to 0.52" in p.notes[0]
    assert "cannot hold 100 cores" in p.notes[0]
    one = plan(spec, ["us-east-1a"])
    assert one.max_pool_share is None and "only one spot pool" in one.notes[0]


def test_share_is_relaxed_to_meet_max_hourly() -> None:
    spec = make_spec(cores=1000, instance_types=["c5.4xlarge", "m5.4xlarge"])
    capped = plan(spec)
    free = plan(make_spec(cores=1000, instance_types=["c5.4xlarge", "m5.4xlarge"],
                          max_pool_share=1))  # fmt: skip
    assert free.hourly < capped.hourly
    limited = make_spec(cores=1000, instance_types=["c5.4xlarge", "m5.4xlarge"],
                        max_hourly=str(free.hourly))  # fmt: skip
    p = plan(limited)
    # Only the uncapped plan is that cheap: every whole-percent cap below 100 costs more.
    assert p.max_pool_share is None and p.workers == free.workers
    assert p.notes == (f"max_pool_share relaxed from 0.4 to none (1): at 40% the plan costs "
                       f"${capped.hourly}/h, over max_hourly",)  # fmt: skip
    check_budget(limited, p)  # within max_hourly: no refusal
    # Between the two: the tightest whole percent whose plan fits, found share by share.
    between = (capped.hourly + free.hourly) / 2
    tightest = next(
        share for share in range(41, 100)
        if plan(make_spec(cores=1000, instance_types=["c5.4xlarge", "m5.4xlarge"],
                          max_pool_share=share / 100)).hourly <= between
    )  # fmt: skip
    p = plan(make_spec(cores=1000, instance_types=["c5.4xlarge", "m5.4xlarge"],
                       max_hourly=str(between)))  # fmt: skip
    assert p.max_pool_share == tightest / 100 and p.hourly <= between
    assert p.notes[0].startswith(f"max_pool_share relaxed from 0.4 to {tightest / 100:g}: ")


def test_spot_is_cheaper_than_on_demand() -> None:
    for cores in CORES:
        assert plan(make_spec(cores=cores, spot="spot")).hourly < plan(
            make_spec(cores=cores, spot="on-demand")).hourly  # fmt: skip


def test_no_offer_in_the_zones_is_a_plan_error() -> None:
    spec = make_spec(cores=8, cloud="aws", region="eu-west-1", instance_types=["c5"])
    with pytest.raises(PlanError) as info:
        plan(spec, offers=snapshot_offers("eu-west-1", types=["m5"]))
    assert isinstance(info.value, SpecError)
    assert "instance_types: no spot offer of ['c5']" in info.value.problems[0]


def test_unsatisfiable_constraints_are_a_spec_error_and_a_plan_error() -> None:
    with pytest.raises(SpecError):
        make_spec(instance_types=["c5"], architecture="arm64")
    spec = JobSpec(cores=8, instance_types=["c7g"], min_memory_per_core=8, architecture="arm64")
    with pytest.raises(PlanError) as info:
        plan(spec)
    assert info.value.problems[0].startswith("min_memory_per_core: ")


def test_plan_is_deterministic() -> None:
    for fields in ({"cores": 123}, {"cores": 5000, "instance_types": sorted(families())}):
        first, second = plan(make_spec(**fields)), plan(make_spec(**fields))
        assert first == second and first.to_dict() == second.to_dict()


def test_plan_prices_come_from_the_catalog(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec(cores=16, instance_types=["c5.4xlarge"], spot="spot")
    monkeypatch.setattr(catalog, "spot_discount", lambda t, z: Decimal("0.5"))
    assert [line.hourly for line in plan(spec).workers] == [Decimal("0.34")]


# --------------------------------------------------------------------------- properties


@st.composite
def planning_cases(draw):
    zones = ["us-east-1a", "us-east-1b"][: draw(st.integers(1, 2))]
    names = draw(st.lists(st.sampled_from(sorted(SNAPSHOT)), min_size=1, max_size=2,
                          unique=True))  # fmt: skip
    offers = []
    for name in names:
        vcpus = draw(st.sampled_from([2, 4, 8, 16]))
        memory = float(vcpus * draw(st.sampled_from([1, 2, 4, 8])))
        arch = draw(st.sampled_from(["x86_64", "arm64"]))
        for zone in draw(st.lists(st.sampled_from(zones), min_size=1, unique=True)):
            for market in ("spot", "on-demand"):
                offers.append(Offer(name, vcpus, memory, arch, zone, market, draw(prices), "t"))
    fields = {
        "cores": draw(st.integers(1, 40)),
        "instance_types": names,
        "spot": draw(st.sampled_from(POLICIES)),
        "max_pool_share": draw(st.sampled_from([0.25, 0.4, 0.5, 1.0])),
        "architecture": draw(st.sampled_from(["x86_64", "arm64"])),
        "min_memory_per_core": draw(st.sampled_from([None, 1, 2, 4])),
        "max_hourly": draw(st.sampled_from([None, "0.5", "2", "10"])),
        "network": {"public_ip": draw(st.sampled_from(["all", "scheduler", "none"]))},
    }
    return JobSpec(**fields), offers


def allowed_pools(spec: JobSpec, offers: list[Offer]) -> list[Offer]:
    """The spec's worker pools at a node's price: a worker's public IPv4 address and root
    volume included."""
    market = "on-demand" if spec.spot == "on-demand" else "spot"
    ipv4 = PUBLIC_IPV4_HOURLY if spec.network.public_ip == "all" else Decimal(0)
    extra = ipv4 + root_volume_hourly(spec.disk_gb, spec.region)
    pools = [
        replace(o, hourly=o.hourly + extra) for o in offers
        if o.market == market and o.architecture == spec.architecture
        and (spec.min_memory_per_core is None or o.memory_per_vcpu >= spec.min_memory_per_core)
    ]  # fmt: skip
    return pools


def expected_plan(spec: JobSpec, pools: list[Offer], base: Decimal):
    """The planner's contract, by brute force: the tightest whole-percent share cap that is
    feasible within max_hourly (the scheduler costing `base`), else no cap."""
    market = "on-demand" if spec.spot == "on-demand" else "spot"
    if market == "on-demand" or spec.max_pool_share >= 1 or len(pools) == 1:
        shares = [1.0]
    else:
        shares = [spec.max_pool_share]
        shares += [p / 100 for p in range(1, 101) if p / 100 > spec.max_pool_share]
    tried = set()
    for share in shares:
        caps = [share_cap(o, spec.cores, share) if share < 1 else None for o in pools]
        if tuple(caps) in tried:
            continue
        tried.add(tuple(caps))
        best = brute_force(pools, spec.cores, caps)
        if best is not None and (spec.max_hourly is None or best[0] + base <= spec.max_hourly):
            return best
    return brute_force(pools, spec.cores, [None] * len(pools))


@settings(max_examples=200, deadline=None)
@given(case=planning_cases())
def test_plan_is_optimal_and_respects_the_constraints(case) -> None:
    spec, offers = case
    pools = allowed_pools(spec, offers)
    if not pools:
        with pytest.raises(PlanError):
            plan(spec, offers=offers)
        return
    p = plan(spec, offers=offers)
    expected = expected_plan(spec, pools, scheduler(p).node_hourly)
    assert p == plan(spec, offers=offers)  # deterministic
    workers = p.workers
    cost = sum((line.total_hourly for line in workers), Decimal(0))
    assert p.worker_cores >= spec.cores  # never short
    assert (cost, sum(line.count for line in workers)) == expected  # the optimum, exactly
    assert len({line.pool for line in workers}) == len(workers)
    for line in workers:
        o = next(o for o in offers if o.pool == line.pool)
        assert (line.vcpus, line.hourly, line.memory_gib) == (o.vcpus, o.hourly, o.memory_gib)
        assert o.architecture == spec.architecture
        if spec.min_memory_per_core is not None:
            assert line.memory_gib / line.vcpus >= spec.min_memory_per_core
        if p.max_pool_share is not None:
            assert line.market == "spot"
            assert line.count <= share_cap(o, spec.cores, p.max_pool_share)
    relaxed = [n for n in p.notes if n.startswith("max_pool_share ")]
    if spec.spot == "on-demand" or spec.max_pool_share >= 1:
        assert p.max_pool_share is None and relaxed == []
    elif len(pools) == 1:
        assert p.max_pool_share is None
        assert relaxed == ["max_pool_share not applied: only one spot pool is allowed"]
    elif p.max_pool_share == spec.max_pool_share:
        assert relaxed == []
    else:
        to = "none (1)" if p.max_pool_share is None else f"{p.max_pool_share:g}"
        assert len(relaxed) == 1
        assert relaxed[0].startswith(
            f"max_pool_share relaxed from {spec.max_pool_share:g} to {to}: ")
    if spec.max_hourly is not None and p.hourly > spec.max_hourly:
        assert p.notes[-1] == f"the cheapest plan costs ${p.hourly}/h, over max_hourly"
        with pytest.raises(BudgetError):
            check_budget(spec, p, offers=offers)


# --------------------------------------------------------------------------- fallback


def test_fallback_plan_covers_the_missing_cores_on_demand() -> None:
    spec = make_spec(cores=100, instance_types=["c5", "c6i"])
    p = fallback_plan(spec, 37)
    assert p.worker_cores >= 37 and p.cores == 37
    assert all(line.role == "worker" and line.market == "on-demand" for line in p.lines)
    assert p.hourly == sum(line.total_hourly for line in p.lines)
    banned = {line.instance_type for line in p.lines}
    other = fallback_plan(spec, 37, exclude=sorted(banned))
    assert not banned & {line.instance_type for line in other.lines}
    assert other.worker_cores >= 37
    zoned = fallback_plan(
        spec, 37, exclude=[("c5.large", "us-east-1a"), ("c6i.large", "us-east-1a", "on-demand")]
    )
    assert all(line.zone != "us-east-1a" or line.instance_type not in {"c5.large", "c6i.large"}
               for line in zoned.lines)  # fmt: skip
    with pytest.raises(PlanError):
        fallback_plan(spec, 37, exclude=["c5", *[t.name for t in matching_types(["c5", "c6i"])]])


# --------------------------------------------------------------------------- money


@pytest.mark.parametrize(
    ("max_runtime", "grace"),
    [("1h", "5m"), ("55m", "5m"), ("10s", "0s"), ("7d", "1h"), ("2h", "90s"), ("17m", "13s")],
)
@pytest.mark.parametrize("cores", CORES)
def test_cost_bound_rounds_up(cores: int, max_runtime: str, grace: str) -> None:
    spec = make_spec(cores=cores, max_runtime=max_runtime, grace=grace)
    p = plan(spec)
    assert p.hourly == sum(line.node_hourly * line.count for line in p.lines)
    assert p.hourly - p.ipv4_hourly - p.disk_hourly == sum(
        line.hourly * line.count for line in p.lines)
    assert p.cost_bound.as_tuple().exponent == -4
    assert 0 <= Fraction(p.cost_bound) - exact_cost(p, spec) < Fraction(1, 10000)


def test_cost_bound_is_never_below_the_exact_cost() -> None:
    # 1h + 5m grace = 13/12 h: the bound is the exact product rounded up, never down.
    spec = make_spec(cores=17, spot="on-demand", max_runtime="1h", instance_types=["c5"])
    p = plan(spec)
    assert exact_cost(p, spec) == Fraction(p.hourly) * Fraction(13, 12)
    assert Fraction(p.cost_bound) >= exact_cost(p, spec)


def test_money_values_are_decimal_and_to_dict_is_json() -> None:
    p = plan(make_spec(cores=37))
    values = [p.hourly, p.cost_bound, p.max_runtime_hours]
    values += [v for line in p.lines for v in (line.hourly, line.total_hourly)]
    assert all(isinstance(v, Decimal) for v in values)
    data = p.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert Decimal(data["cost_bound"]) == p.cost_bound and Decimal(data["hourly"]) == p.hourly
    assert data["cores"] == 37 and data["worker_cores"] == p.worker_cores
    assert data["spot_cores"] + data["on_demand_cores"] == p.worker_cores
    assert data["instances"] == sum(line.count for line in p.lines)
    for row, line in zip(data["lines"], p.lines, strict=True):
        assert row["instance_type"] == line.instance_type and row["cores"] == line.cores
        assert Decimal(row["hourly"]) == line.hourly and row["source"] == line.source


# --------------------------------------------------------------------------- budget


def test_over_max_cost_is_refused_saying_by_how_much_and_what_fits() -> None:
    spec = make_spec(cores=1000, max_runtime="2h", max_cost="20")
    p = plan(spec)
    assert p.cost_bound > 20
    with pytest.raises(BudgetError) as info:
        check_budget(spec, p)
    refusal = info.value
    assert refusal.field == "max_cost" and refusal.over == p.cost_bound - 20
    assert f"by ${p.cost_bound - 20}" in str(refusal)
    # What would fit: fewer cores at this max_runtime ...
    assert 0 < refusal.fit_cores < 1000
    fewer = make_spec(cores=refusal.fit_cores, max_runtime="2h", max_cost="20")
    assert plan_within_budget(fewer).cost_bound <= 20
    more = make_spec(cores=refusal.fit_cores + 1, max_runtime="2h")
    assert plan(more).cost_bound > 20
    # ... or a shorter max_runtime at these cores, in whole minutes.
    runtime = refusal.fit_max_runtime
    assert runtime is not None and runtime.total_seconds() % 60 == 0
    shorter = make_spec(cores=1000, max_runtime=runtime, max_cost="20")
    assert plan_within_budget(shorter).cost_bound <= 20
    longer = make_spec(cores=1000, max_runtime=runtime + timedelta(minutes=1))
    assert plan(longer).cost_bound > 20
    assert f"{refusal.fit_cores} cores fit" in refusal.fix and "max_runtime" in refusal.fix
    data = refusal.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["fits"]["cores"] == refusal.fit_cores
    assert data["fits"]["max_runtime_seconds"] == runtime.total_seconds()


def test_within_max_cost_passes() -> None:
    spec = make_spec(cores=1000, max_runtime="2h")
    bound = plan(spec).cost_bound
    assert plan_within_budget(make_spec(cores=1000, max_runtime="2h", max_cost=str(bound)))


def test_over_max_hourly_is_refused() -> None:
    spec = make_spec(cores=1000, max_hourly="5")
    with pytest.raises(BudgetError) as info:
        plan_within_budget(spec)
    refusal = info.value
    assert refusal.field == "max_hourly" and refusal.value > 5 and refusal.fit_max_runtime is None
    assert plan(make_spec(cores=refusal.fit_cores, max_hourly="5")).hourly <= 5
    assert plan(make_spec(cores=refusal.fit_cores + 1, max_hourly="5")).hourly > 5


def test_a_budget_below_the_scheduler_fits_nothing() -> None:
    spec = make_spec(cores=8, max_runtime="1h", max_cost="0.01")
    with pytest.raises(BudgetError) as info:
        plan_within_budget(spec)
    assert info.value.fit_cores == 0 and "no number of cores fits" in info.value.fix


# --------------------------------------------------------------------------- readability


def test_the_pool_share_binds_only_when_it_changed_the_plan() -> None:
    loose = plan(make_spec(cores=4, instance_types=["c5.xlarge"]))
    assert loose.max_pool_share == 0.4 and not loose.share_binds  # one instance either way
    tight = plan(make_spec(cores=8, instance_types=["c5.xlarge"]))
    uncapped = plan(make_spec(cores=8, instance_types=["c5.xlarge"], max_pool_share=1))
    assert tight.share_binds and tight.hourly > uncapped.hourly
    assert not uncapped.share_binds and uncapped.max_pool_share is None


def test_the_scheduler_grows_with_the_worker_instances() -> None:
    from burst.plan import MANY_WORKERS, scheduler_type_for

    assert [scheduler_type_for(n) for n in (1, 249, 250, 999, 1000, 2499, 2500, 10**6)] == [
        "m5.large", "m5.large", "m5.xlarge", "m5.xlarge", "m5.2xlarge", "m5.2xlarge",
        "m5.4xlarge", "m5.4xlarge"]
    small = plan(make_spec(cores=64, instance_types=["c5.xlarge"]))
    assert scheduler(small).instance_type == "m5.large" and small.notes == ()
    many = plan(make_spec(cores=4 * 1200, instance_types=["c5.xlarge"]))
    assert sum(line.count for line in many.workers) == 1200 >= MANY_WORKERS
    assert scheduler(many).instance_type == "m5.2xlarge"
    assert scheduler(many).hourly == hourly_price("m5.2xlarge", scheduler(many).zone, "on-demand")
    assert many.hourly == sum(line.total_hourly for line in many.lines)
    note, launching = many.notes  # 1201 instances also pass EC2's launch bucket
    assert note.startswith("one scheduler serves 1200 worker instances")
    assert launching.startswith("1201 instances pass EC2's launch bucket")
    named = plan(make_spec(cores=4 * 1200, instance_types=["c5.xlarge"],
                           scheduler_instance_type="m5.large"))
    assert scheduler(named).instance_type == "m5.large"  # the spec's choice stands ...
    assert named.notes[0].startswith("one scheduler serves 1200")  # ... with the warning


def test_the_price_source_says_the_snapshot_once() -> None:
    source = plan(make_spec(cores=64)).price_source
    assert source.count(SNAPSHOT_DATE) == 1 and "sandbox" not in source
    assert source.endswith("; spot: modelled 55-75% discount, not a live price")


def test_a_plan_past_ecs_launch_bucket_says_how_long_launching_takes():
    from burst.plan import launch_pacing_seconds

    assert launch_pacing_seconds(1000) == 0 and launch_pacing_seconds(2500) == 750
    many = plan(parse_spec({"cores": 6000, "instance_types": ["c5.large"], "max_runtime": "1h",
                            "run": {"function": "m:f", "tasks": [1]}}))  # fmt: skip
    assert many.instances > 1000
    assert any("EC2's launch bucket" in note for note in many.notes)
    few = plan(parse_spec({"cores": 6000, "instance_types": ["c5.24xlarge"], "max_runtime": "1h",
                           "run": {"function": "m:f", "tasks": [1]}}))  # fmt: skip
    assert not any("launch bucket" in note for note in few.notes)


def test_a_plan_read_back_from_its_dict_is_the_same_plan() -> None:
    """A detached job keeps its plan as to_dict wrote it; `burst wait` plans replacements
    against it (its scheduler's price, its hours), read back with from_dict."""
    spec = make_spec(cores=40, max_runtime="2h", max_hourly=5,
                     instance_types=["c5.xlarge", "m5.2xlarge"])
    planned = plan_within_budget(spec)
    assert len(planned.lines) > 2 and planned.ipv4_hourly > 0
    again = Plan.from_dict(json.loads(json.dumps(planned.to_dict())))
    assert again == planned and again.to_dict() == planned.to_dict()


def test_root_volumes_are_priced_into_every_node_and_the_bound() -> None:
    """gp3 at its list price per GB-month (us-east-1 $0.08, eu-west-1 $0.088), an hour being
    1/730 of a month, for disk_gb or the image's 8 GiB: a big disk is in the budget's sums."""
    small, big = make_spec(cores=16), make_spec(cores=16, disk_gb=500)
    p, q = plan(small), plan(big)
    assert [line.disk_hourly for line in p.lines] == [Decimal("0.000877")] * len(p.lines)
    per_node = Decimal("0.08") * 500 / 730
    assert all(Decimal(0) <= line.disk_hourly - per_node < Decimal("0.000001") for line in q.lines)
    assert q.disk_hourly == sum(line.disk_hourly * line.count for line in q.lines)
    assert q.hourly == sum(line.node_hourly * line.count for line in q.lines)
    # A dear volume per node makes fewer, bigger instances the cheaper cover.
    assert q.worker_cores >= 16 and q.instances < p.instances
    assert q.to_dict()["root_volumes"] == {"volumes": q.instances, "hourly": str(q.disk_hourly)}
    ireland = plan(make_spec(cores=16, disk_gb=500, region="eu-west-1"))
    assert ireland.lines[0].disk_hourly == (Decimal("0.088") * 500 / 730).quantize(
        Decimal("0.000001"), rounding="ROUND_CEILING")
    # A budget that holds the instances but not their volumes is refused, naming the fit.
    with pytest.raises(BudgetError):
        plan_within_budget(
            make_spec(cores=16, disk_gb=500, max_hourly=str(q.hourly - q.disk_hourly)))
