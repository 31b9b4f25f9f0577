"""Fault drills: moto has no EC2 faults, so they are injected with botocore event hooks on the
sessions burst opens, and each drill checks what burst sent and that nothing is left."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError
from typer.testing import CliRunner

from burst.cli import EXIT_CLOUD, app
from burst.cloud import sandbox as sandbox_module
from burst.cloud.base import CloudError
from burst.events import CapacityShort, Event
from burst.runner import run
from tests.conftest import settled_leftovers
from tests.test_pipeline import write_job

THROTTLED = b"""<?xml version="1.0" encoding="UTF-8"?>
<Response><Errors><Error><Code>RequestLimitExceeded</Code>
<Message>Request limit exceeded.</Message></Error></Errors>
<RequestID>drill</RequestID></Response>"""


@dataclass
class Faults:
    """What EC2 Fleet should do wrong, and every CreateFleet request burst sent."""

    empty: set[tuple[str, str]] = field(default_factory=set)  # (instance type, market)
    first_spot_pools_empty: bool = False  # the pools of the first spot request have nothing
    spot_fill: float = 1.0  # the share of its target the first spot fleet fills
    spot_fleets: int | None = None  # spot requests after this many find no capacity
    empty_pools: set[tuple[str, str]] = field(default_factory=set)  # (type, subnet) found empty
    throttle: int = 0  # how many CreateFleet calls are throttled first
    refuse: str | None = None  # every CreateFleet fails with this error code
    sent: list[dict] = field(default_factory=list)
    throttled: int = 0

    def _market(self, params: dict) -> str:
        return params["TargetCapacitySpecification"]["DefaultTargetCapacityType"]

    def _errors(self, params: dict, pools: list[dict], code: str) -> list[dict]:
        template = params["LaunchTemplateConfigs"][0]["LaunchTemplateSpecification"]
        return [
            {
                "LaunchTemplateAndOverrides": {
                    "LaunchTemplateSpecification": template,
                    "Overrides": pool,
                },
                "Lifecycle": self._market(params),
                "ErrorCode": code,
                "ErrorMessage": "There is no capacity in this pool (drill).",
            }
            for pool in pools
        ]

    def before_build(self, params: dict, context: dict, **kwargs) -> None:
        self.sent.append(json.loads(json.dumps(params)))
        if self.refuse:
            raise ClientError({"Error": {"Code": self.refuse, "Message": "drill"}}, "CreateFleet")
        config = params["LaunchTemplateConfigs"][0]
        market = self._market(params)
        first_spot = market == "spot" and not any(self._market(r) == "spot" for r in self.sent[:-1])
        spot_requests = sum(self._market(r) == "spot" for r in self.sent)
        if market == "spot" and self.spot_fleets is not None and spot_requests > self.spot_fleets:
            self.empty_pools |= {(o["InstanceType"], o["SubnetId"]) for o in config["Overrides"]}
        if first_spot and self.first_spot_pools_empty:
            self.empty_pools |= {(o["InstanceType"], o["SubnetId"]) for o in config["Overrides"]}
        empty = [
            o
            for o in config["Overrides"]
            if (o["InstanceType"], market) in self.empty
            or (market == "spot" and (o["InstanceType"], o["SubnetId"]) in self.empty_pools)
        ]
        # EC2 moves on to the pools that have capacity, and names the ones that had none.
        config["Overrides"] = [o for o in config["Overrides"] if o not in empty]
        context["drill_errors"] = self._errors(params, empty, "InsufficientInstanceCapacity")
        if first_spot and self.spot_fill < 1.0 and config["Overrides"]:
            target = params["TargetCapacitySpecification"]
            units = int(target["TotalTargetCapacity"] * self.spot_fill)
            for key in ("TotalTargetCapacity", "SpotTargetCapacity", "OnDemandTargetCapacity"):
                if key in target:
                    target[key] = units
            context["drill_errors"] += self._errors(
                params, config["Overrides"][:1], "InsufficientInstanceCapacity"
            )
        if not config["Overrides"]:
            config["Overrides"] = empty  # a valid request; before_call answers it
            context["drill_empty"] = True

    def before_call(self, context: dict, **kwargs):
        if context.get("drill_empty"):
            # No pool had capacity: EC2 answers with errors and no fleet instances.
            return AWSResponse(None, 200, {}, None), {
                "FleetId": "fleet-drill",
                "Instances": [],
                "Errors": context["drill_errors"],
            }
        return None

    def before_send(self, request, **kwargs):
        if self.throttled < self.throttle:
            self.throttled += 1
            return AWSResponse(request.url, 503, {}, _Raw(THROTTLED))
        return None

    def after_call(self, parsed: dict, context, **kwargs) -> None:
        if not context.get("drill_empty"):  # else before_call answered with the errors
            parsed.setdefault("Errors", [])
            parsed["Errors"] += context.get("drill_errors", [])


class _Raw:
    def __init__(self, body: bytes):
        self.body = body

    def stream(self, **kwargs):
        yield self.body


@pytest.fixture
def faults(monkeypatch):
    drill = Faults()
    real_session = sandbox_module.session

    def session(*args, **kwargs):
        faulty = real_session(*args, **kwargs)
        events = faulty.events
        events.register("before-parameter-build.ec2.CreateFleet", drill.before_build)
        events.register("before-call.ec2.CreateFleet", drill.before_call)
        events.register("before-send.ec2.CreateFleet", drill.before_send)
        events.register("after-call.ec2.CreateFleet", drill.after_call)
        return faulty

    monkeypatch.setattr(sandbox_module, "session", session)
    return drill


def _job(tmp_path, monkeypatch, name: str, extra: str = "") -> str:
    monkeypatch.chdir(tmp_path)
    return write_job(tmp_path, name, "def task(x):\n    return -x\n", tasks="[1, 2]", extra=extra)


def _workers(result_or_manifest) -> list[dict]:
    manifest = getattr(result_or_manifest, "manifest", result_or_manifest)
    return [i for i in manifest["instances"] if i["role"] == "worker"]


def test_each_planned_pool_is_one_weighted_tagged_instant_fleet(
    sandbox, tmp_path, monkeypatch, faults
):
    result = run(_job(tmp_path, monkeypatch, "fleet_shape", "cores: 8\n"))
    assert result.ok and result.results == [-1, -2]
    planned = sorted(
        (line["instance_type"], line["vcpus"], line["count"] * line["vcpus"])
        for line in result.manifest["plan"]["lines"]
        if line["role"] == "worker"
    )
    asked = []
    for request in faults.sent:
        assert request["Type"] == "instant"
        assert request["SpotOptions"]["AllocationStrategy"] == "price-capacity-optimized"
        assert {t["ResourceType"] for t in request["TagSpecifications"]} == {"fleet"}
        (override,) = _overrides(request)
        target = request["TargetCapacitySpecification"]
        assert target["SpotTargetCapacity"] == target["TotalTargetCapacity"]
        asked.append(
            (
                override["InstanceType"],
                int(override["WeightedCapacity"]),
                target["TotalTargetCapacity"],
            )
        )
    assert sorted(asked) == planned  # exactly the plan's mix, pool by pool
    assert len(set(result.manifest["fleets"])) == len(faults.sent)
    workers = _workers(result)
    assert sorted(w["zone"] for w in workers) == sorted(
        line["zone"]
        for line in result.manifest["plan"]["lines"]
        for _ in range(line["count"])
        if line["role"] == "worker"
    )
    assert settled_leftovers(sandbox, result.manifest["cluster_id"]) == []


def test_spot_shortage_falls_back_to_on_demand(sandbox, tmp_path, monkeypatch, faults):
    faults.empty = {("c5.large", "spot")}
    result = run(_job(tmp_path, monkeypatch, "fallback_job"))
    assert result.ok and result.results == [-1, -2]
    assert {w["market"] for w in _workers(result)} == {"on-demand"}
    markets = [r["TargetCapacitySpecification"]["DefaultTargetCapacityType"] for r in faults.sent]
    assert markets[0] == "spot" and markets[-1] == "on-demand"  # spot was asked for first
    assert any("InsufficientInstanceCapacity" in e for e in result.manifest["capacity_errors"])
    assert settled_leftovers(sandbox, result.manifest["cluster_id"]) == []


def test_capacity_errors_on_the_first_pools_move_to_other_pools(
    sandbox, tmp_path, monkeypatch, faults
):
    faults.first_spot_pools_empty = True
    result = run(_job(tmp_path, monkeypatch, "next_pools_job", "spot: spot\n"))
    assert result.ok and result.results == [-1, -2]
    first, *later = faults.sent
    tried = {(o["InstanceType"], o["SubnetId"]) for o in _overrides(first)}
    assert later and all(tried.isdisjoint(_pools(r)) for r in later)  # never asked again
    workers = _workers(result)
    assert {w["market"] for w in workers} == {"spot"}
    assert sum(w["vcpus"] for w in workers) >= 4
    assert len(result.manifest["capacity_errors"]) == len(tried)
    assert settled_leftovers(sandbox, result.manifest["cluster_id"]) == []


def test_partial_spot_fill_is_topped_up_from_other_pools(sandbox, tmp_path, monkeypatch, faults):
    faults.spot_fill = 0.5
    result = run(_job(tmp_path, monkeypatch, "partial_job", "cores: 8\n"))
    assert result.ok
    planned = [line for line in result.manifest["plan"]["lines"] if line["role"] == "worker"]
    first, *_, top_up = faults.sent
    assert len(faults.sent) == len(planned) + 1  # the plan's fleets, then one for the shortfall
    assert _pools(first).isdisjoint(_pools(top_up))  # the pool that ran dry is not asked again
    short = top_up["TargetCapacitySpecification"]["TotalTargetCapacity"]
    assert 0 < short < first["TargetCapacitySpecification"]["TotalTargetCapacity"]
    assert sum(w["vcpus"] for w in _workers(result)) >= 8
    assert settled_leftovers(sandbox, result.manifest["cluster_id"]) == []


def _overrides(request: dict) -> list[dict]:
    return request["LaunchTemplateConfigs"][0]["Overrides"]


def _pools(request: dict) -> set[tuple[str, str]]:
    return {(o["InstanceType"], o["SubnetId"]) for o in _overrides(request)}


def test_throttling_is_retried_by_botocore(sandbox, tmp_path, monkeypatch, faults):
    faults.throttle = 2
    result = run(_job(tmp_path, monkeypatch, "throttled_job"))
    assert result.ok and faults.throttled == 2
    assert settled_leftovers(sandbox, result.manifest["cluster_id"]) == []


def test_spot_only_shortage_is_a_cloud_error_and_tears_down(sandbox, tmp_path, monkeypatch, faults):
    faults.empty = {("c5.large", "spot")}
    spec = _job(tmp_path, monkeypatch, "spot_only_job", "spot: spot\n")
    with pytest.raises(CloudError, match="c5.large in us-east-1.*InsufficientInstanceCapacity"):
        run(spec)
    manifest = json.loads(next((tmp_path / "results").glob("*/manifest.json")).read_text())
    assert manifest["status"] == "error" and manifest["teardown"]["verified"]
    assert settled_leftovers(sandbox, manifest["cluster_id"]) == []

    before = set((tmp_path / "results").glob("*/manifest.json"))
    outcome = CliRunner().invoke(app, ["run", str(spec)])
    assert outcome.exit_code == EXIT_CLOUD
    assert "InsufficientInstanceCapacity" in outcome.output
    [path] = set((tmp_path / "results").glob("*/manifest.json")) - before
    assert settled_leftovers(sandbox, json.loads(path.read_text())["cluster_id"]) == []


def test_fleet_error_after_the_network_exists_tears_everything_down(
    sandbox, tmp_path, monkeypatch, faults
):
    faults.refuse = "UnauthorizedOperation"
    # The provider seam: botocore's error arrives as burst's, with its code and a fix.
    with pytest.raises(CloudError, match="UnauthorizedOperation") as refused:
        run(_job(tmp_path, monkeypatch, "refused_job"))
    assert refused.value.code == "UnauthorizedOperation" and refused.value.exit_code == 3
    assert "scripts/iam-policy.json" in refused.value.fix
    assert isinstance(refused.value.__cause__, ClientError)
    manifest = json.loads(next((tmp_path / "results").glob("*/manifest.json")).read_text())
    # The security group, role, template, secret and scheduler existed, and are gone.
    assert any(d.startswith("sg-") for d in manifest["teardown"]["deleted"])
    assert any(d.startswith("lt-") for d in manifest["teardown"]["deleted"])
    assert manifest["teardown"]["verified"]
    assert settled_leftovers(sandbox, manifest["cluster_id"]) == []


def test_a_shortfall_above_min_cores_runs_on_what_came_up(sandbox, tmp_path, monkeypatch, faults):
    faults.spot_fleets = 1  # the first pool fills; every other spot pool is dry
    seen: list[Event] = []
    spec = _job(tmp_path, monkeypatch, "short_job", "cores: 8\nmin_cores: 2\nspot: spot\n")
    result = run(spec, on_event=seen.append)
    assert result.ok and result.results == [-1, -2]
    short = [e for e in seen if isinstance(e, CapacityShort)]
    worker_cores = result.manifest["cores"]["worker_vcpus"]
    assert len(short) == 1 and short[0].cores == worker_cores and 2 <= worker_cores < 8
    assert short[0].wanted == 8
    assert result.manifest["capacity_errors"]
    assert settled_leftovers(sandbox, result.manifest["cluster_id"]) == []
