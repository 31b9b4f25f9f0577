"""The provisioning policy (burst/provision.py) against a provider in memory: which pools are
asked, for how many cores, under which price cap, and what is raised. Milliseconds, no cloud;
the sandbox tests prove the real path (AwsProvider on moto) end to end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from burst.cloud.base import (
    ClusterIdentity,
    Fulfilment,
    InstanceRecord,
    LaunchRequest,
    NodeEnvironment,
    PoolError,
    Provider,
)
from burst.errors import CloudError
from burst.plan import Plan, fallback_plan, plan
from burst.provision import (
    LaunchPacer,
    acquire_workers,
    check_nodes,
    hourly_budget_left,
    top_up,
)
from burst.spec import JobSpec, parse_spec

NOW = datetime(2025, 1, 1, tzinfo=UTC)
IDENT = ClusterIdentity("c0", "j0", NOW + timedelta(hours=1))
ZONES = ["us-east-1a", "us-east-1b", "us-east-1c"]
ICE = "InsufficientInstanceCapacity"


class FakeCloud:
    """A provider in memory. `script` says what each pool (type, zone, market), or a whole
    market, does: "ok", an error code, or how many instances it has left. As EC2 Fleet, it
    stops below `max_hourly`, and (as aws.launch_fleet) a short fill says "Unfulfilled" unless
    `report_short` is off. `chunk` is its per-fleet limit in cores."""

    region, scheduler_port, dashboard_port = "us-east-1", 0, 0

    def __init__(self, script: dict | None = None, chunk: int = 10_000, report_short=True):
        self.script: dict[Any, Any] = dict(script or {})
        self.chunk, self.report_short = chunk, report_short
        self.calls: list[tuple[tuple[str, str, str], int, Decimal | None]] = []
        self.records: list[InstanceRecord] = []
        self.failures: list[str] = []

    def fleet_chunks(self, cores: int, vcpus: int) -> list[int]:
        size = self.chunk - self.chunk % vcpus
        return [min(size, cores - start) for start in range(0, cores, size)]

    def launch_fleet(self, ident, env, template_id, request, cores, max_hourly=None):
        self.calls.append((request.pool, cores, max_hourly))
        what = self.script.get(request.pool, self.script.get(request.market, "ok"))
        if isinstance(what, str) and what != "ok":
            return Fulfilment(errors=[PoolError(*request.pool, what, "scripted")])
        count = -(-cores // request.vcpus)
        if isinstance(what, int):
            count = min(count, what)
            self.script[request.pool] = what - count
        if max_hourly is not None:
            count = min(count, int(max_hourly // request.hourly))
        got = Fulfilment([self.record(request) for _ in range(count)], [], [f"fleet-{count}"])
        if got.cores < cores and self.report_short:
            got.errors.append(PoolError(*request.pool, "Unfulfilled", f"{got.cores} of {cores}"))
        return got

    def record(self, request: LaunchRequest, state: str = "pending") -> InstanceRecord:
        r = InstanceRecord(
            f"i-{len(self.records):04d}", request.role, request.instance_type, request.zone,
            request.market, state, NOW, request.vcpus, hourly=request.hourly,
        )  # fmt: skip
        self.records.append(r)
        return r

    def instances(self, ident, states=None) -> list[InstanceRecord]:
        return [r for r in self.records if states is None or r.state in states]

    def node_failures(self, ident) -> list[str]:
        return self.failures

    def _unused(self, *args, **kwargs):
        raise NotImplementedError("provision.py does not call this")

    prepare = launch_template = launch_instance = scheduler_address = _unused
    bucket = teardown = leftovers = survey = _unused


def make_spec(**fields: Any) -> JobSpec:
    """24 cores of 4-vCPU spot types: a plan of three pools of 8 cores (max_pool_share 0.4);
    max_runtime + grace is one hour, so max_cost is a $/h too."""
    return parse_spec(
        {
            "name": "t",
            "cores": 24,
            "max_runtime": "55m",
            "spot": "spot",
            "instance_types": ["c5.xlarge", "c6i.xlarge", "m5.xlarge"],
            "run": {"function": "m:f", "tasks": [1]},
            **fields,
        }
    )


def env(zones: list[str] = ZONES) -> NodeEnvironment:
    return NodeEnvironment("vpc-1", {z: f"subnet-{z}" for z in zones}, "sg-1", "profile", {})


def acquire(cloud: FakeCloud, spec: JobSpec, capacity_plan: Plan | None = None, **kw):
    provider: Provider = cloud  # a structural Provider
    return acquire_workers(provider, IDENT, kw.pop("env", env()), "lt-1",
                           capacity_plan or plan(spec), spec, **kw)  # fmt: skip


def asked(lines) -> list[tuple]:
    """The launch_fleet calls that ask each plan line for its cores, without a price cap."""
    return [(line.pool, line.cores, None) for line in lines]


def replan(spec: JobSpec, missing: int, failed, market="spot", zones=ZONES):
    return fallback_plan(spec, missing, set(failed), market=market, zones=zones).workers


# --------------------------------------------------------------------------- acquire_workers


def test_the_plans_pools_each_get_one_fleet_of_their_cores_and_nothing_more():
    spec = make_spec()
    capacity_plan = plan(spec)
    assert [line.cores for line in capacity_plan.workers] == [8, 8, 8]
    cloud, seen = FakeCloud(), []
    got = acquire(cloud, spec, capacity_plan, on_launch=seen.append)
    assert cloud.calls == asked(capacity_plan.workers)
    assert got.cores == 24 and got.errors == [] and len(seen) == 3
    assert [(r.instance_type, r.zone, r.market) for r in got.records] == [
        line.pool for line in capacity_plan.workers for _ in range(line.count)
    ]


@pytest.mark.parametrize("behaviour", [ICE, "SpotMaxPriceTooLow", 1])
def test_a_pool_that_errs_or_fills_short_is_left_out_of_the_replan(behaviour):
    spec = make_spec()
    first, *others = plan(spec).workers
    cloud = FakeCloud({first.pool: behaviour})
    got = acquire(cloud, spec)
    came = 4 if behaviour == 1 else 0  # one 4-vCPU instance, or none
    again = replan(spec, 8 - came, {first.pool})
    assert cloud.calls == asked([first, *others]) + asked(again)
    assert first.pool not in [line.pool for line in again]
    assert got.cores == 24
    code = "Unfulfilled" if behaviour == 1 else behaviour
    assert [(e.instance_type, e.zone, e.market, e.code) for e in got.errors] == [
        (*first.pool, code)
    ]


def test_a_short_fill_without_any_error_is_left_out_of_the_replan_too():
    spec = make_spec()
    first, *others = plan(spec).workers
    cloud = FakeCloud({first.pool: 1}, report_short=False)
    got = acquire(cloud, spec)
    assert cloud.calls == asked([first, *others]) + asked(replan(spec, 4, {first.pool}))
    assert got.cores == 24


def test_pools_that_give_nothing_without_an_error_are_each_asked_once():
    spec = make_spec()
    cloud = FakeCloud({"spot": 0}, report_short=False)
    with pytest.raises(
        CloudError, match=r"^only 0 of the 24 cores needed came up \(the cloud gave"
    ):
        acquire(cloud, spec)
    pools = [pool for pool, _, _ in cloud.calls]
    assert len(pools) == len(set(pools)) > 3


def test_spot_only_raises_saying_how_many_cores_came_up_when_spot_runs_out():
    spec = make_spec()
    first, *others = plan(spec).workers
    cloud = FakeCloud({first.pool: first.count, "spot": ICE})  # the first pool has no more
    with pytest.raises(CloudError) as caught:
        acquire(cloud, spec)
    assert str(caught.value).startswith("only 8 of the 24 cores needed came up (")
    assert caught.value.exit_code == 3
    assert "spot-with-fallback" in caught.value.fix and "min_cores" in caught.value.fix
    # the plan, then two re-plans of the 16 missing cores, each without the pools that failed
    failed = {line.pool for line in others}
    again = replan(spec, 16, failed)
    assert cloud.calls == asked([first, *others]) + asked(again) + asked(
        replan(spec, 16, failed | {line.pool for line in again})
    )
    assert {pool[2] for pool, _, _ in cloud.calls} == {"spot"}


def test_spot_with_fallback_takes_the_rest_on_demand():
    spec = make_spec(spot="spot-with-fallback")
    first, *others = plan(spec).workers
    cloud = FakeCloud({first.pool: first.count, "spot": ICE})
    got = acquire(cloud, spec)
    on_demand = [c for c in cloud.calls if c[0][2] == "on-demand"]
    assert on_demand == asked(replan(spec, 16, (), market="on-demand"))
    assert cloud.calls[-len(on_demand) :] == on_demand  # after every spot round
    assert got.cores == 24
    assert (
        sorted((r.market, r.vcpus) for r in got.records)
        == [("on-demand", 4)] * 4 + [("spot", 4)] * 2
    )


@pytest.mark.parametrize("field", ["max_hourly", "max_cost"])
def test_every_fleet_is_capped_at_the_budget_left(field):
    spec0 = make_spec()
    capacity_plan = plan(spec0)
    spec = make_spec(**{field: str(capacity_plan.hourly)})  # just fits, scheduler included
    (scheduler,) = [line for line in capacity_plan.lines if line.role == "scheduler"]
    budget = capacity_plan.hourly - scheduler.total_hourly  # its address and volume included
    cloud = FakeCloud()
    got = acquire(cloud, spec, capacity_plan)
    caps, spent = [], Decimal(0)
    for line in capacity_plan.workers:
        caps.append(budget - spent)
        spent += line.total_hourly
    assert cloud.calls == [
        (ln.pool, ln.cores, cap) for ln, cap in zip(capacity_plan.workers, caps, strict=True)
    ]
    # 0.2902 of instances, 0.03 of their six public IPv4 addresses and 0.005262 of their six
    # 8 GiB gp3 root volumes
    assert caps[0] == Decimal("0.325462") and caps[-1] == capacity_plan.workers[-1].total_hourly
    assert got.cores == 24


def test_launching_stops_when_not_one_more_instance_fits_the_budget():
    spec0 = make_spec()
    capacity_plan = plan(spec0)
    spec = make_spec(max_hourly=str(capacity_plan.hourly), min_cores=20)
    first, second, third = capacity_plan.workers
    cloud = FakeCloud({first.pool: ICE})
    got = acquire(cloud, spec, capacity_plan)
    budget = capacity_plan.hourly - capacity_plan.lines[0].total_hourly  # less the scheduler
    left = budget - second.total_hourly - third.total_hourly  # the failed pool's share
    (top_up,) = replan(spec, 8, {first.pool})  # two instances: the cap lets one through
    assert (top_up.count, left // top_up.node_hourly) == (2, 1)
    (last,) = replan(spec, 4, {first.pool, top_up.pool})
    assert left - top_up.node_hourly < last.node_hourly  # so the last re-plan asks nothing
    assert cloud.calls == [
        (first.pool, 8, budget),
        (second.pool, 8, budget),
        (third.pool, 8, budget - second.total_hourly),
        (top_up.pool, 8, left),
    ]
    assert got.cores == 20
    with pytest.raises(CloudError, match="only 20 of the 24 cores"):
        acquire(FakeCloud({first.pool: ICE}), make_spec(max_hourly=spec.max_hourly), capacity_plan)


@pytest.mark.parametrize("min_cores", [16, 12, 17])
def test_min_cores_is_the_shortfall_allowed(min_cores):
    spec = make_spec(min_cores=min_cores)
    first, second, _ = plan(spec).workers
    cloud = FakeCloud({first.pool: first.count, second.pool: second.count, "spot": ICE})
    if min_cores > 16:
        with pytest.raises(CloudError, match=f"^only 16 of the {min_cores} cores needed"):
            acquire(cloud, spec)
    else:
        assert acquire(cloud, spec).cores == 16


def test_a_zone_without_a_subnet_is_a_no_subnet_error_and_replanned_elsewhere():
    spec = make_spec()
    lines = plan(spec).workers
    gap = lines[1].zone
    zones = [z for z in ZONES if z != gap]
    cloud, seen = FakeCloud(), []
    got = acquire(cloud, spec, env=env(zones), on_launch=seen.append)
    assert [(e.instance_type, e.zone, e.market, e.code) for e in got.errors] == [
        (*lines[1].pool, "NoSubnet")
    ]
    assert [f.errors for f in seen if f.errors] == [got.errors]
    again = replan(spec, 8, {lines[1].pool}, zones=zones)
    assert cloud.calls == asked([lines[0], lines[2]]) + asked(again)
    assert gap not in {pool[1] for pool, _, _ in cloud.calls}
    assert got.cores == 24


def test_a_pool_beyond_the_fleet_limit_takes_several_fleets_each_seen_at_once():
    spec = make_spec(cores=48, max_pool_share=1)
    capacity_plan = plan(spec)
    (line,) = capacity_plan.workers  # one pool, 12 instances
    cloud, seen = FakeCloud(chunk=18), []
    got = acquire(
        cloud, spec, capacity_plan,
        on_launch=lambda f: seen.append((len(cloud.calls), f.cores)),
    )  # fmt: skip
    assert cloud.calls == [(line.pool, 16, None)] * 3
    assert seen == [(1, 16), (2, 16), (3, 16)]  # each fleet as it came, not all at the end
    assert got.cores == 48 and len(got.fleet_ids) == 3


def test_an_erring_pool_is_not_asked_again_for_its_other_chunks():
    spec = make_spec(cores=48, max_pool_share=1)
    (line,) = plan(spec).workers
    cloud = FakeCloud({line.pool: ICE}, chunk=16)
    acquire(cloud, spec)
    assert [c for c in cloud.calls if c[0] == line.pool] == [(line.pool, 16, None)]


# --------------------------------------------------------------------------- check_nodes


def launched(cloud: FakeCloud) -> list[InstanceRecord]:
    scheduler = LaunchRequest("m5.large", "us-east-1a", "on-demand", 2, Decimal("0.1"), "scheduler")
    worker = LaunchRequest("c5.xlarge", "us-east-1a", "spot", 4, Decimal("0.05"))
    return [cloud.record(scheduler)] + [cloud.record(worker) for _ in range(4)]


def test_check_nodes_raises_naming_a_failed_node():
    cloud = FakeCloud()
    cloud.failures = ["i-0002: pip install failed: no matching distribution"]
    with pytest.raises(CloudError, match="nodes failed to start: i-0002: pip install failed"):
        check_nodes(cloud, IDENT, launched(cloud), 16)


def test_check_nodes_says_one_cause_once_with_its_count_the_schedulers_first():
    cloud = FakeCloud()
    worker, scheduler = "boot of the worker failed: dnf", "boot of the scheduler failed: dnf"
    cloud.failures = [worker, worker, scheduler, worker]
    with pytest.raises(CloudError) as raised:
        check_nodes(cloud, IDENT, launched(cloud), 16)
    assert raised.value.args[0] == f"nodes failed to start: {scheduler}; {worker} (3 nodes)"


def test_check_nodes_raises_when_the_scheduler_is_gone():
    cloud = FakeCloud()
    nodes = launched(cloud)
    nodes[0].state = "terminated"
    with pytest.raises(CloudError, match=r"before joining: scheduler i-0000; 16 worker cores left"):
        check_nodes(cloud, IDENT, nodes, 4)


def test_check_nodes_raises_when_too_few_worker_cores_are_left():
    cloud = FakeCloud()
    nodes = launched(cloud)
    nodes[1].state, nodes[2].state = "shutting-down", "terminated"
    with pytest.raises(CloudError, match="worker i-0001, worker i-0002; 8 worker cores left of "
                                         "the 12 needed"):  # fmt: skip
        check_nodes(cloud, IDENT, nodes, 12)


def test_check_nodes_returns_the_live_workers_when_enough_are_left():
    cloud = FakeCloud()
    nodes = launched(cloud)
    nodes[1].state = "terminated"
    assert check_nodes(cloud, IDENT, nodes, 12) == nodes[2:]
    assert check_nodes(FakeCloud(), IDENT, nodes, 16) == nodes[1:]  # a cloud with none gone


# --------------------------------------------------------------------------- top_up


def more(cloud: FakeCloud, spec: JobSpec, cores: int, running=Decimal(0), exclude=(), **kw):
    return top_up(cloud, IDENT, env(), "lt-1", kw.pop("capacity_plan", plan(spec)), spec,
                  cores, running, exclude=exclude, **kw)  # fmt: skip


def test_a_scale_up_is_planned_with_the_pool_share_a_fleet_per_pool():
    spec = make_spec()
    got = more(FakeCloud(), spec, 12)
    wanted = plan(make_spec(cores=12)).workers
    assert len(wanted) > 1  # the pool share spreads the 12 cores too
    assert got.cores == 12
    cloud = FakeCloud()
    more(cloud, spec, 12)
    assert cloud.calls == asked(wanted)


def test_a_replacement_leaves_out_the_interrupted_pool_then_falls_back_to_on_demand():
    spec = make_spec(spot="spot-with-fallback")
    lost = plan(spec).workers[0].pool
    cloud = FakeCloud({"spot": ICE})
    got = more(cloud, spec, 8, exclude={lost})
    spot_asked = [c[0] for c in cloud.calls if c[0][2] == "spot"]
    assert spot_asked and lost not in spot_asked  # re-planned without the interrupted pool
    assert [c for c in cloud.calls if c[0][2] == "on-demand"] == asked(
        replan(spec, 8, (), market="on-demand"))
    assert got.cores == 8 and {r.market for r in got.records} == {"on-demand"}
    # Spot only: what spot cannot give is not taken on demand, and no error is raised.
    got = more(FakeCloud({"spot": ICE}), make_spec(), 8, exclude={lost})
    assert got.cores == 0 and got.errors


def test_a_top_up_counts_what_already_runs_against_the_budget():
    capacity_plan = plan(make_spec())
    spec = make_spec(max_hourly=str(capacity_plan.hourly))
    workers = capacity_plan.hourly - capacity_plan.lines[0].total_hourly  # the scheduler aside
    assert hourly_budget_left(capacity_plan, spec, workers) == 0
    cloud = FakeCloud()
    got = more(cloud, spec, 8, running=workers, capacity_plan=capacity_plan)
    assert got.cores == 0 and cloud.calls == []  # not one more instance fits
    half = workers / 2
    cloud = FakeCloud()
    got = more(cloud, spec, 8, running=half, capacity_plan=capacity_plan)
    assert cloud.calls and all(cap <= workers - half for _, _, cap in cloud.calls)
    assert sum(r.hourly for r in got.records) <= workers - half
    assert hourly_budget_left(capacity_plan, make_spec(), workers) is None


@pytest.mark.parametrize("code", ["MaxSpotInstanceCountExceeded", "RequestLimitExceeded"])
def test_an_account_limit_closes_the_market_at_once_and_falls_back(code):
    """A quota or the launch rate is the account's, not a pool's: re-planning into other
    spot pools would only meet it again, so on-demand is asked next."""
    spec = make_spec(spot="spot-with-fallback")
    first, *_ = plan(spec).workers
    cloud = FakeCloud({first.pool: code})
    got = acquire(cloud, spec)
    spot_calls = [c for c in cloud.calls if c[0][2] == "spot"]
    assert spot_calls == asked([first])  # no other spot pool, no re-plan
    assert got.cores == 24 and {r.market for r in got.records} == {"on-demand"}


def test_a_vcpu_limit_on_demand_fails_with_the_quota_fix():
    spec = make_spec(spot="on-demand")
    cloud = FakeCloud({"on-demand": "VcpuLimitExceeded"})
    with pytest.raises(CloudError) as caught:
        acquire(cloud, spec)
    assert len(cloud.calls) == 1
    assert "VcpuLimitExceeded" in caught.value.fix and "burst doctor" in caught.value.fix


def test_launches_wait_for_ec2s_instance_bucket():
    """1,000 instances, refilling 2/s: a fleet waits for its instances, never more."""
    now, slept = [0.0], []

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    pacer = LaunchPacer(size=10, refill=2, clock=lambda: now[0], sleep=sleep)
    assert pacer.take(10) == 0  # a full bucket launches at once
    assert pacer.take(4) == 2.0  # then 4 instances wait for 4 tokens at 2/s
    now[0] += 1.0  # a second without launches: 2 tokens back
    assert pacer.take(2) == 0 and pacer.take(1) == 0.5
    assert slept == [2.0, 0.5] and pacer.waited == 2.5


def test_every_fleet_draws_its_instances_from_the_regions_bucket(monkeypatch):
    pacer = LaunchPacer(size=1000, refill=2, clock=lambda: 0.0, sleep=lambda s: None)
    monkeypatch.setitem(LaunchPacer._regions, "us-east-1", pacer)
    spec = make_spec(cores=4000)
    got = acquire(FakeCloud(), spec)
    # 4000 cores of 4-vCPU types: 1000 instances, the whole bucket; the next fleet waits.
    assert len(got.records) == 1000 and pacer.tokens == 0
    assert pacer.take(10) == 5.0
