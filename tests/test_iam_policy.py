"""scripts/iam-policy.json allows every AWS call the client side of burst makes.

The calls are recorded, not guessed: every boto3 session created in this process while the
client side runs for real on the sandbox (a command job with inputs and outputs, live offers, a
garbage collection that deletes an abandoned cluster) gets a botocore `before-call` hook. The
nodes' calls are made by their own processes, with the cluster's role, and are not recorded.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import boto3.session
import yaml

from burst.catalog import live_offers
from burst.cloud import sandbox as sandbox_module
from burst.cloud.aws import AwsProvider
from burst.detached import locate, submit, wait
from burst.gc import collect_garbage
from burst.job import load_job
from burst.runner import run
from tests.conftest import REPO, client
from tests.test_gc import REGION as GC_REGION
from tests.test_gc import abandon

# S3's IAM actions are not always named as its API operations.
S3_ACTIONS = {
    "ListObjects": ["ListBucket"],
    "ListObjectsV2": ["ListBucket"],
    "ListObjectVersions": ["ListBucketVersions"],
    "ListBuckets": ["ListAllMyBuckets"],
    "HeadBucket": ["ListBucket"],
    "HeadObject": ["GetObject"],
    "DeleteObjects": ["DeleteObject", "DeleteObjectVersion"],
    "PutPublicAccessBlock": ["PutBucketPublicAccessBlock"],
    # upload_file's multipart upload: its parts are PutObject, and a failed one is aborted.
    "CreateMultipartUpload": ["PutObject", "AbortMultipartUpload"],
    "UploadPart": ["PutObject"],
    "CompleteMultipartUpload": ["PutObject"],
    "ListMultipartUploads": ["ListBucketMultipartUploads"],
    "ListParts": ["ListMultipartUploadParts"],
    "CopyObject": ["GetObject", "PutObject"],
    "UploadPartCopy": ["GetObject", "PutObject"],
}
# Launching with an instance profile passes its role: an authorization without an API call.
IMPLIED = {"ec2:RunInstances": ["iam:PassRole"], "ec2:CreateFleet": ["iam:PassRole"]}
# AWS documents that GetCallerIdentity needs no permission (burst asks it to find a sandbox).
NEEDS_NO_PERMISSION = {"sts:GetCallerIdentity"}


def record_calls(monkeypatch) -> set[tuple[str, str]]:
    """(service, operation) of every call made through a boto3 session created from now on."""
    calls: set[tuple[str, str]] = set()
    real_init = boto3.session.Session.__init__

    def record(model, **kwargs) -> None:
        calls.add((model.service_model.signing_name, model.name))

    def init(self, *args, **kwargs) -> None:
        real_init(self, *args, **kwargs)
        self.events.register("before-call", record)

    monkeypatch.setattr(boto3.session.Session, "__init__", init)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # boto3.client() makes a new one
    return calls


def actions(calls: set[tuple[str, str]]) -> set[str]:
    needed = set()
    for service, operation in calls:
        names = S3_ACTIONS.get(operation, [operation]) if service == "s3" else [operation]
        for name in names:
            needed.add(f"{service}:{name}")
            needed |= set(IMPLIED.get(f"{service}:{name}", []))
    return needed - NEEDS_NO_PERMISSION


def allowed_actions() -> set[str]:
    policy = json.loads((REPO / "scripts" / "iam-policy.json").read_text())
    allowed = set()
    for statement in policy["Statement"]:
        listed = statement["Action"]
        allowed |= {listed} if isinstance(listed, str) else set(listed)
    return allowed


def test_the_policy_allows_every_call_the_client_makes(sandbox, tmp_path, monkeypatch):
    # The test's own setup goes through a client made before recording starts.
    s3 = client(sandbox, "s3")
    external = f"iam-test-inputs-{tmp_path.name[-8:].lower().replace('_', '-')}"
    s3.create_bucket(Bucket=external)
    s3.put_object(Bucket=external, Key="weights.bin", Body=b"\0" * 8)
    (tmp_path / "big.bin").write_bytes(b"\1" * (9 * 1024 * 1024))  # over the multipart threshold
    spec = {
        "name": "iam-probe",
        "cores": 2,
        "max_runtime": "5m",
        "instance_types": ["c5.large"],
        "inputs": ["big.bin", f"s3://{external}/weights.bin"],
        "run": {
            "command": """sh -c 'cd "$BURST_INPUT" && wc -c big.bin weights.bin \
                          > "$BURST_OUTPUT/sizes-$1.txt"' _ {n}""",
            "params": {"n": [1, 2]},
        },
    }
    (tmp_path / "probe.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.chdir(tmp_path)
    calls = record_calls(monkeypatch)

    result = run(tmp_path / "probe.yaml")
    assert result.status == "succeeded", result.manifest["failures"]
    sizes = (result.folder / "outputs" / "n=1" / "sizes-1.txt").read_text()
    assert "9437184 big.bin" in sizes and "8 weights.bin" in sizes  # the inputs went through S3
    assert result.manifest["teardown"]["verified"]

    # A detached job: submitted, found again, waited for and collected, on the same policy.
    submitted = submit(load_job(tmp_path / "probe.yaml"))
    manifest = wait(locate(submitted["job_id"]))
    assert manifest["status"] == "succeeded" and manifest["teardown"]["verified"]

    ec2 = sandbox_module.session().client("ec2", endpoint_url=sandbox.endpoint)
    assert live_offers(ec2, "us-east-1", ["c5"])

    cluster_id = f"iam{tmp_path.name[-9:].lower().replace('_', '')}"
    abandon(sandbox, cluster_id, datetime.now(UTC) - timedelta(minutes=1))
    provider = AwsProvider(sandbox_module.session(), GC_REGION, sandbox.endpoint)
    swept = collect_garbage(provider, delete=True)
    assert [c.cluster_id for c in swept] == [cluster_id] and swept[0].teardown.verified

    # The three paths ran what they must have: fleets, prices, transfers, the sweep.
    for call in [("ec2", "CreateFleet"), ("ec2", "DescribeSpotPriceHistory"),
                 ("s3", "CreateMultipartUpload"), ("s3", "UploadPart"), ("s3", "GetObject"),
                 ("s3", "HeadObject"), ("ec2", "DeleteFleets"), ("iam", "ListRoles"),
                 ("s3", "PutObject"), ("s3", "ListObjectsV2")]:
        assert call in calls, call
    assert sorted(actions(calls) - allowed_actions()) == []
