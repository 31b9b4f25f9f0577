"""Preflight: a plan the account cannot hold is refused before anything is created (issue 10).

The logic against a stub account first (fast), then for real: the sandbox serves EC2's vCPU
quotas through Service Quotas and refuses launches past them, as AWS does."""

from __future__ import annotations

import json
import os
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest

from burst import preflight
from burst.cloud.base import Network, VcpuQuota
from burst.errors import CloudError
from burst.plan import Plan, PlanLine
from tests.conftest import BURST, cluster_ids, leftovers

ROOT = Path(__file__).resolve().parents[1]
PLAN = Plan(
    lines=(
        PlanLine("scheduler", "c5.large", "us-east-1a", "on-demand", 1, 2, Decimal("0.085")),
        PlanLine("worker", "c5.xlarge", "us-east-1a", "spot", 2, 4, Decimal("0.07")),
    ),
    max_runtime_hours=Decimal(1),
    price_source="test",
    cores=8,
)


class Account:
    """An account as the provider reports it: quotas, what runs, what is offered."""

    region = "us-east-1"

    def __init__(self, spot=(64, 0), demand=(64, 0), offered=None, credentials=True):
        self.quotas = [
            VcpuQuota("on-demand", "L-1216C47A", *demand),
            VcpuQuota("spot", "L-34B43A08", *spot),
        ]
        self.pairs = offered
        self.credentials = credentials

    def account(self):
        if not self.credentials:
            raise CloudError("NoCredentialsError: Unable to locate credentials")
        return "arn:aws:iam::123456789012:user/scientist"

    def zones(self):
        return ["us-east-1a", "us-east-1b"]

    def network(self, subnets=(), zones=()):
        if subnets:  # the spec's: one zone alone has one
            return Network("vpc-0spec", {"us-east-1b": subnets[0]})
        return Network("vpc-0default", {"us-east-1a": "subnet-0a", "us-east-1b": "subnet-0b"})

    def offered(self, kinds, zones):
        return self.pairs if self.pairs is not None else {(k, z) for k in kinds for z in zones}

    def vcpu_quotas(self):
        return self.quotas


def test_a_plan_within_every_quota_passes():
    done = preflight.require(Account(), PLAN)
    assert [c.name for c in done] == [
        "credentials",
        "zones",
        "network",
        "instance types",
        "on-demand vCPU quota L-1216C47A",
        "spot vCPU quota L-34B43A08",
    ]
    assert "the plan needs 8: 64 in us-east-1, 0 in use, 64 free" in done[-1].detail


def test_a_spot_shortfall_names_the_quota_the_fix_and_the_cores_that_fit():
    with pytest.raises(CloudError) as refused:
        preflight.require(Account(spot=(10, 6)), PLAN)
    message, fix = str(refused.value), refused.value.fix
    assert refused.value.exit_code == 3
    assert "needs 8 spot vCPUs, over the quota (10 in us-east-1, 6 in use, 4 free)" in message
    assert "--quota-code L-34B43A08 --desired-value 14 --region us-east-1" in fix
    assert "at most 4 cores" in fix


def test_the_scheduler_counts_against_the_on_demand_quota():
    with pytest.raises(CloudError, match="needs 2 on-demand vCPUs"):
        preflight.require(Account(demand=(5, 4)), PLAN)


def test_an_unreadable_quota_is_said_not_checked_and_does_not_refuse():
    done = preflight.require(Account(spot=(None, 0)), PLAN)
    assert "not checked" in done[-1].detail and done[-1].ok


def test_types_not_offered_in_the_planned_zone_are_refused():
    with pytest.raises(CloudError, match="not offered: c5.xlarge in us-east-1a"):
        preflight.require(Account(offered={("c5.large", "us-east-1a")}), PLAN)


def test_the_network_check_names_the_vpc_and_refuses_a_zone_without_a_subnet():
    done = {c.name: c for c in preflight.require(Account(), PLAN)}
    assert done["network"].detail == (
        "default VPC vpc-0default: subnet-0a (us-east-1a), subnet-0b (us-east-1b)"
    )
    # The spec's subnets are in us-east-1b alone, and the plan put capacity in us-east-1a.
    with pytest.raises(CloudError) as refused:
        preflight.require(Account(), PLAN, subnets=["subnet-0abc1234"])
    assert "the plan puts capacity in us-east-1a, where no subnet of network.subnets is" in str(
        refused.value
    )
    assert refused.value.exit_code == 3


def test_without_credentials_nothing_else_is_asked():
    done = preflight.checks(Account(credentials=False), PLAN)
    assert len(done) == 1 and not done[0].ok and "aws configure" in done[0].fix


# ------------------------------------------------------------------ for real


@pytest.fixture
def spot_quota(sandbox):
    """The session's sandbox with 4 spot vCPUs, as a new account might have."""
    code = "L-34B43A08"
    before = sandbox.limits.quotas[code]
    sandbox.limits.quotas[code] = 4
    yield sandbox
    sandbox.limits.quotas[code] = before


def _burst(*args, cwd, env=None):
    return subprocess.run(
        [BURST, *args], cwd=cwd, capture_output=True, text=True, env=env or os.environ
    )


def test_a_run_over_the_spot_quota_is_refused_before_anything_exists(spot_quota, tmp_path):
    known = cluster_ids(spot_quota)
    done = _burst("run", str(ROOT / "jobs/pi.yaml"), cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    assert "L-34B43A08" in done.stderr and "request-service-quota-increase" in done.stderr
    assert "bug" not in done.stderr
    assert cluster_ids(spot_quota) == known  # not one instance was launched
    assert leftovers(spot_quota) == []


def test_doctor_checks_the_sandbox_and_a_plan(spot_quota, tmp_path):
    done = _burst("doctor", str(ROOT / "jobs/pi.yaml"), "--json", cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    checks = {c["name"]: c for c in json.loads(done.stdout)}
    assert checks["credentials"]["ok"] and checks["instance types"]["ok"]
    assert not checks["spot vCPU quota L-34B43A08"]["ok"]
    assert checks["on-demand vCPU quota L-1216C47A"]["ok"]
    spot_quota.limits.quotas["L-34B43A08"] = 5120
    again = _burst("doctor", str(ROOT / "jobs/pi.yaml"), cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "the plan needs 8" in again.stdout


def test_doctor_on_aws_without_credentials_says_so(tmp_path):
    """Never real AWS: no credentials anywhere, and any endpoint is a closed local port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
        AWS_ENDPOINT_URL="http://127.0.0.1:9",
    )
    done = _burst("doctor", "--cloud", "aws", "--json", cwd=tmp_path, env=env)
    assert done.returncode == 3, done.stderr
    (check,) = json.loads(done.stdout)
    assert check["name"] == "credentials" and not check["ok"]
    assert "credentials" in check["detail"].lower() and "bug" not in done.stderr


def test_a_python_amazon_linux_does_not_package_is_refused_before_launch():
    with pytest.raises(CloudError, match="Python 3.10, which Amazon Linux 2023 does not"):
        preflight.require(Account(), PLAN, python="3.10")
    done = preflight.require(Account(), PLAN, python="3.12")
    assert done[1].name == "node python" and done[1].ok
