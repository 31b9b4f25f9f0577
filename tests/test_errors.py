"""One error hierarchy, mapped to exit codes in one place; no botocore type above the cloud."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import boto3
import pytest
import typer
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from burst import cli
from burst.cloud import sandbox
from burst.cloud.aws import AwsProvider
from burst.cloud.base import ClusterIdentity
from burst.cloud.connect import open_provider
from burst.errors import (
    EXIT_BAD_INPUT,
    EXIT_BUDGET,
    EXIT_CLOUD,
    EXIT_INTERRUPTED,
    EXIT_JOB_FAILED,
    BudgetError,
    BurstError,
    CloudError,
    PlanError,
    SpecError,
)
from burst.plan import BudgetError as PlanBudgetError
from burst.plan import plan_within_budget
from burst.spec import parse_spec

SPEC = {"name": "e", "cores": 4, "max_runtime": "10m", "run": {"function": "m:f", "tasks": [1]}}


def test_every_burst_error_has_its_exit_code():
    assert SpecError(["cores: bad"]).exit_code == EXIT_BAD_INPUT == 2
    assert PlanError(["instance_types: none"]).exit_code == EXIT_BAD_INPUT
    assert CloudError("no").exit_code == EXIT_CLOUD == 3
    assert BudgetError("over").exit_code == EXIT_BUDGET == 4
    assert BurstError("x").exit_code == EXIT_JOB_FAILED == 1
    assert SpecError(["a", "b"]).problems == ["a", "b"] and str(SpecError(["a", "b"])) == "a; b"
    assert CloudError("no", "do this", code="Throttling").fix == "do this"
    # The planner's refusal is the budget error, with its cause and a computed fix.
    with pytest.raises(PlanBudgetError) as refused:
        plan_within_budget(parse_spec({**SPEC, "cores": 1000, "max_cost": "0.01"}))
    assert isinstance(refused.value, BudgetError) and refused.value.exit_code == 4
    assert "over max_cost $0.01" in str(refused.value) and "cores fit" in refused.value.fix


@pytest.mark.parametrize(
    ("error", "code", "lines"),
    [
        (CloudError("EC2 said no", "grant the policy"), 3, ["error: EC2 said no", "fix: grant"]),
        (SpecError(["cores: -1 is bad"]), 2, ["error: cores: -1", "the job spec is not valid"]),
        (KeyboardInterrupt(), 130, ["interrupted"]),
        (ZeroDivisionError("bug"), 1, ["ZeroDivisionError", "burst itself failed (a bug)"]),
    ],
)
def test_exit_for_maps_each_error_to_its_code_and_lines(error, code, lines, capsys):
    exit_ = cli.exit_for(error)
    assert isinstance(exit_, typer.Exit) and exit_.exit_code == code
    assert code in (EXIT_CLOUD, EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_JOB_FAILED)
    stderr = capsys.readouterr().err
    for line in lines:
        assert line in stderr


def test_a_budget_refusal_is_json_on_stdout_with_json(capsys):
    with pytest.raises(PlanBudgetError) as refused:
        plan_within_budget(parse_spec({**SPEC, "cores": 1000, "max_hourly": "0.5"}))
    assert cli.exit_for(refused.value, as_json=True).exit_code == 4
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "refused" and out["field"] == "max_hourly"


def _provider() -> AwsProvider:
    session = boto3.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    return AwsProvider(session, "us-east-1")


def test_botocore_errors_become_cloud_errors_at_the_provider():
    provider = _provider()
    ident = ClusterIdentity("c0ffee000001", "job", datetime.now(UTC))
    with Stubber(provider.ec2) as ec2:
        ec2.add_client_error("describe_vpcs", "UnauthorizedOperation", "You are not authorized")
        with pytest.raises(CloudError) as refused:
            provider.prepare(ident, ["us-east-1a"], "127.0.0.1/32", {})
    assert refused.value.code == "UnauthorizedOperation"
    assert "scripts/iam-policy.json" in refused.value.fix
    assert isinstance(refused.value.__cause__, ClientError)
    with Stubber(provider.ssm) as ssm:
        ssm.add_client_error("get_parameter", "ThrottlingException", "Rate exceeded")
        with pytest.raises(CloudError, match="ThrottlingException") as throttled:
            provider.scheduler_address(ident)
    assert throttled.value.code == "ThrottlingException" and throttled.value.exit_code == 3


def test_no_credentials_is_a_cloud_error_too(monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    provider = AwsProvider(boto3.Session(region_name="us-east-1"), "us-east-1")
    ident = ClusterIdentity("c0ffee000002", "job", datetime.now(UTC))
    with pytest.raises(CloudError, match="NoCredentialsError") as failed:
        provider.instances(ident)
    assert failed.value.fix == "check your network and credentials"


def test_open_provider_refuses_an_unknown_cloud():
    with pytest.raises(SpecError, match="cloud: 'gcp' is not accepted"):
        open_provider("gcp", "us-east-1")


def test_no_running_sandbox_is_none_and_a_broken_state_file_too(tmp_path, monkeypatch):
    monkeypatch.setenv("BURST_HOME", str(tmp_path))
    assert sandbox.running_sandbox() is None  # no state file
    assert open_provider("sandbox", "us-east-1", start_sandbox=False) is None
    sandbox.state_file().write_text("{not json")
    assert sandbox.running_sandbox() is None
    # A sandbox that is gone (nothing listens on its port any more).
    sandbox.state_file().write_text(json.dumps({"endpoint": "http://127.0.0.1:9", "pid": 1}))
    assert sandbox.running_sandbox() is None


def test_one_unknown_fleet_id_does_not_hide_the_others_from_teardown():
    """EC2 fails a whole DescribeFleets batch for one unknown id (a tag seen before its
    fleet, or a fleet long gone): teardown then asks for each alone and skips the unknown."""
    provider = _provider()
    fleet = {"FleetId": "fleet-a", "FleetState": "active"}
    with Stubber(provider.ec2) as ec2:
        ec2.add_client_error("describe_fleets", "InvalidFleetId.NotFound", "fleet-b unknown")
        ec2.add_response("describe_fleets", {"Fleets": [fleet]}, {"FleetIds": ["fleet-a"]})
        ec2.add_client_error("describe_fleets", "InvalidFleetId.NotFound", "fleet-b unknown")
        assert provider._describe_fleets(["fleet-a", "fleet-b"]) == [fleet]
    with Stubber(provider.ec2) as ec2:  # any other error is not swallowed
        ec2.add_client_error("describe_fleets", "UnauthorizedOperation", "no")
        with pytest.raises(ClientError):
            provider._describe_fleets(["fleet-a"])


def test_the_client_address_can_be_given_and_a_bad_one_is_named(monkeypatch):
    from burst.cloud.aws import client_cidr

    monkeypatch.setenv("BURST_CLIENT_CIDR", "203.0.113.7")
    assert client_cidr() == "203.0.113.7/32"
    monkeypatch.setenv("BURST_CLIENT_CIDR", "10.1.2.3/16")
    assert client_cidr() == "10.1.0.0/16"
    monkeypatch.setenv("BURST_CLIENT_CIDR", "my laptop")
    with pytest.raises(CloudError, match="'my laptop' is not an address") as refused:
        client_cidr()
    assert refused.value.exit_code == 3


def test_a_fleet_waits_for_a_new_instance_profile_instead_of_dropping_the_pool(monkeypatch):
    """An instant fleet reports a profile IAM has not propagated yet as its error, with
    nothing launched: asked again, as RunInstances is, not taken for a pool without capacity."""
    from decimal import Decimal

    from burst.cloud.base import LaunchRequest, NodeEnvironment

    monkeypatch.setattr("burst.cloud.aws.time.sleep", lambda seconds: None)
    provider = _provider()
    ident = ClusterIdentity("c0ffee000001", "job", datetime.now(UTC))
    env = NodeEnvironment("vpc-1", {"us-east-1a": "subnet-1"}, "sg-1", "profile", {})
    request = LaunchRequest("c5.large", "us-east-1a", "spot", 2, Decimal("0.03"), "worker")
    not_yet = {
        "FleetId": "fleet-1",
        "Errors": [{"ErrorCode": "InvalidParameterValue",
                    "ErrorMessage": "Value (burst-x) for parameter iamInstanceProfile.name is "
                                    "invalid. Invalid IAM Instance Profile name"}],
    }  # fmt: skip
    launched = {"FleetId": "fleet-2", "Instances": [{"InstanceIds": ["i-1"]}]}
    with Stubber(provider.ec2) as ec2:
        ec2.add_response("create_fleet", not_yet)
        ec2.add_response("create_fleet", launched)
        got = provider.launch_fleet(ident, env, "lt-1", request, 2)
    assert [r.instance_id for r in got.records] == ["i-1"] and got.errors == []
