"""EC2 through plain boto3: network, node role, secrets, instances, teardown, verification.

The same code drives real AWS and the sandbox (moto's server): the only difference is the
endpoint URL and the credentials of the session handed in.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from burst import storage
from burst.catalog import architecture_of
from burst.cloud.base import (
    TAG_CLUSTER,
    TAG_MANAGED,
    TAG_REGION,
    TAG_ROLE,
    VCPU_QUOTAS,
    CloudError,
    ClusterIdentity,
    Fulfilment,
    InstanceRecord,
    LaunchRequest,
    Network,
    NetworkRequest,
    NodeEnvironment,
    PoolError,
    Remnant,
    TeardownReport,
    VcpuQuota,
    standard_family,
    tag_dict,
)
from burst.cloud.botoerrors import error_code, wrap_public_methods
from burst.money import HUNDREDTH_CENT
from burst.node import FAILED_PREFIX, FAILURE_BYTES

# Throttling and transient faults are retried by botocore itself, with client-side rate limiting.
RETRY_CONFIG = Config(retries={"mode": "adaptive", "max_attempts": 10})
AMI_PARAMETERS = {
    "x86_64": "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64",
    "arm64": "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64",
}
# Kept under AWS's limits for one EC2 Fleet (target capacity, and instances an instant fleet
# launches or DeleteFleets terminates); larger requests are split into several fleets.
FLEET_MAX_CAPACITY = 10_000
FLEET_MAX_INSTANCES = 1_000


def fleet_chunks(cores: int, vcpus: int) -> list[int]:
    """The targets (in cores) of the fleets that ask one pool for `cores`."""
    chunk = min(FLEET_MAX_CAPACITY, FLEET_MAX_INSTANCES * vcpus)
    chunk -= chunk % vcpus  # whole instances, so no fleet overshoots
    return [min(chunk, cores - start) for start in range(0, cores, chunk)]


IAM_PATH = "/burst/"
# Every role burst creates carries this managed policy as its permissions boundary, so that the
# client's right to create roles can never give a role more than the boundary: its own
# parameters, its buckets, terminating burst's instances (scripts/iam-boundary.json). The
# account's operator creates it once; the sandbox creates it at start.
BOUNDARY_NAME = "burst-node-boundary"
BOUNDARY_DOCUMENT = Path(__file__).with_name("iam-boundary.json")
LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]


def client_cidr(private: bool = False) -> str:
    """The client's public address, to which alone the scheduler port is opened:
    BURST_CLIENT_CIDR when set (a NAT, a VPN, a client inside the VPC), else what
    checkip.amazonaws.com sees. `private`: the scheduler has no public address (network.
    public_ip: none), so the client reaches it from inside the VPC or through a VPN, where
    its public address is not what the VPC sees: then it must be given."""
    given = os.environ.get("BURST_CLIENT_CIDR", "").strip()
    if given:
        try:
            return str(ipaddress.ip_network(given, strict=False))
        except ValueError:
            raise CloudError(
                f"BURST_CLIENT_CIDR={given!r} is not an address or network",
                "set it like 203.0.113.7/32 or 10.0.0.0/16, or unset it",
            ) from None
    if private:
        raise CloudError(
            "network.public_ip is none: the client reaches the scheduler at its private "
            "address (inside the VPC, a VPN or Direct Connect), where this machine's public "
            "address is not the one the VPC sees",
            "set network.client_cidrs (or BURST_CLIENT_CIDR) to the client's address as the "
            "VPC sees it, such as the VPN's range 10.8.0.0/16",
        )
    try:
        with urllib.request.urlopen("https://checkip.amazonaws.com", timeout=10) as reply:
            address = reply.read().decode().strip()
        return str(ipaddress.ip_network(address))
    except (OSError, ValueError) as error:
        raise CloudError(
            f"could not learn this machine's public address from checkip.amazonaws.com: {error}",
            "check this machine's internet access, or set BURST_CLIENT_CIDR=<address>/32",
        ) from error


@wrap_public_methods
class AwsProvider:
    """One region of one account, reached through a boto3 session and optional endpoint."""

    def __init__(
        self,
        session: boto3.Session,
        region: str,
        endpoint_url: str | None = None,
        scheduler_port: int = 8786,
        dashboard_port: int = 8787,
        shared_host: str | None = None,
    ):
        def client(service: str):
            return session.client(
                service, region_name=region, endpoint_url=endpoint_url, config=RETRY_CONFIG
            )

        self.region = region
        self.ec2 = client("ec2")
        self.ssm = client("ssm")
        self.iam = client("iam")
        self.s3 = client("s3")
        self.sts = client("sts")
        self.quotas = client("service-quotas")
        self._boundary: str | None = None
        self._caller_identity: dict | None = None
        self.scheduler_port = scheduler_port
        self.shared_host = shared_host
        self.dashboard_port = dashboard_port

    # ----------------------------------------------------------------- set-up

    def prepare(
        self,
        ident: ClusterIdentity,
        zones: list[str],
        client_cidr: str | Sequence[str],
        node_secret: dict[str, dict[str, str]],
        architectures: set[str] = frozenset({"x86_64"}),
        read_objects: list[str] | None = None,
        network: NetworkRequest | None = None,
    ) -> NodeEnvironment:
        """The network, role, bucket and secret of a cluster, and its images. Without subnets,
        zones without a subnet in the default VPC are left out (capacity there is re-planned
        elsewhere); with subnets, their zones are the cluster's."""
        network = network or NetworkRequest()
        found = self.network(network.subnets, zones)
        self.boundary_arn()  # checked before anything is created
        cidrs = [client_cidr] if isinstance(client_cidr, str) else list(client_cidr)
        group = self._security_group(ident, found.vpc_id, cidrs)
        profiles = self._node_roles(ident, read_objects or [])
        storage.create_bucket(self.s3, ident, self.region)
        # One parameter per node role (scheduler, worker, driver), each readable by the
        # instances of the role that needs it alone (see _node_roles).
        for role, bundle in node_secret.items():
            self.ssm.put_parameter(
                Name=f"{ident.parameter_path}/tls-{role}",
                Value=json.dumps(bundle),
                Type="SecureString",
                Tags=ident.tags("secret"),
            )
        images = {arch: self._image(arch) for arch in sorted(architectures)}
        # The default VPC with public IPs for all is the subnets' own default (their
        # MapPublicIpOnLaunch); anything else is said on each node's network interface.
        explicit = None if network == NetworkRequest() else network
        return NodeEnvironment(
            found.vpc_id,
            found.subnets,
            group,
            profiles["scheduler"],
            images,
            profiles["worker"],
            network=explicit,
        )

    def network(self, subnets: Sequence[str] = (), zones: Sequence[str] = ()) -> Network:
        """The VPC and a subnet per zone: of the given subnets, which must exist and share one
        VPC (in a zone, the one with the most free addresses: every node takes one), else of
        the default VPC in `zones`."""
        if not subnets:
            return self._default_network(list(zones))
        try:
            found = self.ec2.describe_subnets(SubnetIds=list(subnets))["Subnets"]
        except ClientError as error:
            if not error_code(error).startswith("InvalidSubnetID"):
                raise
            found = []  # one unknown id fails the batch: ask each, to name every one missing
            for subnet_id in subnets:
                with contextlib.suppress(ClientError):
                    found += self.ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"]
        by_id = {s["SubnetId"]: s for s in found}
        missing = [s for s in subnets if s not in by_id]
        if missing:
            raise CloudError(
                f"network.subnets: {', '.join(missing)} not found in {self.region}",
                f"name subnets of {self.region}: `aws ec2 describe-subnets --region "
                f"{self.region} --query 'Subnets[].[SubnetId,VpcId,AvailabilityZone]'`",
            )
        vpcs: dict[str, list[str]] = {}
        for subnet_id in subnets:
            vpcs.setdefault(by_id[subnet_id]["VpcId"], []).append(subnet_id)
        if len(vpcs) > 1:
            where = "; ".join(f"{vpc}: {', '.join(ids)}" for vpc, ids in sorted(vpcs.items()))
            raise CloudError(
                f"network.subnets are in {len(vpcs)} VPCs ({where}); a cluster lives in one",
                "name subnets of one VPC (its security group admits members of that VPC only)",
            )
        by_zone: dict[str, dict] = {}
        for subnet_id in subnets:
            subnet, zone = by_id[subnet_id], by_id[subnet_id]["AvailabilityZone"]
            if zone not in by_zone or _free(subnet) > _free(by_zone[zone]):  # ties: listed first
                by_zone[zone] = subnet
        return Network(next(iter(vpcs)), {z: s["SubnetId"] for z, s in by_zone.items()})

    def _default_network(self, zones: list[str]) -> Network:
        vpcs = self.ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
        if not vpcs:
            raise CloudError(
                f"no default VPC in {self.region}",
                f"name subnets in the spec (network.subnets: [subnet-...]), or `aws ec2 "
                f"create-default-vpc --region {self.region}`",
            )
        vpc_id = vpcs[0]["VpcId"]
        filters = [{"Name": "vpc-id", "Values": [vpc_id]}]
        if zones:
            filters.append({"Name": "availability-zone", "Values": zones})
        found = self.ec2.describe_subnets(Filters=filters)["Subnets"]
        subnets = {s["AvailabilityZone"]: s["SubnetId"] for s in found}
        if not subnets:
            raise CloudError(f"the default VPC {vpc_id} has no subnet in {zones}")
        return Network(vpc_id, subnets)

    def _security_group(self, ident: ClusterIdentity, vpc_id: str, client_cidrs: list[str]) -> str:
        group_id = self.ec2.create_security_group(
            GroupName=ident.name,
            VpcId=vpc_id,
            Description=f"burst cluster {ident.cluster_id}: Dask over TLS",
            TagSpecifications=ident.tag_specifications("network", "security-group"),
        )["GroupId"]
        # The scheduler's port only to the client's own address (the dashboard listens on the
        # scheduler's loopback alone: README, Security); everything else only between members
        # of this group.
        client_port = self.scheduler_port or 8786
        self.ec2.authorize_security_group_ingress(
            GroupId=group_id,
            IpPermissions=[
                {
                    "IpProtocol": "tcp",
                    "FromPort": client_port,
                    "ToPort": client_port,
                    "IpRanges": [
                        {"CidrIp": cidr, "Description": "burst client"}
                        for cidr in client_cidrs
                        if ":" not in cidr
                    ],
                    "Ipv6Ranges": [
                        {"CidrIpv6": cidr, "Description": "burst client"}
                        for cidr in client_cidrs
                        if ":" in cidr
                    ],
                },
                {
                    "IpProtocol": "tcp",
                    "FromPort": 0,
                    "ToPort": 65535,
                    "UserIdGroupPairs": [{"GroupId": group_id, "Description": "cluster members"}],
                },
            ],
        )
        return group_id

    def boundary_arn(self) -> str:
        """The permissions boundary every node role gets; it must exist in the account."""
        if self._boundary is None:
            account = self._caller()["Account"]
            arn = f"arn:aws:iam::{account}:policy{IAM_PATH}{BOUNDARY_NAME}"
            try:
                self.iam.get_policy(PolicyArn=arn)
            except ClientError as error:
                if error_code(error) != "NoSuchEntity":
                    raise
                raise CloudError(
                    f"the permissions boundary {arn} does not exist: burst creates node roles "
                    "only under it",
                    f"once per account: `aws iam create-policy --path {IAM_PATH} --policy-name "
                    f"{BOUNDARY_NAME} --policy-document file://scripts/iam-boundary.json`",
                ) from error
            self._boundary = arn
        return self._boundary

    def _node_roles(self, ident: ClusterIdentity, read_objects: list[str]) -> dict[str, str]:
        """Two roles per cluster, each under the permissions boundary, and their instance
        profiles: the scheduler's and the workers'. Both read the s3:// inputs of the job.

        - scheduler: reads its own TLS pair and the detached driver's; publishes its address;
          uses the whole bucket (its failure report included) (the driver streams results there);
          terminates only instances tagged with this cluster's id (the driver ends its
          cluster).
        - worker: reads its TLS pair and the scheduler's address; reads the bucket and
          writes only under the jobs' outputs/ and its own failure report (failed/ under its
          own ${aws:userid}: burst.node.report_failure). It cannot read the
          scheduler's or the driver's key, nor overwrite /scheduler or /tls-*.
        """
        arn = f"arn:aws:ssm:{self.region}:*:parameter{ident.parameter_path}"

        def parameters(actions: list[str], *names: str) -> dict:
            return {
                "Effect": "Allow",
                "Action": actions,
                "Resource": [f"{arn}/{name}" for name in names],
            }

        scheduler = [
            parameters(["ssm:GetParameter"], "tls-scheduler", "tls-driver"),
            parameters(["ssm:PutParameter"], "scheduler"),
            {
                "Effect": "Allow",
                "Action": "ec2:TerminateInstances",
                "Resource": f"arn:aws:ec2:{self.region}:*:instance/*",
                "Condition": {"StringEquals": {f"ec2:ResourceTag/{TAG_CLUSTER}": ident.cluster_id}},
            },
            *storage.node_policy_statements(ident, read_objects),
        ]
        worker = [
            parameters(["ssm:GetParameter"], "tls-worker", "scheduler"),
            *_worker_bucket_statements(ident, read_objects),
        ]
        profiles = {}
        for role, statements, name in (
            ("scheduler", scheduler, ident.name),
            ("worker", worker, f"{ident.name}-worker"),
        ):
            self._role(ident, name, {"Version": "2012-10-17", "Statement": statements})
            profiles[role] = name
        return profiles

    def _role(self, ident: ClusterIdentity, name: str, policy: dict) -> None:
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "ec2.amazonaws.com"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
        # IAM is global: the region tag keeps `burst gc` in one region off others' roles.
        tags = ident.tags("node-role") + [{"Key": TAG_REGION, "Value": self.region}]
        self.iam.create_role(
            RoleName=name,
            Path=IAM_PATH,
            AssumeRolePolicyDocument=json.dumps(trust),
            PermissionsBoundary=self.boundary_arn(),
            Tags=tags,
        )
        self.iam.put_role_policy(
            RoleName=name, PolicyName="burst-node", PolicyDocument=json.dumps(policy)
        )
        self.iam.create_instance_profile(InstanceProfileName=name, Path=IAM_PATH, Tags=tags)
        self.iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)

    def _image(self, architecture: str) -> str:
        name = AMI_PARAMETERS[architecture]
        return self.ssm.get_parameter(Name=name)["Parameter"]["Value"]

    def fleet_chunks(self, cores: int, vcpus: int) -> list[int]:
        return fleet_chunks(cores, vcpus)

    def bucket(self, ident: ClusterIdentity) -> storage.Bucket:
        return storage.Bucket(self.s3, storage.bucket_name(ident), self.region)

    # ------------------------------------------------------------- instances

    def launch_template(
        self, ident: ClusterIdentity, env: NodeEnvironment, user_data: str, architecture: str
    ) -> str:
        """The workers' launch template: everything but the instance type and subnet, which
        each fleet's override gives. Its tags reach instances and volumes (not spot requests:
        EC2 refuses those tags when a fleet launches on-demand)."""
        template = self.ec2.create_launch_template(
            LaunchTemplateName=f"{ident.name}-worker",
            LaunchTemplateData={
                **_node_settings(ident, env, "worker", architecture),
                **_placement(env, "worker"),
                # Unlike RunInstances, botocore does not encode a template's user data.
                "UserData": base64.b64encode(user_data.encode()).decode(),
            },
            TagSpecifications=ident.tag_specifications("worker", "launch-template"),
        )
        return template["LaunchTemplate"]["LaunchTemplateId"]

    def launch_fleet(
        self,
        ident: ClusterIdentity,
        env: NodeEnvironment,
        template_id: str,
        request: LaunchRequest,
        cores: int,
        max_hourly: Decimal | None = None,
    ) -> Fulfilment:
        """One `instant` EC2 Fleet asking one pool (type x subnet x market) for `cores` vCPUs:
        the weight is the type's vCPUs, so the target is in cores. EC2 never spends above
        `max_hourly` (then it stops short without an error). See `fleet_chunks` for sizes."""
        options: dict[str, Any] = {
            "AllocationStrategy": "price-capacity-optimized"
            if request.market == "spot"
            else "lowest-price"
        }
        if request.market == "spot":
            options["InstanceInterruptionBehavior"] = "terminate"
        if max_hourly is not None:
            # EC2 holds only the instances' price to MaxTotalPrice; the budget holds their
            # public IPv4 addresses and root volumes too. One type per fleet, so scaling by
            # the instance's share of its node's price keeps the nodes within `max_hourly`.
            if request.instance_hourly != request.hourly and request.hourly > 0:
                max_hourly = max_hourly * request.instance_hourly / request.hourly
            options["MaxTotalPrice"] = str(max_hourly.quantize(HUNDREDTH_CENT, ROUND_FLOOR))

        def ask() -> dict:
            return self.ec2.create_fleet(
                Type="instant",
                LaunchTemplateConfigs=[
                    {
                        "LaunchTemplateSpecification": {
                            "LaunchTemplateId": template_id,
                            "Version": "$Latest",
                        },
                        "Overrides": [
                            {
                                "InstanceType": request.instance_type,
                                "SubnetId": env.subnets[request.zone],
                                "WeightedCapacity": float(request.vcpus),
                            }
                        ],
                    }
                ],
                TargetCapacitySpecification={
                    "TotalTargetCapacity": cores,
                    "DefaultTargetCapacityType": request.market,
                    (
                        "SpotTargetCapacity"
                        if request.market == "spot"
                        else "OnDemandTargetCapacity"
                    ): cores,
                },
                **{("SpotOptions" if request.market == "spot" else "OnDemandOptions"): options},
                TagSpecifications=ident.tag_specifications("worker", "fleet"),
            )

        # A new instance profile takes seconds to reach EC2: an instant fleet then reports it
        # as its error, with nothing launched. Wait it out, as for RunInstances.
        deadline = time.monotonic() + 60
        while True:
            reply = ask()
            errors = reply.get("Errors", [])
            waiting = (
                errors
                and not reply.get("Instances")
                and all(
                    _profile_propagating(e.get("ErrorCode", ""), e.get("ErrorMessage", ""))
                    for e in errors
                )
            )
            if not waiting or time.monotonic() > deadline:
                break
            time.sleep(3)
        got = Fulfilment(fleet_ids=[reply["FleetId"]] if reply.get("FleetId") else [])
        for launched in reply.get("Instances", []):
            for instance_id in launched["InstanceIds"]:
                got.records.append(
                    InstanceRecord(
                        instance_id=instance_id,
                        role="worker",
                        instance_type=launched.get("InstanceType", request.instance_type),
                        zone=request.zone,
                        market=launched.get("Lifecycle", request.market),
                        state="pending",
                        launch_time=datetime.now(UTC),
                        vcpus=request.vcpus,
                        hourly=request.hourly,
                    )
                )
        for error in reply.get("Errors", []):
            got.errors.append(
                PoolError(*request.pool, error.get("ErrorCode", "?"), error.get("ErrorMessage", ""))
            )
        if got.cores < cores and not got.errors:
            short = f"EC2 gave {got.cores} of {cores} vCPUs without an error (price cap?)"
            got.errors.append(PoolError(*request.pool, "Unfulfilled", short))
        return got

    def launch_instance(
        self, ident: ClusterIdentity, env: NodeEnvironment, request: LaunchRequest, user_data: str
    ) -> InstanceRecord:
        """One on-demand instance (the scheduler): it holds the job's state, so no spot."""
        reply = _while_profile_propagates(
            lambda: self.ec2.run_instances(
                **_node_settings(ident, env, request.role, architecture_of(request.instance_type)),
                InstanceType=request.instance_type,
                MinCount=1,
                MaxCount=1,
                UserData=user_data,
                **_placement(env, request.role, env.subnets[request.zone]),
            )
        )
        record = _record(reply["Instances"][0], request.vcpus)
        if self.shared_host:  # the sandbox: every node is a process of this one host
            record = replace(record, private_ip=self.shared_host)
        record.hourly = request.hourly
        return record

    def instances(
        self, ident: ClusterIdentity, states: list[str] | None = None
    ) -> list[InstanceRecord]:
        return [_record(i) for i in self._tagged_instances(TAG_CLUSTER, ident.cluster_id, states)]

    def terminate(self, ident: ClusterIdentity, instance_ids: list[str]) -> list[str]:
        """Terminate some of the cluster's instances (a scale-down): only those tagged with
        its id, a call per 1,000, without waiting. Returns the ids now ended or ending (an
        instance not found by its tag yet is not among them: ask again later)."""
        wanted = set(instance_ids)
        found = [r for r in self.instances(ident) if r.instance_id in wanted]
        self._terminate_ids([r.instance_id for r in found if r.state in LIVE_STATES])
        return [r.instance_id for r in found]

    def _terminate_ids(self, ids: list[str]) -> None:
        for start in range(0, len(ids), 1000):  # EC2 takes at most 1,000 ids a call
            self.ec2.terminate_instances(InstanceIds=ids[start : start + 1000])

    # Resources by tag: of one cluster (burst:cluster) for teardown, of all (burst:managed)
    # for gc.

    def _tagged_instances(self, key: str, value: str, states: list[str] | None = None) -> list:
        filters = _tag_filter(key, value)
        if states:
            filters.append({"Name": "instance-state-name", "Values": states})
        pages = self.ec2.get_paginator("describe_instances").paginate(Filters=filters)
        return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]

    def _tagged_templates(self, key: str, value: str) -> list[dict]:
        pages = self.ec2.get_paginator("describe_launch_templates").paginate(
            Filters=_tag_filter(key, value)
        )
        return [t for page in pages for t in page["LaunchTemplates"]]

    def _tagged_groups(self, key: str, value: str) -> list[dict]:
        pages = self.ec2.get_paginator("describe_security_groups").paginate(
            Filters=_tag_filter(key, value)
        )
        return [g for page in pages for g in page["SecurityGroups"]]

    def _tagged_fleets(self, key: str, value: str) -> list[dict]:
        """Fleets carrying a tag, not yet deleted. DescribeFleets lists `instant` fleets only
        by id and cannot filter by tag, so the ids come from DescribeTags."""
        pages = self.ec2.get_paginator("describe_tags").paginate(
            Filters=[
                {"Name": "resource-type", "Values": ["fleet"]},
                {"Name": "key", "Values": [key]},
                {"Name": "value", "Values": [value]},
            ]
        )
        ids = sorted({t["ResourceId"] for page in pages for t in page["Tags"]})
        fleets = []
        for start in range(0, len(ids), 100):
            fleets += self._describe_fleets(ids[start : start + 100])
        return [f for f in fleets if not f["FleetState"].startswith("deleted")]

    def _describe_fleets(self, ids: list[str]) -> list[dict]:
        """One unknown id (a tag seen before its fleet, EC2 being eventually consistent, or a
        fleet long deleted) fails the whole batch: then each is asked alone, the unknown
        skipped."""
        try:
            return self.ec2.describe_fleets(FleetIds=ids)["Fleets"]
        except ClientError as error:
            if not error_code(error).startswith("InvalidFleetId"):
                raise
        if len(ids) == 1:
            return []
        return [fleet for one in ids for fleet in self._describe_fleets([one])]

    def scheduler_address(self, ident: ClusterIdentity) -> dict | None:
        """The scheduler publishes its addresses once it listens; None until then."""
        try:
            value = self.ssm.get_parameter(Name=f"{ident.parameter_path}/scheduler")
        except ClientError as error:
            if error_code(error) == "ParameterNotFound":
                return None
            raise
        return json.loads(value["Parameter"]["Value"])

    def node_failures(self, ident: ClusterIdentity) -> list[str]:
        """Messages of nodes that gave up before joining (see burst.node.report_failure): the
        objects under failed/ in the cluster's bucket, each read up to its first 4,000 bytes."""
        bucket = storage.bucket_name(ident)
        try:
            listed = self.s3.list_objects_v2(Bucket=bucket, Prefix=FAILED_PREFIX, MaxKeys=100)
        except ClientError as error:
            if error_code(error) == "NoSuchBucket":  # not made yet, or already gone
                return []
            raise
        found = []
        for item in listed.get("Contents", []):
            body = self.s3.get_object(
                Bucket=bucket, Key=item["Key"], Range=f"bytes=0-{FAILURE_BYTES - 1}"
            )["Body"].read()
            found.append(body.decode("utf-8", errors="replace"))
        return found

    # -------------------------------------------------------------- teardown

    def teardown(
        self, ident: ClusterIdentity, wait: float = 600, instance_ids: Sequence[str] = ()
    ) -> TeardownReport:
        """Delete everything of the cluster, found by tag (and the instances by the ids the
        caller recorded too: a new instance's tags may not be visible yet), then prove nothing
        is left."""
        report = TeardownReport()
        terminate = lambda: self._terminate(ident, wait, instance_ids)  # noqa: E731
        steps: list[tuple[str, Callable[[], list[str]], list[str]]] = [
            ("delete fleets", lambda: self._delete_fleets(ident), report.deleted),
            ("terminate instances", terminate, report.terminated),
            ("delete launch templates", lambda: self._delete_templates(ident), report.deleted),
            ("delete security group", lambda: self._delete_groups(ident, wait), report.deleted),
            ("delete parameters", lambda: self._delete_parameters(ident), report.deleted),
            ("delete bucket", lambda: storage.delete_bucket(self.s3, ident), report.deleted),
            ("delete node role", lambda: self._delete_role(ident), report.deleted),
        ]
        for what, step, done in steps:
            try:
                done.extend(step())
            except Exception as error:  # keep going: a later step may still free resources
                report.errors.append(f"{what}: {error}")
        try:
            report.leftovers = self.leftovers(ident)
        except Exception as error:  # what cannot be checked is not verified
            report.errors.append(f"verify: {error}")
        return report

    def _terminate(self, ident: ClusterIdentity, wait: float, known: Sequence[str]) -> list[str]:
        # By tag and by the ids the caller recorded, as long as EC2 shows them: a filter, not
        # InstanceIds, so an id not yet visible (eventual consistency) fails nothing.
        ids = self._live(ident, known)
        self._terminate_ids(ids)
        # Poll instead of the instance_terminated waiter, which gives up at once on an
        # instance still `pending` (common right after a launch).
        deadline = time.monotonic() + wait
        while remaining := self._live(ident, known):
            if time.monotonic() > deadline:
                raise CloudError(f"{len(remaining)} instances not terminated after {wait:.0f}s")
            if late := sorted(set(remaining) - set(ids)):  # seen late: end them too
                self._terminate_ids(late)
                ids += late
            time.sleep(2)
        return ids

    def _live(self, ident: ClusterIdentity, known: Sequence[str]) -> list[str]:
        """The cluster's instances not yet terminated, by tag and by the known ids."""
        live = {i.instance_id for i in self.instances(ident, LIVE_STATES)}
        for start in range(0, len(known), 200):
            pages = self.ec2.get_paginator("describe_instances").paginate(
                Filters=[
                    {"Name": "instance-id", "Values": list(known[start : start + 200])},
                    {"Name": "instance-state-name", "Values": LIVE_STATES},
                ]
            )
            for page in pages:
                live |= {i["InstanceId"] for r in page["Reservations"] for i in r["Instances"]}
        return sorted(live)

    def _fleets(self, ident: ClusterIdentity) -> list[str]:
        return [f["FleetId"] for f in self._tagged_fleets(TAG_CLUSTER, ident.cluster_id)]

    def _delete_fleets(self, ident: ClusterIdentity) -> list[str]:
        """Deleting an instant fleet terminates its instances, at most 1,000 per call (which
        is why no fleet holds more): one call per fleet."""
        ids = self._fleets(ident)
        for fleet_id in ids:
            # An instant fleet can only be deleted with its instances (EC2 refuses False).
            reply = self.ec2.delete_fleets(FleetIds=[fleet_id], TerminateInstances=True)
            for failed in reply.get("UnsuccessfulFleetDeletions", []):
                raise CloudError(f"fleet {fleet_id} not deleted: {failed.get('Error')}")
        return ids

    def _templates(self, ident: ClusterIdentity) -> list[str]:
        return [
            t["LaunchTemplateId"] for t in self._tagged_templates(TAG_CLUSTER, ident.cluster_id)
        ]

    def _delete_templates(self, ident: ClusterIdentity) -> list[str]:
        ids = self._templates(ident)
        for template_id in ids:
            self.ec2.delete_launch_template(LaunchTemplateId=template_id)
        return ids

    def _groups(self, ident: ClusterIdentity) -> list[str]:
        return [g["GroupId"] for g in self._tagged_groups(TAG_CLUSTER, ident.cluster_id)]

    def _delete_groups(self, ident: ClusterIdentity, wait: float) -> list[str]:
        deleted = []
        for group_id in self._groups(ident):
            deadline = time.monotonic() + wait
            while True:
                try:
                    self.ec2.delete_security_group(GroupId=group_id)
                    break
                except ClientError as error:
                    # Network interfaces of terminated instances linger for a while on AWS.
                    if error_code(error) != "DependencyViolation" or time.monotonic() > deadline:
                        raise
                    time.sleep(5)
            deleted.append(group_id)
        return deleted

    def _parameters_under(self, path: str) -> list[dict]:
        pages = self.ssm.get_paginator("get_parameters_by_path").paginate(Path=path, Recursive=True)
        return [p for page in pages for p in page["Parameters"]]

    def _parameters(self, ident: ClusterIdentity) -> list[str]:
        return [p["Name"] for p in self._parameters_under(ident.parameter_path)]

    def _delete_parameters(self, ident: ClusterIdentity) -> list[str]:
        names = self._parameters(ident)
        for start in range(0, len(names), 10):
            self.ssm.delete_parameters(Names=names[start : start + 10])
        return names

    def _delete_role(self, ident: ClusterIdentity) -> list[str]:
        deleted = []
        for name in role_names(ident):
            try:
                self.iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=name)
            except self.iam.exceptions.NoSuchEntityException:
                pass
            steps: list[tuple[str, Callable[..., Any], dict[str, str]]] = [
                (
                    "instance-profile",
                    self.iam.delete_instance_profile,
                    {"InstanceProfileName": name},
                ),
                (
                    "role-policy",
                    self.iam.delete_role_policy,
                    {"RoleName": name, "PolicyName": "burst-node"},
                ),
                ("role", self.iam.delete_role, {"RoleName": name}),
            ]
            for what, delete, names in steps:
                try:
                    delete(**names)
                    deleted.append(f"{what}/{name}")
                except self.iam.exceptions.NoSuchEntityException:
                    pass
        return deleted

    def survey(self) -> list[Remnant]:
        """Every resource in this region tagged `burst:managed=true`, with its tags. IAM is
        global: a role counts only with this region's `burst:region` tag."""
        found = []
        for instance in self._tagged_instances(TAG_MANAGED, "true", LIVE_STATES):
            state = instance["State"]["Name"]
            found.append(
                Remnant(
                    f"instance {instance['InstanceId']} ({state})",
                    tag_dict(instance.get("Tags")),
                    instance.get("LaunchTime"),
                    running=state in ("pending", "running"),
                )
            )
        for fleet in self._tagged_fleets(TAG_MANAGED, "true"):
            found.append(
                Remnant(
                    f"fleet {fleet['FleetId']}",
                    tag_dict(fleet.get("Tags")),
                    fleet.get("CreateTime"),
                )
            )
        for template in self._tagged_templates(TAG_MANAGED, "true"):
            found.append(
                Remnant(
                    f"launch-template {template['LaunchTemplateId']}",
                    tag_dict(template.get("Tags")),
                    template.get("CreateTime"),
                )
            )
        for group in self._tagged_groups(TAG_MANAGED, "true"):
            found.append(Remnant(f"security-group {group['GroupId']}", tag_dict(group.get("Tags"))))
        for page in self.iam.get_paginator("list_roles").paginate(PathPrefix=IAM_PATH):
            for role in page["Roles"]:
                tags = tag_dict(self.iam.list_role_tags(RoleName=role["RoleName"])["Tags"])
                if tags.get(TAG_REGION) == self.region:
                    found.append(Remnant(f"role {role['RoleName']}", tags, role.get("CreateDate")))
        found += storage.survey(self.s3, self.region)
        # Only parameters burst tagged (the cluster's secret): a name under /burst alone does
        # not make a cluster, nor its bucket burst's to delete. DescribeParameters filters by
        # tag: docs.aws.amazon.com/systems-manager/latest/APIReference/
        # API_ParameterStringFilter.html
        pages = self.ssm.get_paginator("describe_parameters").paginate(
            ParameterFilters=[
                {"Key": "Path", "Option": "Recursive", "Values": ["/burst"]},
                {"Key": f"tag:{TAG_MANAGED}", "Values": ["true"]},
            ]
        )
        for parameter in (p for page in pages for p in page["Parameters"]):
            tags = {TAG_CLUSTER: parameter["Name"].split("/")[2], TAG_MANAGED: "true"}
            found.append(Remnant(f"parameter {parameter['Name']}", tags))
        return found

    def leftovers(self, ident: ClusterIdentity) -> list[str]:
        """Everything of this cluster that still exists (and may still bill)."""
        found = [
            f"instance {i.instance_id} ({i.state})" for i in self.instances(ident, LIVE_STATES)
        ]
        found += [f"fleet {f}" for f in self._fleets(ident)]
        found += [f"launch-template {t}" for t in self._templates(ident)]
        found += [f"security-group {g}" for g in self._groups(ident)]
        found += [f"parameter {p}" for p in self._parameters(ident)]
        found += storage.leftovers(self.s3, ident)
        for name in role_names(ident):
            try:
                self.iam.get_role(RoleName=name)
                found.append(f"role {name}")
            except self.iam.exceptions.NoSuchEntityException:
                pass
            try:
                self.iam.get_instance_profile(InstanceProfileName=name)
                found.append(f"instance-profile {name}")
            except self.iam.exceptions.NoSuchEntityException:
                pass
        return found

    # ------------------------------------------------------------- preflight

    def account(self) -> str:
        """The credentials' identity."""
        return self._caller()["Arn"]

    def _caller(self) -> dict:
        """STS's GetCallerIdentity (it needs no permission), asked once per provider."""
        if self._caller_identity is None:
            self._caller_identity = self.sts.get_caller_identity()
        return self._caller_identity

    def zones(self) -> list[str]:
        reply = self.ec2.describe_availability_zones(
            Filters=[{"Name": "state", "Values": ["available"]}]
        )
        return sorted(zone["ZoneName"] for zone in reply["AvailabilityZones"])

    def offered(self, instance_types: set[str], zones: set[str]) -> set[tuple[str, str]]:
        pages = self.ec2.get_paginator("describe_instance_type_offerings").paginate(
            LocationType="availability-zone",
            Filters=[
                {"Name": "instance-type", "Values": sorted(instance_types)},
                {"Name": "location", "Values": sorted(zones)},
            ],
        )
        return {
            (offer["InstanceType"], offer["Location"])
            for page in pages
            for offer in page["InstanceTypeOfferings"]
        }

    def vcpu_quotas(self) -> list[VcpuQuota]:
        """Each market's quota (Service Quotas, the applied value) and its use: the vCPUs of
        the region's pending and running standard instances, whoever launched them."""
        running: dict[str, dict[str, int]] = {"spot": {}, "on-demand": {}}
        pages = self.ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}]
        )
        for instance in (i for page in pages for r in page["Reservations"] for i in r["Instances"]):
            kind = instance["InstanceType"]
            if standard_family(kind):
                market = "spot" if instance.get("InstanceLifecycle") == "spot" else "on-demand"
                running[market][kind] = running[market].get(kind, 0) + 1
        kinds = sorted({kind for counts in running.values() for kind in counts})
        vcpus = {}
        if kinds:
            reply = self.ec2.describe_instance_types(InstanceTypes=kinds)["InstanceTypes"]
            vcpus = {t["InstanceType"]: t["VCpuInfo"]["DefaultVCpus"] for t in reply}
        quotas = []
        for market, code in VCPU_QUOTAS.items():
            try:
                reply = self.quotas.get_service_quota(ServiceCode="ec2", QuotaCode=code)
                limit = float(reply["Quota"]["Value"])
            except ClientError:  # not readable (no permission, or no such quota here)
                limit = None
            in_use = sum(vcpus.get(kind, 0) * n for kind, n in running[market].items())
            quotas.append(VcpuQuota(market, code, limit, in_use))
        return quotas


