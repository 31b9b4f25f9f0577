"""The `network:` spec field (issue 10): subnets and their VPC, public IPv4 addresses for all
nodes, the scheduler only or none, the client's CIDRs, and what the addresses cost.

The spec's checks and the arithmetic first (fast, offline), then the provider against moto in
process, then a real cluster on the sandbox in a VPC the test makes."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import boto3
import pytest
import yaml
from distributed import Client
from rich.console import Console

from burst.catalog import PUBLIC_IPV4_HOURLY
from burst.cli import plan_table
from burst.cloud.aws import AwsProvider
from burst.cloud.base import CloudError
from burst.cluster import BurstCluster
from burst.cost import cost_report, instance_cost
from burst.errors import SpecError
from burst.plan import plan
from burst.provision import launch_request
from burst.spec import parse_spec
from tests.conftest import BURST, client, moto_in_process, settled_leftovers

START = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def spec_with(network: dict, **fields):
    """16 cores of c5.xlarge for an hour (55m and the 5m grace)."""
    return parse_spec({"cores": 16, "instance_types": ["c5.xlarge"], "max_runtime": "55m",
                       "network": network, **fields})  # fmt: skip


# ------------------------------------------------------------------ the spec


@pytest.mark.parametrize(
    ("network", "problem"),
    [
        ({"subnets": ["sub-1234"]}, "network.subnets: 'sub-1234' is not a subnet id; accepted:"),
        ({"subnets": ["subnet-xyz"]}, "network.subnets: 'subnet-xyz' is not a subnet id"),
        (
            {"subnets": ["subnet-0abc1234", "subnet-0abc1234"]},
            "network.subnets: each subnet once is accepted",
        ),
        ({"public_ip": "some"}, "network.public_ip: Input should be 'all', 'scheduler' or 'none'"),
        (
            {"client_cidrs": ["10.0.0.0/33"]},
            "network.client_cidrs: '10.0.0.0/33' is not an address or network; accepted: CIDRs",
        ),
        ({"subnet": []}, "network.subnet: unknown field (did you mean subnets?)"),
    ],
)
def test_a_bad_network_is_refused_naming_the_field_value_and_what_is_accepted(network, problem):
    with pytest.raises(SpecError) as refused:
        spec_with(network)
    assert refused.value.exit_code == 2
    (line,) = refused.value.problems
    assert line.startswith(problem), line


def test_client_cidrs_are_normalised_and_the_default_is_todays():
    spec = spec_with({"client_cidrs": ["203.0.113.7", "10.1.2.3/16", "2001:db8::/32"]})
    assert spec.network.client_cidrs == ["203.0.113.7/32", "10.1.0.0/16", "2001:db8::/32"]
    default = parse_spec({"cores": 4}).network
    assert (default.subnets, default.public_ip, default.client_cidrs) == ([], "all", [])


# ------------------------------------------------------------------ the cost


def test_the_plan_costs_exactly_the_public_addresses_more():
    none, scheduler, every = (spec_with({"public_ip": p}) for p in ("none", "scheduler", "all"))
    plans = {name: plan(s) for name, s in (("none", none), ("scheduler", scheduler),
                                              ("all", every))}  # fmt: skip
    # The same instances (one exact type), so only the addresses differ.
    assert {tuple((ln.pool, ln.count) for ln in p.lines) for p in plans.values()} == {
        tuple((ln.pool, ln.count) for ln in plans["none"].lines)
    }
    instances = plans["all"].instances
    assert instances == 5  # the scheduler and 4 c5.xlarge
    assert (plans["none"].public_ipv4, plans["scheduler"].public_ipv4) == (0, 1)
    assert plans["all"].public_ipv4 == instances
    assert plans["scheduler"].hourly - plans["none"].hourly == PUBLIC_IPV4_HOURLY
    assert plans["all"].hourly - plans["none"].hourly == instances * PUBLIC_IPV4_HOURLY
    assert plans["all"].ipv4_hourly == Decimal("0.025")
    assert plans["all"].max_runtime_hours == 1
    assert plans["all"].cost_bound - plans["none"].cost_bound == Decimal("0.025")
    assert plans["all"].to_dict()["public_ipv4"] == {"addresses": 5, "hourly": "0.025"}


def test_the_printed_plan_shows_the_charge_on_its_own_line():
    def shown(public_ip: str) -> str:
        console = Console(width=100, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
        console.print(plan_table(plan(spec_with({"public_ip": public_ip}))))
        return console.export_text()

    assert "public IPv4: 5 addresses x $0.005/h = $0.0250/h, included above" in shown("all")
    assert "public IPv4: 1 address x $0.005/h = $0.0050/h, included above" in shown("scheduler")
    assert "public IPv4: none (network.public_ip: none)" in shown("none")


def test_the_real_cost_includes_the_addresses():
    """Each node is launched at its plan line's price, address included, and billed by it."""

    def real(public_ip: str) -> tuple[Decimal, dict]:
        capacity = plan(spec_with({"public_ip": public_ip}))
        records = []
        for line in capacity.lines:
            request = launch_request(line)
            for n in range(line.count):
                records.append(_record(f"i-{line.role}{n}", request.hourly, line.role))
        end = START + timedelta(hours=2)
        report = cost_report(records, capacity.to_dict(), end)
        assert Decimal(report["actual"]) == sum(instance_cost(r, end) for r in records)
        return Decimal(report["actual"]), report

    none, _ = real("none")
    scheduler, _ = real("scheduler")
    every, report = real("all")
    assert scheduler - none == 2 * PUBLIC_IPV4_HOURLY  # two hours of one address
    assert every - none == 2 * 5 * PUBLIC_IPV4_HOURLY
    assert report["public_ipv4"] == {"addresses": 5, "hourly": "0.025"}


