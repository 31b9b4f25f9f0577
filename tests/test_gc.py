"""`burst gc`: what a vanished client left behind is found by tag, listed, and deleted."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

from typer.testing import CliRunner

from burst import tls
from burst.cli import app
from burst.cloud import sandbox as sandbox_module
from burst.cloud.aws import AwsProvider, ClusterIdentity
from burst.gc import collect_garbage
from burst.plan import plan
from burst.spec import parse_spec
from tests.conftest import client, settled_leftovers

SLEEPER = "#!/bin/sh\nsleep 600\n"
# gc deletes whatever it finds expired in a region: this test abandons its clusters in a sandbox
# region no other test uses, and sweeps that region only, so it can never delete theirs.
REGION = "eu-west-1"
OURS = {"gcexpired0001", "gclive0000001", "gcidle0000001"}


def abandon(cloud, cluster_id: str, deadline: datetime, instances: bool = True) -> None:
    """What a client killed with SIGKILL leaves: everything, still running."""
    provider = AwsProvider(sandbox_module.session(), REGION, cloud.endpoint)
    ident = ClusterIdentity(cluster_id, f"job-{cluster_id}", deadline)
    spec = parse_spec(
        {
            "name": "gc",
            "region": REGION,
            "cores": 4,
            "max_runtime": "5m",
            "instance_types": ["c5.large"],
            "run": {"function": "m:f", "tasks": [1]},
        }
    )
    capacity = plan(spec)
    env = provider.prepare(
        ident,
        [f"{REGION}a", f"{REGION}b", f"{REGION}c"],
        "127.0.0.1/32",
        tls.issue(cluster_id, timedelta(minutes=5)).node_bundle(),
    )
    if instances:
        provider.launch_instance(ident, env, capacity.lines[0], SLEEPER)
        template = provider.launch_template(ident, env, SLEEPER, "x86_64")
        worker = capacity.workers[0]
        provider.launch_fleet(ident, env, template, worker, worker.cores)


def test_gc_lists_then_deletes_expired_and_idle_clusters_only(sandbox):
    now = datetime.now(UTC)
    abandon(sandbox, "gcexpired0001", now - timedelta(minutes=1))
    abandon(sandbox, "gclive0000001", now + timedelta(hours=1))
    abandon(sandbox, "gcidle0000001", now + timedelta(hours=1), instances=False)
    provider = AwsProvider(sandbox_module.session(), REGION, sandbox.endpoint)

    listed = CliRunner().invoke(app, ["gc", "--json", "--region", REGION])
    assert listed.exit_code == 0, listed.output
    found = {c["cluster_id"]: c for c in json.loads(listed.stdout)}
    assert set(found) <= OURS  # no other test's cluster is in this region
    assert "gclive0000001" not in found  # running and within its deadline
    assert "has passed" in found["gcexpired0001"]["reason"]
    kinds = {r.split()[0] for r in found["gcexpired0001"]["resources"]}
    assert kinds == {
        "instance",
        "fleet",
        "launch-template",
        "security-group",
        "role",
        "parameter",
        "bucket",
    }
    # Without --yes nothing is touched.
    assert settled_leftovers(sandbox, "gcexpired0001", seconds=0)

    # The idle cluster (no instance) is young: spared unless it is old enough.
    assert "gcidle0000001" not in found
    later = now + timedelta(hours=0, minutes=30)
    assert {c.cluster_id for c in collect_garbage(provider, now=later)} == {
        "gcexpired0001", "gcidle0000001"}

    deleted = CliRunner().invoke(app, ["gc", "--yes", "--json", "--region", REGION])
    assert deleted.exit_code == 0, deleted.output
    report = {c["cluster_id"]: c for c in json.loads(deleted.stdout)}
    assert set(report) == {"gcexpired0001"}
    assert report["gcexpired0001"]["teardown"]["verified"]
    assert settled_leftovers(sandbox, "gcexpired0001") == []
    assert settled_leftovers(sandbox, "gclive0000001", seconds=0)  # still there

    swept = collect_garbage(provider, delete=True, now=now + timedelta(hours=2))
    assert {c.cluster_id for c in swept} == {"gclive0000001", "gcidle0000001"}
    assert all(c.teardown.verified for c in swept)
    assert settled_leftovers(sandbox, "gclive0000001") == []
    assert settled_leftovers(sandbox, "gcidle0000001") == []


def test_gc_leaves_alone_what_burst_did_not_make(sandbox):
    """A bucket named like a cluster's, and parameters under /burst, that burst did not tag:
    gc does not take them for a cluster, and a teardown of that id leaves the bucket alone."""
    stranger = uuid.uuid4().hex[:12]
    s3 = client(sandbox, "s3", REGION)
    s3.create_bucket(Bucket=f"burst-{stranger}",
                     CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket=f"burst-{stranger}", Key="thesis.tex", Body=b"precious")
    ssm = client(sandbox, "ssm", REGION)
    ssm.put_parameter(Name=f"/burst/{stranger}/setting", Value="mine", Type="String")
    provider = AwsProvider(sandbox_module.session(), REGION, sandbox.endpoint)
    later = datetime.now(UTC) + timedelta(days=30)
    swept = collect_garbage(provider, delete=True, now=later)
    assert stranger not in {c.cluster_id for c in swept}
    report = provider.teardown(ClusterIdentity(stranger, "?", later), wait=30)
    assert s3.get_object(Bucket=f"burst-{stranger}", Key="thesis.tex")["Body"].read() == (
        b"precious")
    assert report.verified and f"bucket/burst-{stranger}" not in report.deleted
    s3.delete_object(Bucket=f"burst-{stranger}", Key="thesis.tex")
    s3.delete_bucket(Bucket=f"burst-{stranger}")
