"""The cluster's bucket through the provider, on the sandbox's S3: created tagged in the
cluster's region, usable by the node role only, found as a leftover, deleted at teardown."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

from burst.cloud import sandbox as sandbox_module
from burst.cloud.aws import AwsProvider, ClusterIdentity
from tests.conftest import client, settled_leftovers


def test_bucket_lifecycle_and_node_policy(sandbox):
    region = "us-west-2"  # S3 wants a location constraint outside us-east-1
    ident = ClusterIdentity(uuid.uuid4().hex[:12], "store-job",
                            datetime.now(UTC) + timedelta(hours=1))
    provider = AwsProvider(sandbox_module.session(), region, sandbox.endpoint)
    provider.prepare(ident, [f"{region}a"], "127.0.0.1/32", {"ca": "x"},
                     read_objects=["s3://lab-data/runs/table.csv"])
    s3 = client(sandbox, "s3", region)
    name = f"burst-{ident.cluster_id}"
    assert s3.get_bucket_location(Bucket=name)["LocationConstraint"] == region
    tags = {t["Key"]: t["Value"] for t in s3.get_bucket_tagging(Bucket=name)["TagSet"]}
    assert tags["burst:cluster"] == ident.cluster_id and tags["burst:managed"] == "true"
    assert tags["burst:role"] == "storage" and tags["burst:job"] == "store-job"
    policy = client(sandbox, "iam").get_role_policy(RoleName=name, PolicyName="burst-node")
    document = policy["PolicyDocument"]
    document = json.loads(document) if isinstance(document, str) else document
    resources = [r for s in document["Statement"] for r in
                 (s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]])]
    assert f"arn:aws:s3:::{name}" in resources and f"arn:aws:s3:::{name}/*" in resources
    assert "arn:aws:s3:::lab-data/runs/table.csv" in resources
    assert not any(r in ("*", "arn:aws:s3:::*") for r in resources)
    # A detached job's driver may terminate its own cluster's instances, and no others.
    [terminate] = [st for st in document["Statement"] if st["Action"] == "ec2:TerminateInstances"]
    assert terminate["Condition"] == {
        "StringEquals": {"ec2:ResourceTag/burst:cluster": ident.cluster_id}}

    s3.put_object(Bucket=name, Key="jobs/j/outputs/0/a.csv", Body=b"1,2\n")
    assert f"bucket {name}" in provider.leftovers(ident)
    report = provider.teardown(ident, wait=30)
    assert report.verified, report
    assert f"bucket/{name}" in report.deleted
    assert name not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert settled_leftovers(sandbox, ident.cluster_id) == []