def _record(instance_id: str, hourly: Decimal, role: str):
    from burst.cloud.base import InstanceRecord

    return InstanceRecord(
        instance_id, role, "c5.xlarge", "us-east-1a", "spot", "terminated", START, 4,
        end_time=START + timedelta(hours=2), hourly=hourly,
    )  # fmt: skip


def test_a_fleets_price_cap_leaves_room_for_its_addresses():
    """EC2's MaxTotalPrice holds the instances alone: the cap is scaled so that instances plus
    their addresses (and root volumes) stay within what the budget left."""
    line = plan(spec_with({"public_ip": "all"})).workers[0]
    request = launch_request(line)
    assert request.hourly == line.hourly + PUBLIC_IPV4_HOURLY + line.disk_hourly
    assert request.instance_hourly == line.hourly and line.disk_hourly > 0
    sent = {}

    class Ec2:
        def create_fleet(self, **kwargs):
            sent.update(kwargs)
            return {"FleetId": "fleet-1", "Instances": [], "Errors": []}

    provider = AwsProvider.__new__(AwsProvider)
    provider.ec2 = Ec2()
    from burst.cloud.base import ClusterIdentity, NodeEnvironment

    ident = ClusterIdentity("c1", "j1", START)
    env = NodeEnvironment("vpc-1", {line.zone: "subnet-1"}, "sg-1", "p", {"x86_64": "ami-1"})
    budget = 3 * request.hourly  # room for exactly three nodes
    provider.launch_fleet(ident, env, "lt-1", request, 3 * line.vcpus, budget)
    cap = Decimal(sent["SpotOptions"]["MaxTotalPrice"])
    assert cap == (3 * line.hourly).quantize(Decimal("0.0001"))
    assert cap + 3 * (PUBLIC_IPV4_HOURLY + line.disk_hourly) <= budget


# ------------------------------------------------------------------ the provider (moto)


def _vpc(ec2, cidr: str, zones: list[str]) -> tuple[str, list[str]]:
    vpc = ec2.create_vpc(CidrBlock=cidr)["Vpc"]["VpcId"]
    base = cidr.rsplit(".", 2)[0]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"{base}.{n}.0/24", AvailabilityZone=zone)["Subnet"][
            "SubnetId"
        ]
        for n, zone in enumerate(zones, start=1)
    ]
    return vpc, subnets


def _delete_vpc(ec2, vpc: str, subnets: list[str]) -> None:
    for subnet in subnets:
        ec2.delete_subnet(SubnetId=subnet)
    ec2.delete_vpc(VpcId=vpc)


