"""Provisioning takes a number of cloud calls that grows with fleets, never with instances."""

from __future__ import annotations

import importlib.util
import math

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.sandbox  # the benchmark runs moto's server, the sandbox's control plane

_path = REPO / "scripts" / "bench_provision.py"
spec = importlib.util.spec_from_file_location("bench_provision", _path)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_calls_do_not_grow_with_instances():
    small = bench.measure(160, instance_types=["c5.4xlarge"])  # 10 workers
    large = bench.measure(1600, instance_types=["c5.4xlarge"])  # 100 workers
    assert (small["instances"], large["instances"]) == (11, 101)
    assert large["cores_launched"] >= 1600
    # A fleet per planned pool, whatever the number of instances in it.
    pools = len(large["worker_pools_planned"])
    assert small["fleets"] == large["fleets"] == pools == len(small["worker_pools_planned"])
    for phase in ("provision", "teardown"):
        assert large[phase]["ec2_calls"] == small[phase]["ec2_calls"]
        assert large[phase]["ec2_mutating_calls"] <= 10
    assert large["teardown_verified"] and small["teardown_verified"]
    # Behind the sandbox's AWS request limits, nothing was throttled.
    assert large["throttled"] == small["throttled"] == {}


def test_fleets_are_split_under_the_per_fleet_instance_limit(monkeypatch):
    monkeypatch.setattr("burst.cloud.aws.FLEET_MAX_INSTANCES", 15)
    result = bench.measure(1600, instance_types=["c5.4xlarge"])  # 100 workers
    expected = sum(math.ceil(p["count"] / 15) for p in result["worker_pools_planned"])
    assert expected > len(result["worker_pools_planned"])  # some pool needed several fleets
    assert result["fleets"] == expected and result["cores_launched"] >= 1600
    assert result["teardown"]["ec2_calls"]["DeleteFleets"] == expected
    assert result["teardown_verified"]
