"""scripts/iam-policy.json allows every AWS call the client side of burst makes.

The calls are read from the source (clients named ec2, ssm, iam, s3), so a new call without
its permission fails here rather than on someone's first real run.
"""

from __future__ import annotations

import json
import re

import boto3

from tests.conftest import REPO

# The modules that run with the user's credentials (node.py and taskrun.py run with the
# cluster's own role; sandbox.py is the sandbox's hypervisor).
CLIENT_SIDE = ["cloud/aws.py", "gc.py", "storage.py", "catalog.py", "cli.py", "transfer.py"]
CALL = re.compile(r"\b(ec2|ssm|iam|s3)\.(?:get_paginator\(\s*\"(\w+)\"|(\w+)\()")
# ... and through a paging helper: _pages(ec2, "describe_instance_types", ...)
HELPER_CALL = re.compile(r"\b(ec2|ssm|iam|s3),\s*\"(\w+)\"()")
# S3's IAM actions are not always named as its API operations.
S3_ACTIONS = {
    "ListObjectsV2": ["ListBucket"],
    "ListObjectVersions": ["ListBucketVersions"],
    "ListBuckets": ["ListAllMyBuckets"],
    "HeadBucket": ["ListBucket"],
    "DeleteObjects": ["DeleteObject", "DeleteObjectVersion"],
    "PutPublicAccessBlock": ["PutBucketPublicAccessBlock"],
    "upload_file": ["PutObject", "AbortMultipartUpload"],
    "download_file": ["GetObject"],
}


def used_actions() -> set[str]:
    found = set()
    for module in CLIENT_SIDE:
        text = (REPO / "burst" / module).read_text()
        for service, paginated, method in CALL.findall(text) + HELPER_CALL.findall(text):
            name = paginated or method
            if name in ("get_paginator", "exceptions"):
                continue
            if name in S3_ACTIONS:
                found |= {f"s3:{a}" for a in S3_ACTIONS[name]}
                continue
            client = boto3.client(service, region_name="us-east-1",
                                  aws_access_key_id="x", aws_secret_access_key="x")
            operation = client.meta.method_to_api_mapping[name]
            for action in S3_ACTIONS.get(operation, [operation]) if service == "s3" else [
                    operation]:
                found.add(f"{service}:{action}")
    return found


def test_the_policy_allows_every_call_burst_makes():
    policy = json.loads((REPO / "scripts" / "iam-policy.json").read_text())
    allowed = set()
    for statement in policy["Statement"]:
        actions = statement["Action"]
        allowed |= {actions} if isinstance(actions, str) else set(actions)
    used = used_actions()
    assert {"ec2:CreateFleet", "ec2:DescribeSpotPriceHistory", "s3:CreateBucket"} <= used
    assert sorted(used - allowed) == []
