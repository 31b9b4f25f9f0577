"""The sandbox enforces AWS's account limits: request rates, the launch rate and vCPU quotas,
answered with AWS's own error codes (burst/cloud/limits.py)."""

from __future__ import annotations

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from burst.cloud import limits
from burst.cloud import sandbox as sandbox_module

ONCE = Config(retries={"max_attempts": 1})


def test_a_bucket_empties_and_refills_at_its_rate():
    bucket = limits.Bucket(size=3, refill=2)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    bucket.stamp -= 1.0  # a second passes: two tokens back, never more than the size
    assert bucket.take(2) and not bucket.take()
    bucket.stamp -= 100.0
    assert bucket.take(3) and not bucket.take()


def test_settings_are_parsed_and_bad_ones_named():
    assert limits.quotas_from("L-34B43A08=640")["L-34B43A08"] == 640
    assert limits.quotas_from("")["L-1216C47A"] == limits.DEFAULT_QUOTAS["L-1216C47A"]
    assert limits.buckets_from("ssm.read=5/1")["ssm.read"] == (5.0, 1.0)
    assert limits.buckets_from("off") is None
    with pytest.raises(ValueError, match="unknown quota L-XXXX"):
        limits.quotas_from("L-XXXX=1")
    with pytest.raises(ValueError, match="L-34B43A08=lots is not a number"):
        limits.quotas_from("L-34B43A08=lots")
    with pytest.raises(ValueError, match="unknown bucket ec2.magic"):
        limits.buckets_from("ec2.magic=1/1")
    with pytest.raises(ValueError, match="'ssm.read' is not NAME=VALUE"):
        limits.buckets_from("ssm.read")


def test_a_fleet_request_is_counted_in_instances_and_vcpus():
    params = {
        "Action": "CreateFleet",
        "LaunchTemplateConfigs.1.Overrides.1.InstanceType": "c5.xlarge",
        "LaunchTemplateConfigs.1.Overrides.1.WeightedCapacity": "4",
        "TargetCapacitySpecification.TotalTargetCapacity": "16",
        "TargetCapacitySpecification.DefaultTargetCapacityType": "spot",
    }
    launch = limits._fleet(params)
    assert launch.instances == 4 and launch.vcpus == {"spot": 16, "on-demand": 0}
    run = limits._run_instances({"InstanceType": "m5.2xlarge", "MaxCount": "3"})
    assert run.instances == 3 and run.vcpus == {"on-demand": 24}


@pytest.fixture
def limited(monkeypatch, tmp_path):
    """A private sandbox with small quotas and buckets, as a drill sets them."""
    monkeypatch.setenv("BURST_SANDBOX_QUOTAS", "L-34B43A08=8,L-1216C47A=4")
    monkeypatch.setenv("BURST_SANDBOX_LIMITS", "ssm.read=5/0.01,ec2.non-mutating=100/20")
    with sandbox_module.Sandbox(tmp_path) as cloud:
        yield cloud


# moto's state is one per process, like one account: a region no other test launches in.
REGION = "us-west-2"


def _client(cloud, service, config=ONCE):
    session = boto3.Session(region_name=REGION, **cloud.credentials)
    return session.client(service, endpoint_url=cloud.endpoint, config=config)


def _ami(ec2) -> str:
    return ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]