def test_subnets_must_exist_and_share_one_vpc():
    with moto_in_process():
        session = boto3.Session(
            region_name="us-west-2", aws_access_key_id="testing", aws_secret_access_key="x"
        )
        provider = AwsProvider(session, "us-west-2")
        ec2 = session.client("ec2")
        one, (a, b) = _vpc(ec2, "10.71.0.0/16", ["us-west-2a", "us-west-2b"])
        other, (c,) = _vpc(ec2, "10.72.0.0/16", ["us-west-2c"])
        try:
            found = provider.network([a, b])
            assert (found.vpc_id, found.subnets) == (one, {"us-west-2a": a, "us-west-2b": b})
            with pytest.raises(CloudError) as two:
                provider.network([a, c])
            assert two.value.exit_code == 3
            assert f"network.subnets are in 2 VPCs ({one}: {a}; {other}: {c})" in str(
                two.value
            ) or f"network.subnets are in 2 VPCs ({other}: {c}; {one}: {a})" in str(two.value)
            assert "name subnets of one VPC" in two.value.fix
            unknown = r"network.subnets: subnet-0123456789abcdef0 not found in us-west-2$"
            with pytest.raises(CloudError, match=unknown):
                provider.network([a, "subnet-0123456789abcdef0"])
            default = provider.network([], ["us-west-2a"])
            assert list(default.subnets) == ["us-west-2a"] and default.vpc_id not in (one, other)
        finally:
            _delete_vpc(ec2, one, [a, b])
            _delete_vpc(ec2, other, [c])


def test_of_two_subnets_in_a_zone_the_one_with_more_free_addresses_is_used():
    with moto_in_process():
        session = boto3.Session(
            region_name="us-west-2", aws_access_key_id="testing", aws_secret_access_key="x"
        )
        ec2 = session.client("ec2")
        vpc = ec2.create_vpc(CidrBlock="10.73.0.0/16")["Vpc"]["VpcId"]
        small, big, other = (
            ec2.create_subnet(VpcId=vpc, CidrBlock=cidr, AvailabilityZone=zone)["Subnet"]
            ["SubnetId"]
            for cidr, zone in (("10.73.1.0/28", "us-west-2a"), ("10.73.2.0/24", "us-west-2a"),
                               ("10.73.3.0/28", "us-west-2b"))
        )  # fmt: skip
        try:
            found = AwsProvider(session, "us-west-2").network([small, big, other])
            assert found.subnets == {"us-west-2a": big, "us-west-2b": other}  # 251 free, not 11
        finally:
            _delete_vpc(ec2, vpc, [small, big, other])


# ------------------------------------------------------------------ for real, on the sandbox


@pytest.fixture
def own_vpc(sandbox):
    """A VPC of the test's own with two subnets (us-east-1b and us-east-1c: the plan's usual
    us-east-1a has none), deleted afterwards."""
    ec2 = client(sandbox, "ec2")
    vpc, subnets = _vpc(ec2, "10.61.0.0/16", ["us-east-1b", "us-east-1c"])
    yield vpc, subnets
    _delete_vpc(ec2, vpc, subnets)


def test_a_cluster_in_named_subnets_with_a_public_scheduler_alone(sandbox, own_vpc):
    vpc, subnets = own_vpc
    ec2 = client(sandbox, "ec2")
    network = {"subnets": subnets, "public_ip": "scheduler", "client_cidrs": ["127.0.0.1/32"]}
    with BurstCluster(cores=4, max_runtime="5m", instance_types=["c5.large"],
                      network=network) as cluster, Client(cluster) as dask:  # fmt: skip
        assert dask.submit(sum, [1, 2, 3]).result(timeout=60) == 6
        cluster_id = cluster.cluster_id
        # Planned again within the subnets' zones, before anything was created.
        zones = {line.zone for line in cluster.capacity_plan.lines}
        assert zones <= {"us-east-1b", "us-east-1c"}
        assert cluster.capacity_plan.public_ipv4 == 1
        reply = ec2.describe_instances(InstanceIds=list(cluster.instances))
        found = [i for r in reply["Reservations"] for i in r["Instances"]]
        roles = {i["InstanceId"]: cluster.instances[i["InstanceId"]].role for i in found}
        assert sorted(roles.values()) == ["scheduler", "worker", "worker"]
        assert {i["SubnetId"] for i in found} <= set(subnets)
        assert {i["VpcId"] for i in found} == {vpc}
        public = {roles[i["InstanceId"]]: i.get("PublicIpAddress") for i in found}
        assert public["worker"] is None and public["scheduler"]
        # What EC2 is asked, not only what moto does: the workers' template says no address.
        (template,) = ec2.describe_launch_templates(
            Filters=[{"Name": "tag:burst:cluster", "Values": [cluster_id]}]
        )["LaunchTemplates"]
        data = ec2.describe_launch_template_versions(LaunchTemplateId=template["LaunchTemplateId"])[
            "LaunchTemplateVersions"
        ][0]["LaunchTemplateData"]
        (interface,) = data["NetworkInterfaces"]
        assert interface["DeviceIndex"] == 0 and interface["AssociatePublicIpAddress"] is False
        (group,) = ec2.describe_security_groups(GroupIds=interface["Groups"])["SecurityGroups"]
        assert group["VpcId"] == vpc
        (client_rule,) = [p for p in group["IpPermissions"] if p.get("IpRanges")]
        assert [r["CidrIp"] for r in client_rule["IpRanges"]] == ["127.0.0.1/32"]
    assert cluster.teardown_report.verified
    assert settled_leftovers(sandbox, cluster_id) == []


