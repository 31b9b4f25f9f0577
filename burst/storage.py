"""The cluster's S3 bucket: job code, inputs and task outputs travel through it, never
through the scheduler.

One bucket per cluster, named after the cluster id and tagged like every burst resource,
created at provisioning and deleted (emptied first) at teardown. The nodes' role may read and
write this bucket only (plus the s3:// inputs a spec names, read-only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from burst.cloud.base import TAG_CLUSTER, TAG_MANAGED, ClusterIdentity, Remnant, tag_dict
from burst.cloud.botoerrors import error_code, wrap_public_methods


def bucket_name(ident: ClusterIdentity) -> str:
    return ident.name.lower()  # bucket names are lowercase; the cluster id is hex already


def create_bucket(s3: Any, ident: ClusterIdentity, region: str) -> str:
    name = bucket_name(ident)
    request: dict[str, Any] = {"Bucket": name}
    if region != "us-east-1":  # S3 refuses an explicit us-east-1 location constraint
        request["CreateBucketConfiguration"] = {"LocationConstraint": region}
    s3.create_bucket(**request)
    s3.put_bucket_tagging(
        Bucket=name,
        Tagging={"TagSet": [t for t in ident.tags("storage") if t["Key"] != "Name"]},
    )
    s3.put_public_access_block(
        Bucket=name,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    return name


def node_policy_statements(ident: ClusterIdentity, read_objects: list[str]) -> list[dict]:
    """What the nodes' role may do in S3: this cluster's bucket, and read the named inputs."""
    arn = f"arn:aws:s3:::{bucket_name(ident)}"
    statements = [
        {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": arn},
        {
            "Effect": "Allow",
            "Action": [
                "s3:GetObject",
                "s3:PutObject",
                "s3:DeleteObject",
                "s3:AbortMultipartUpload",
            ],
            "Resource": f"{arn}/*",
        },
    ]
    if read_objects:
        statements.append(
            {
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": [f"arn:aws:s3:::{o.removeprefix('s3://')}" for o in read_objects],
            }
        )
    return statements


def _missing(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") in ("NoSuchBucket", "404", "NotFound")


def _ours(s3: Any, ident: ClusterIdentity) -> bool:
    """The bucket of that name exists and carries this cluster's tags. A bucket named like a
    cluster's but not tagged so is somebody else's: never emptied, deleted or reported."""
    try:
        tags = tag_dict(s3.get_bucket_tagging(Bucket=bucket_name(ident))["TagSet"])
    except ClientError as error:
        if _missing(error) or error_code(error) == "NoSuchTagSet":
            return False
        raise
    return tags.get(TAG_CLUSTER) == ident.cluster_id and tags.get(TAG_MANAGED) == "true"


def delete_bucket(s3: Any, ident: ClusterIdentity) -> list[str]:
    name = bucket_name(ident)
    if not _ours(s3, ident):
        return []
    try:
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=name):
            doomed = [
                {"Key": v["Key"], "VersionId": v["VersionId"]}
                for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
            ]
            if doomed:
                s3.delete_objects(Bucket=name, Delete={"Objects": doomed, "Quiet": True})
        s3.delete_bucket(Bucket=name)
    except ClientError as error:
        if _missing(error):
            return []
        raise
    return [f"bucket/{name}"]


def leftovers(s3: Any, ident: ClusterIdentity) -> list[str]:
    return [f"bucket {bucket_name(ident)}"] if _ours(s3, ident) else []


def survey(s3: Any, region: str) -> list[Remnant]:
    """burst's buckets in a region: named burst-*, and tagged so (a bucket of someone else's
    that only shares the prefix has no burst tags and is not listed)."""
    found = []
    for bucket in s3.list_buckets()["Buckets"]:
        if not bucket["Name"].startswith("burst-"):
            continue
        try:
            where = s3.get_bucket_location(Bucket=bucket["Name"])["LocationConstraint"]
            tags = tag_dict(s3.get_bucket_tagging(Bucket=bucket["Name"])["TagSet"])
        except ClientError:  # deleted meanwhile, or not burst's: no tags
            continue
        if (where or "us-east-1") == region:
            found.append(Remnant(f"bucket {bucket['Name']}", tags, bucket.get("CreationDate")))
    return found


@wrap_public_methods
@dataclass(frozen=True)
class Bucket:
    """The client's handle on the cluster's bucket."""

    s3: Any
    name: str
    region: str

    def upload(self, path: Path, key: str) -> None:
        self.s3.upload_file(str(path), self.name, key)  # multipart for large files

    def put(self, key: str, body: bytes | str) -> None:
        self.s3.put_object(Bucket=self.name, Key=key, Body=body)

    def read(self, key: str) -> bytes | None:
        """The object's bytes; None when it does not exist (yet)."""
        try:
            return self.s3.get_object(Bucket=self.name, Key=key)["Body"].read()
        except ClientError as error:
            if error_code(error) in ("NoSuchKey", "NoSuchBucket", "404", "NotFound"):
                return None  # not written yet, or the bucket is gone with its cluster
            raise

    def keys(self, prefix: str) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def download_prefix(self, prefix: str, folder: Path) -> list[Path]:
        """Every object under prefix, to the same relative path under folder."""
        prefix = prefix.rstrip("/") + "/"
        root = folder.resolve()
        written = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.name, Prefix=prefix
        ):
            for item in page.get("Contents", []):
                target = (root / item["Key"][len(prefix) :]).resolve()
                if not target.is_relative_to(root) or item["Key"].endswith("/"):
                    continue  # never write outside the results folder
                target.parent.mkdir(parents=True, exist_ok=True)
                self.s3.download_file(self.name, item["Key"], str(target))
                written.append(target)
        return written