@pytest.mark.sandbox
def test_quotas_are_served_and_launches_past_them_refused(limited):
    quotas = _client(limited, "service-quotas")
    got = quotas.get_service_quota(ServiceCode="ec2", QuotaCode="L-34B43A08")["Quota"]
    assert got["Value"] == 8 and "Spot" in got["QuotaName"]
    listed = quotas.list_service_quotas(ServiceCode="ec2")["Quotas"]
    assert {q["QuotaCode"]: q["Value"] for q in listed} == {"L-1216C47A": 4, "L-34B43A08": 8}

    ec2 = _client(limited, "ec2")
    ami = _ami(ec2)
    ec2.run_instances(ImageId=ami, InstanceType="c5.xlarge", MinCount=1, MaxCount=1)  # 4 vCPUs
    with pytest.raises(ClientError) as refused:
        ec2.run_instances(ImageId=ami, InstanceType="c5.large", MinCount=1, MaxCount=1)
    assert refused.value.response["Error"]["Code"] == "VcpuLimitExceeded"
    assert "4 in use" in refused.value.response["Error"]["Message"]

    template = ec2.create_launch_template(
        LaunchTemplateName="t", LaunchTemplateData={"ImageId": ami}
    )["LaunchTemplate"]["LaunchTemplateId"]
    fleet = ec2.create_fleet(
        Type="instant",
        LaunchTemplateConfigs=[
            {
                "LaunchTemplateSpecification": {"LaunchTemplateId": template, "Version": "$Latest"},
                "Overrides": [{"InstanceType": "c5.2xlarge", "WeightedCapacity": 8}],
            }
        ],
        TargetCapacitySpecification={
            "TotalTargetCapacity": 16,
            "DefaultTargetCapacityType": "spot",
        },
    )
    assert fleet.get("Instances", []) == []
    assert {e["ErrorCode"] for e in fleet["Errors"]} == {"MaxSpotInstanceCountExceeded"}
    assert (
        fleet["Errors"][0]["LaunchTemplateAndOverrides"]["Overrides"]["InstanceType"]
        == "c5.2xlarge"
    )
    # Within the quota the fleet launches as moto always did.
    fleet = ec2.create_fleet(
        Type="instant",
        LaunchTemplateConfigs=[
            {
                "LaunchTemplateSpecification": {"LaunchTemplateId": template, "Version": "$Latest"},
                "Overrides": [{"InstanceType": "c5.2xlarge", "WeightedCapacity": 8}],
            }
        ],
        TargetCapacitySpecification={"TotalTargetCapacity": 8, "DefaultTargetCapacityType": "spot"},
    )
    assert len(fleet["Instances"][0]["InstanceIds"]) == 1
    assert limits.vcpus_in_use(REGION) == {"spot": 8, "on-demand": 4}
    # moto is one per process, like an account: leave nothing for other tests' sandboxes.
    ids = [
        i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
    ]
    ec2.terminate_instances(InstanceIds=ids)
    assert limits.vcpus_in_use(REGION) == {"spot": 0, "on-demand": 0}


@pytest.mark.sandbox
def test_ssm_reads_are_throttled_as_aws_does_and_retries_get_through(limited):
    ssm = _client(limited, "ssm")
    ssm.put_parameter(Name="/burst/x/scheduler", Value="{}", Type="String")
    for _ in range(5):
        ssm.get_parameter(Name="/burst/x/scheduler")
    with pytest.raises(ClientError) as throttled:
        ssm.get_parameter(Name="/burst/x/scheduler")
    assert throttled.value.response["Error"]["Code"] == "ThrottlingException"
    assert limited.limits.throttled["ssm.read"] >= 1
    # Writes are not reads: they pass (SSM's own PutParameter limit is not modelled).
    ssm.put_parameter(Name="/burst/x/other", Value="1", Type="String")
    # The hypervisor's own calls are the cloud's, not the account's: never throttled.
    assert not limited.hypervisor.errors
    ssm.delete_parameters(Names=["/burst/x/scheduler", "/burst/x/other"])  # moto is shared


@pytest.mark.sandbox
def test_ec2_request_rate_is_limited_per_action(monkeypatch, tmp_path):
    monkeypatch.setenv("BURST_SANDBOX_LIMITS", "ec2.non-mutating=3/0.5")
    with sandbox_module.Sandbox(tmp_path) as cloud:
        ec2 = _client(cloud, "ec2")
        for _ in range(3):
            ec2.describe_vpcs()
        with pytest.raises(ClientError) as throttled:
            ec2.describe_vpcs()
        assert throttled.value.response["Error"]["Code"] == "RequestLimitExceeded"
        ec2.describe_subnets()  # another action has its own bucket
        # botocore's retry modes back off on RequestLimitExceeded until the bucket refills.
        patient = _client(cloud, "ec2", Config(retries={"mode": "adaptive", "max_attempts": 10}))
        for _ in range(2):
            patient.describe_vpcs()
        assert cloud.limits.throttled["ec2.non-mutating"] >= 2