def test_doctor_checks_the_subnets(sandbox, own_vpc, tmp_path):
    vpc, subnets = own_vpc
    spec = {"name": "net", "cores": 4, "instance_types": ["c5.large"],
            "network": {"subnets": subnets}}  # fmt: skip
    (tmp_path / "net.yaml").write_text(yaml.safe_dump(spec))

    def doctor():
        done = subprocess.run([BURST, "doctor", "net.yaml", "--json"], cwd=tmp_path,
                              capture_output=True, text=True, env=os.environ)  # fmt: skip
        return done.returncode, {c["name"]: c for c in json.loads(done.stdout)}

    code, checks = doctor()
    assert checks["network"]["ok"], checks["network"]
    assert checks["network"]["detail"] == (
        f"{vpc}: {subnets[0]} (us-east-1b), {subnets[1]} (us-east-1c)"
    )
    ec2 = client(sandbox, "ec2")
    other = ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])[
        "Subnets"
    ][0]["SubnetId"]
    spec["network"]["subnets"] = [subnets[0], other]
    (tmp_path / "net.yaml").write_text(yaml.safe_dump(spec))
    code, checks = doctor()
    assert code == 3 and not checks["network"]["ok"]
    assert "network.subnets are in 2 VPCs" in checks["network"]["detail"]


def test_no_public_address_anywhere_in_the_default_vpc(sandbox):
    """public_ip: none without subnets: the default VPC's subnets would give every node an
    address; the nodes' interfaces say no, and the cluster still works (the client reaches the
    scheduler at its private address: on the sandbox, this host)."""
    ec2 = client(sandbox, "ec2")
    private = {"public_ip": "none"}
    with BurstCluster(cores=2, max_runtime="5m", instance_types=["c5.large"],
                      network=private) as cluster, Client(cluster) as dask:  # fmt: skip
        assert dask.submit(sum, [2, 3]).result(timeout=60) == 5
        cluster_id = cluster.cluster_id
        assert cluster.capacity_plan.public_ipv4 == 0
        reply = ec2.describe_instances(InstanceIds=list(cluster.instances))
        found = [i for r in reply["Reservations"] for i in r["Instances"]]
        assert len(found) == 2 and [i.get("PublicIpAddress") for i in found] == [None, None]
        default = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])
        assert {i["VpcId"] for i in found} == {default["Vpcs"][0]["VpcId"]}
    assert cluster.teardown_report.verified
    assert settled_leftovers(sandbox, cluster_id) == []


def test_without_a_public_address_the_clients_address_must_be_given(monkeypatch):
    from burst.cloud.aws import client_cidr

    monkeypatch.delenv("BURST_CLIENT_CIDR", raising=False)
    with pytest.raises(CloudError) as refused:
        client_cidr(private=True)  # no lookup of a public address that would be wrong
    assert refused.value.exit_code == 3 and "network.client_cidrs" in refused.value.fix
    monkeypatch.setenv("BURST_CLIENT_CIDR", "10.8.0.0/16")
    assert client_cidr(private=True) == "10.8.0.0/16"
