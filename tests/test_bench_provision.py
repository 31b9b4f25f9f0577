"""Provisioning takes a number of cloud calls that grows with fleets, never with instances."""

from __future__ import annotations

import importlib.util

from tests.conftest import REPO

_path = REPO / "scripts" / "bench_provision.py"
spec = importlib.util.spec_from_file_location("bench_provision", _path)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_calls_do_not_grow_with_instances():
    small = bench.measure(160, instance_types=["c5.4xlarge"])  # 10 workers
    large = bench.measure(1600, instance_types=["c5.4xlarge"])  # 100 workers
    assert (small["instances"], large["instances"]) == (11, 101)
    assert large["cores_launched"] >= 1600 and small["fleets"] == large["fleets"] == 1
    for phase in ("provision", "teardown"):
        assert large[phase]["ec2_calls"] == small[phase]["ec2_calls"]
        assert large[phase]["ec2_mutating_calls"] <= 10
    assert large["teardown_verified"] and small["teardown_verified"]


def test_fleets_are_split_under_the_per_fleet_instance_limit(monkeypatch):
    monkeypatch.setattr("burst.cloud.aws.FLEET_MAX_INSTANCES", 40)
    result = bench.measure(1600, instance_types=["c5.4xlarge"])  # 100 workers, 40 per fleet
    assert result["fleets"] == 3 and result["cores_launched"] >= 1600
    assert result["provision"]["ec2_calls"]["CreateFleet"] == 3
    assert result["teardown"]["ec2_calls"]["DeleteFleets"] == 3
    assert result["teardown_verified"]