def _worker_bucket_statements(ident: ClusterIdentity, read_objects: list[str]) -> list[dict]:
    """A worker reads the bucket (job files, inputs) and the named inputs, and writes only the
    tasks' outputs (jobs/<job>/outputs/...): never results, status or the driver's objects."""
    objects = f"arn:aws:s3:::{storage.bucket_name(ident)}/*"
    kept = [
        s for s in storage.node_policy_statements(ident, read_objects) if s["Resource"] != objects
    ]
    return [
        *kept,
        {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": objects},
        {
            "Effect": "Allow",
            "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
            "Resource": objects.replace("/*", "/jobs/*/outputs/*"),
        },
        {
            # Its own failure report only: for an instance's role, aws:userid is
            # "<role id>:<instance id>", one per instance (IAM policy variables:
            # https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_variables.html;
            # they need the policy's Version 2012-10-17).
            "Effect": "Allow",
            "Action": ["s3:PutObject"],
            "Resource": objects.replace("/*", f"/{FAILED_PREFIX}${{aws:userid}}/*"),
        },
    ]


def role_names(ident: ClusterIdentity) -> list[str]:
    """The cluster's IAM roles (and instance profiles, of the same names): scheduler, worker."""
    return [ident.name, f"{ident.name}-worker"]


def _node_settings(
    ident: ClusterIdentity, env: NodeEnvironment, role: str, architecture: str
) -> dict[str, Any]:
    """What every node launches with, scheduler (RunInstances) or worker (launch template):
    the two APIs take the same names."""
    return {
        "ImageId": env.images[architecture],
        "IamInstanceProfile": {
            "Name": env.worker_profile
            if role == "worker" and env.worker_profile
            else env.instance_profile
        },
        "InstanceInitiatedShutdownBehavior": "terminate",  # the dead-man's switch
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        "TagSpecifications": ident.tag_specifications(role, "instance", "volume"),
        **_root_volume(env.disk_gb),
    }


def _free(subnet: dict) -> int:
    return int(subnet.get("AvailableIpAddressCount", 0))


def _placement(env: NodeEnvironment, role: str, subnet_id: str | None = None) -> dict[str, Any]:
    """A node's subnet (RunInstances; a fleet's override gives the workers') and security
    group, and whether it gets a public IPv4 address. That is said on the primary network
    interface (DeviceIndex 0), where AssociatePublicIpAddress lives; the subnet and groups then
    go there too, as EC2 refuses them at both levels:
    https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_InstanceNetworkInterfaceSpecification.html
    A fleet's SubnetId override applies to the template's interface. Without an explicit
    network, the subnet's own default (the default VPC's: a public address for every node)."""
    if env.network is None:
        return {
            "SecurityGroupIds": [env.security_group_id],
            **({"SubnetId": subnet_id} if subnet_id else {}),
        }
    interface: dict[str, Any] = {
        "DeviceIndex": 0,
        "AssociatePublicIpAddress": env.network.public(role),
        "Groups": [env.security_group_id],
        "DeleteOnTermination": True,
    }
    if subnet_id:
        interface["SubnetId"] = subnet_id
    return {"NetworkInterfaces": [interface]}


# Amazon Linux 2023's root device, on x86_64 and arm64 alike:
# https://docs.aws.amazon.com/linux/al2023/ug/ec2.html
ROOT_DEVICE = "/dev/xvda"


def _root_volume(disk_gb: int | None) -> dict[str, Any]:
    """A root volume of `disk_gb` GiB (gp3, deleted with its instance), or the image's."""
    if disk_gb is None:
        return {}
    volume = {"VolumeSize": disk_gb, "VolumeType": "gp3", "DeleteOnTermination": True}
    return {"BlockDeviceMappings": [{"DeviceName": ROOT_DEVICE, "Ebs": volume}]}


def _tag_filter(key: str, value: str) -> list[dict[str, Any]]:
    return [{"Name": f"tag:{key}", "Values": [value]}]


def _record(instance: dict, vcpus: int | None = None) -> InstanceRecord:
    cpu = instance.get("CpuOptions", {})
    tags = tag_dict(instance.get("Tags"))
    return InstanceRecord(
        instance_id=instance["InstanceId"],
        role=tags.get(TAG_ROLE, "unknown"),
        instance_type=instance["InstanceType"],
        zone=instance["Placement"]["AvailabilityZone"],
        market="spot" if instance.get("InstanceLifecycle") == "spot" else "on-demand",
        state=instance["State"]["Name"],
        launch_time=instance.get("LaunchTime", datetime.now(UTC)),
        vcpus=vcpus or cpu.get("CoreCount", 0) * cpu.get("ThreadsPerCore", 1),
        private_ip=instance.get("PrivateIpAddress"),
    )


def _while_profile_propagates(call: Callable[[], dict], seconds: float = 60) -> dict:
    """A new instance profile takes seconds to reach EC2 (IAM is eventually consistent);
    botocore does not retry this error, so wait it out here."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except ClientError as error:
            if not _profile_propagating(error_code(error), str(error)):
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(3)


def _profile_propagating(code: str, message: str) -> bool:
    """EC2's answer while a new instance profile has not reached it yet."""
    return code == "InvalidParameterValue" and "instance profile" in message.lower()
