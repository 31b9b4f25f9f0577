"""Shared fixtures: one real sandbox cloud (moto server + hypervisor) for the whole session.

It is published under a private BURST_HOME so that `burst` subprocesses use it too, and the
tests can then ask moto directly what is left.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path

import boto3
import pytest

from burst.cloud import sandbox as sandbox_module

REPO = Path(__file__).resolve().parents[1]
BURST = str(Path(sys.executable).parent / "burst")


def pytest_collection_modifyitems(config, items):
    """Every test that uses the sandbox fixture is a `sandbox` test, whatever its file says:
    `-m "not sandbox"` is then the fast, offline layer of the suite."""
    for item in items:
        if "sandbox" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.sandbox)


@pytest.fixture(autouse=True)
def _moto_server_only_in_sandbox_tests(request, monkeypatch):
    """A test that starts moto's server (a Sandbox, the provisioning benchmark) must be marked
    `sandbox`, or `-m "not sandbox"` would not be the fast layer it claims to be."""
    if request.node.get_closest_marker("sandbox") is None:
        from moto.server import ThreadedMotoServer

        def forbidden(self, *args, **kwargs):
            raise AssertionError("this test starts moto's server: mark it @pytest.mark.sandbox")

        monkeypatch.setattr(ThreadedMotoServer, "start", forbidden)
        monkeypatch.setattr(sandbox_module.Sandbox, "start", forbidden)


@pytest.fixture(autouse=True)
def _hypervisor_errors_fail_the_test(request):
    """The hypervisor's reconcile loop records its exceptions rather than dying: a test
    during which it recorded any has broken the sandbox (or burst broke it), so it fails."""
    if "sandbox" not in request.fixturenames:
        yield
        return
    hypervisor = request.getfixturevalue("sandbox").hypervisor
    before = len(hypervisor.errors)
    yield
    new = hypervisor.errors[before:]
    if new:
        pytest.fail(f"the sandbox hypervisor recorded {len(new)} error(s): {new[:3]}")


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory):
    home = tmp_path_factory.mktemp("burst-home")
    previous = os.environ.get("BURST_HOME")
    os.environ["BURST_HOME"] = str(home)
    with sandbox_module.Sandbox() as cloud:
        cloud.publish()
        yield cloud
    if previous is None:
        os.environ.pop("BURST_HOME", None)
    else:
        os.environ["BURST_HOME"] = previous


def client(cloud, service: str, region: str = "us-east-1"):
    """The tests' own client of the sandbox, made once: a new boto3 client loads its service
    model anew, which made every leftover check cost seconds."""
    keys = cloud.credentials
    return _client(cloud.endpoint, keys["aws_access_key_id"], keys["aws_secret_access_key"],
                   service, region)


@functools.cache
def _client(endpoint: str, key_id: str, secret: str, service: str, region: str):
    # Not sandbox_module.session(): tests patch it to inject faults into burst's calls.
    session = boto3.Session(region_name=region, aws_access_key_id=key_id,
                            aws_secret_access_key=secret)
    return session.client(service, region_name=region, endpoint_url=endpoint)


def leftovers(cloud, cluster_id: str | None = None) -> list[str]:
    """Everything burst-managed (or of one cluster) that still exists in the sandbox."""
    key, value = ("burst:cluster", cluster_id) if cluster_id else ("burst:managed", "true")
    found = []
    ours = set()  # every instance of the cluster (or of burst), whatever its state
    for region in sandbox_module.SANDBOX_REGIONS:
        ec2 = client(cloud, "ec2", region)
        tag = [{"Name": f"tag:{key}", "Values": [value]}]
        ours |= {i["InstanceId"] for r in ec2.describe_instances(Filters=tag)["Reservations"]
                 for i in r["Instances"]}
        live = [{"Name": "instance-state-name",
                 "Values": ["pending", "running", "stopping", "stopped", "shutting-down"]}]
        for reservation in ec2.describe_instances(Filters=tag + live)["Reservations"]:
            found += [f"instance {i['InstanceId']}" for i in reservation["Instances"]]
        found += [f"group {g['GroupId']}"
                  for g in ec2.describe_security_groups(Filters=tag)["SecurityGroups"]]
        found += [f"launch-template {t['LaunchTemplateId']}"
                  for t in ec2.describe_launch_templates(Filters=tag)["LaunchTemplates"]]
        found += [f"fleet {f['FleetId']}" for f in ec2.describe_fleets()["Fleets"]
                  if not f["FleetState"].startswith("deleted")
                  and {"Key": key, "Value": value} in f.get("Tags", [])]
        ssm = client(cloud, "ssm", region)
        path = f"/burst/{cluster_id}" if cluster_id else "/burst"
        found += [f"parameter {p['Name']}" for p in ssm.get_parameters_by_path(
            Path=path, Recursive=True)["Parameters"]]
    roles = client(cloud, "iam").list_roles()["Roles"]
    prefix = f"burst-{cluster_id}" if cluster_id else "burst-"
    found += [f"role {r['RoleName']}" for r in roles if r["RoleName"].startswith(prefix)]
    buckets = client(cloud, "s3").list_buckets()["Buckets"]
    found += [f"bucket {b['Name']}" for b in buckets if b["Name"].startswith(prefix)]
    # The hypervisor must have killed every instance's processes too.
    found += [f"process of {i}" for i, inst in cloud.hypervisor.instances.items()
              if inst.process and inst.process.poll() is None and (i in ours or not cluster_id)]
    return found


def cluster_ids(cloud) -> set[str]:
    """Every cluster that ever had an instance in the sandbox (moto keeps terminated ones)."""
    found = set()
    for region in sandbox_module.SANDBOX_REGIONS:
        pages = client(cloud, "ec2", region).get_paginator("describe_instances").paginate(
            Filters=[{"Name": "tag-key", "Values": ["burst:cluster"]}])
        found |= {t["Value"] for page in pages for r in page["Reservations"]
                  for i in r["Instances"] for t in i.get("Tags", []) if t["Key"] == "burst:cluster"}
    return found


def settled_leftovers(cloud, cluster_id: str | None = None, seconds: float = 15) -> list[str]:
    """leftovers(), after giving the hypervisor a few polls to reap processes."""
    import time

    deadline = time.monotonic() + seconds
    while (found := leftovers(cloud, cluster_id)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return found


@contextlib.contextmanager
def moto_in_process():
    """moto's in-process mock, without the reset of its state on the way in and out: moto's
    state is one per process, shared with this process's sandbox (its boundary policy, its
    clusters), which a reset would wipe mid-session."""
    from moto import mock_aws

    mock = mock_aws()
    mock.start(reset=False)
    try:
        yield
    finally:
        mock.stop(remove_data=False)


def ctrl_c_reaches() -> None:
    """For a subprocess a test will send Ctrl-C (SIGINT) to: SIGINT handled as at a terminal,
    even when the suite itself was started in the background (where a shell has its jobs
    ignore SIGINT, and children inherit that)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)

