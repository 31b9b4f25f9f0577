"""Separate identities (issue 12, item 2): scheduler, workers, client and a detached job's
driver each have their own certificate, with the key usages of their role; a node's key
cannot act as the client; the workers' role cannot read the scheduler's or the driver's key
nor overwrite what the scheduler publishes; a command task gets no credentials."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from distributed import Client
from distributed.comm import connect
from distributed.core import rpc
from distributed.security import Security

from burst import node, tls
from burst.cli import exit_for
from burst.cloud import sandbox as sandbox_module
from burst.cloud.aws import AwsProvider, role_names
from burst.cloud.base import ClusterIdentity
from burst.cluster import BurstCluster
from burst.errors import EXIT_CLOUD, CertificateRefused
from tests.conftest import client
from tests.test_iam_policy import BOUNDARY, Request, allows, load

SERVER, CLIENT = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH


def _cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def test_each_role_has_its_own_certificate_and_usages():
    issued = tls.issue("abc123abc123", timedelta(minutes=5))
    ca = _cert(issued.ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    keys = set()
    for role, usages in {"scheduler": {SERVER, CLIENT}, "worker": {SERVER, CLIENT},
                         "client": {CLIENT}, "driver": {CLIENT}}.items():
        cert = _cert(issued.pairs[role].cert)
        assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value \
            == role
        assert set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == usages
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        assert usage.digital_signature and not usage.key_cert_sign
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        cert.verify_directly_issued_by(ca)
        keys.add(issued.pairs[role].key)
    assert len(keys) == 4  # four keys, not one pair shared
    # What goes to the cloud: the three node roles' pairs, never the client's key.
    bundle = issued.node_bundle()
    assert set(bundle) == {"scheduler", "worker", "driver"}
    assert issued.client_key not in json.dumps(bundle)


def _policy(iam, name: str) -> dict:
    document = iam.get_role_policy(RoleName=name, PolicyName="burst-node")["PolicyDocument"]
    return json.loads(document) if isinstance(document, str) else document


def test_scheduler_and_workers_have_separate_roles(sandbox):
    """Both roles are created under the boundary; the worker's cannot read the scheduler's or
    the driver's key, nor publish a scheduler address, nor write results; the scheduler's
    can. (moto does not enforce IAM: the role policies are evaluated by the tests'
    evaluator, together with the boundary, as AWS would.)"""
    region = "us-west-2"
    provider = AwsProvider(sandbox_module.session(), region, sandbox.endpoint)
    ident = ClusterIdentity("idroles00001", "job-idroles", datetime.now(UTC) + timedelta(hours=1))
    bundle = tls.issue(ident.cluster_id, timedelta(minutes=5)).node_bundle()
    env = provider.prepare(ident, [f"{region}a"], "127.0.0.1/32", bundle)
    try:
        iam, ssm = client(sandbox, "iam"), client(sandbox, "ssm", region)
        scheduler_role, worker_role = role_names(ident)
        assert (env.instance_profile, env.worker_profile) == (scheduler_role, worker_role)
        for name in (scheduler_role, worker_role):
            role = iam.get_role(RoleName=name)["Role"]
            assert role["PermissionsBoundary"]["PermissionsBoundaryArn"].endswith(
                "policy/burst/burst-node-boundary")
        for role in ("scheduler", "worker", "driver"):
            stored = ssm.get_parameter(Name=f"/burst/{ident.cluster_id}/tls-{role}",
                                       WithDecryption=True)["Parameter"]
            assert json.loads(stored["Value"]) == bundle[role]

        def parameter(name: str) -> str:
            return f"arn:aws:ssm:{region}:123456789012:parameter/burst/{ident.cluster_id}/{name}"

        bucket = f"arn:aws:s3:::burst-{ident.cluster_id}"
        worker, scheduler, boundary = _policy(iam, worker_role), _policy(iam, scheduler_role), \
            load(BOUNDARY)

        def may(policy: dict, request: Request) -> bool:  # the role's policy AND the boundary
            return allows(policy, request) and allows(boundary, request)

        # A worker's failure report: its own, under its aws:userid (<role id>:<instance id>
        # for an instance's role), and no other worker's; not in SSM any more.
        worker_a = {"aws:userid": "AROAWORKER:i-0aaa"}
        worker_b = {"aws:userid": "AROAWORKER:i-0bbb"}
        own_report = f"{bucket}/failed/AROAWORKER:i-0aaa/i-0aaa"
        assert may(worker, Request("s3:PutObject", own_report, worker_a))
        for request in [Request("s3:PutObject", own_report, worker_b),
                        Request("s3:PutObject", f"{bucket}/failed/AROAWORKER:i-0aaab/x", worker_a),
                        Request("s3:PutObject", f"{bucket}/failed/AROAWORKER:i-0aaa", worker_a),
                        Request("s3:PutObject", own_report),  # no userid: matches nothing
                        Request("ssm:PutParameter", parameter("failed/i-0aaa"), worker_a)]:
            assert not may(worker, request), request
        for request in [Request("ssm:GetParameter", parameter("tls-worker")),
                        Request("ssm:GetParameter", parameter("scheduler")),
                        Request("s3:GetObject", f"{bucket}/jobs/j/code.tar.gz"),
                        Request("s3:PutObject", f"{bucket}/jobs/j/outputs/3/out.csv")]:
            assert may(worker, request), request
        for request in [Request("ssm:GetParameter", parameter("tls-scheduler")),
                        Request("ssm:GetParameter", parameter("tls-driver")),
                        Request("ssm:PutParameter", parameter("scheduler")),
                        Request("ssm:PutParameter", parameter("tls-worker")),
                        Request("s3:PutObject", f"{bucket}/jobs/j/results.jsonl"),
                        Request("s3:PutObject", f"{bucket}/jobs/j/driver.pkl"),
                        Request("ec2:TerminateInstances",
                                f"arn:aws:ec2:{region}:123456789012:instance/i-0abc",
                                {"ec2:ResourceTag/burst:cluster": ident.cluster_id,
                                 "aws:ResourceTag/burst:managed": "true"})]:
            assert not may(worker, request), request
        for request in [Request("ssm:GetParameter", parameter("tls-scheduler")),
                        Request("ssm:GetParameter", parameter("tls-driver")),
                        Request("ssm:PutParameter", parameter("scheduler")),
                        Request("s3:PutObject", f"{bucket}/jobs/j/results.jsonl")]:
            assert may(scheduler, request), request
        assert not may(scheduler, Request("ssm:GetParameter", parameter("tls-worker")))
    finally:
        report = provider.teardown(ident, wait=30)
    assert report.verified, report
    assert {f"role/{name}" for name in role_names(ident)} <= set(report.deleted)


@pytest.fixture(scope="module")
def cluster(sandbox):
    with BurstCluster(cores=2, max_runtime="5m", instance_types=["c5.large"], quiet=True) as made:
        yield made
    assert made.teardown_report.verified


async def _register_client(address: str, security: Security) -> str:
    """What the scheduler answers a register-client (as Client sends it), as text."""
    comm = await connect(address, timeout=5, **security.get_connection_args("client"))
    try:
        await comm.write({"op": "register-client", "client": "intruder", "versions": {},
                          "reply": True})
        return str(await comm.read())
    finally:
        comm.abort()


def _stored(sandbox, cluster, role: str) -> dict:
    value = client(sandbox, "ssm").get_parameter(
        Name=f"/burst/{cluster.cluster_id}/tls-{role}", WithDecryption=True)["Parameter"]["Value"]
    return json.loads(value)


def test_a_nodes_key_cannot_act_as_the_client(sandbox, cluster):
    """The exploit of issue 12: a task that read the node key connected as a client and
    registered a worker plugin. With the worker's (or scheduler's) pair the scheduler refuses
    register-client and every client-only handler; the client's and the driver's pairs work."""
    address = cluster.scheduler_address
    for role in ("worker", "scheduler"):
        pair = _stored(sandbox, cluster, role)
        security = Security(tls_ca_file=pair["ca"], tls_client_cert=pair["cert"],
                            tls_client_key=pair["key"], require_encryption=True)
        assert "register-client: refused to a peer with a" in asyncio.run(
            _register_client(address, security))
        # A Client is told at once, not left to time out, and burst's CLI says so (exit 3).
        with pytest.raises(ImportError, match=f"register-client: refused to a peer with a {role}"
                           ) as told:
            Client(address, security=security, timeout=120)
        exit_ = exit_for(told.value)
        assert exit_.exit_code == EXIT_CLOUD == CertificateRefused.exit_code
        assert isinstance(tls.refusal(told.value), CertificateRefused)

        async def call(op: str, security=security, **message):
            args = security.get_connection_args("client")
            async with rpc(address, connection_args=args) as scheduler:
                return await getattr(scheduler, op)(**message)

        for op, message in [("run_function", {"function": b"", "args": b"", "kwargs": b""}),
                            ("register_worker_plugin", {"plugin": b"", "name": "evil"}),
                            ("set_metadata", {"keys": ["x"], "value": 1}),
                            ("terminate", {})]:
            with pytest.raises(PermissionError, match=f"{op}: refused"):
                asyncio.run(call(op, **message))
        # Asking is not refused: a worker reads metadata and the like.
        assert asyncio.run(call("get_metadata", keys=["nothing"], default=7)) == 7
        # A retiring worker posts its notice (burst.cluster reads it); nothing else may.
        notice = {"keys": [node.INTERRUPTED_KEY, "i-0test"], "value": {"reason": "drill"}}
        if role == "worker":
            asyncio.run(call("set_metadata", **notice))
        else:
            with pytest.raises(PermissionError, match="set_metadata: refused"):
                asyncio.run(call("set_metadata", **notice))
    driver = _stored(sandbox, cluster, "driver")
    as_driver = Security(tls_ca_file=driver["ca"], tls_client_cert=driver["cert"],
                         tls_client_key=driver["key"], require_encryption=True)
    assert "stream-start" in asyncio.run(_register_client(address, as_driver))
    with Client(address, security=as_driver, timeout=10) as c:
        assert c.submit(sum, [1, 2]).result() == 3
    with Client(cluster) as c:  # the client's own pair
        assert c.run_on_scheduler(lambda: 5) == 5


def test_the_dashboard_listens_on_loopback_only(tmp_path):
    """The node agent's scheduler on an instance whose address is not loopback (127.0.0.2,
    Linux): Dask listens there over TLS, the dashboard on 127.0.0.1 only, and the published
    dashboard address says so."""
    import socket
    import time
    from types import SimpleNamespace

    from distributed import Scheduler

    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.2", 0))
    except OSError:
        pytest.skip("127.0.0.2 is not a local address here (Linux has it)")
    issued = tls.issue("dash00000001", timedelta(minutes=5))
    published, bound = {}, []

    class Parameters:
        def get_parameter(self, Name, WithDecryption=False):
            return {"Parameter": {"Value": json.dumps(issued.node_bundle()["scheduler"])}}

        def put_parameter(self, Name, Value, **kwargs):
            published[Name] = json.loads(Value)
            # This test's scheduler (other tests' may still live in this process).
            scheduler = next(s for s in list(Scheduler._instances)
                             if s.status.name == "running" and "127.0.0.2" in s.address)
            bound.extend(s.getsockname()[0] for s in scheduler.http_server._sockets.values())
            bound.append(scheduler.address)

    agent = node.Node.__new__(node.Node)
    agent.args = node.parse_args(["--role", "scheduler", "--cluster-id", "dash00000001",
                                  "--deadline", str(time.time() + 3), "--port", "0",
                                  "--dashboard-port", "0", "--no-client-timeout", "60"])
    agent.address, agent.instance_id, agent.path = "127.0.0.2", "i-0dash", "/burst/dash"
    agent.metadata = SimpleNamespace(get=lambda path: "127.0.0.2")
    agent.ssm, agent._tls = Parameters(), None
    asyncio.run(agent.scheduler())
    dashboard_hosts, listener = set(bound[:-1]), bound[-1]
    assert dashboard_hosts == {"127.0.0.1"}
    assert listener.startswith("tls://127.0.0.2:")
    assert published["/burst/dash/scheduler"]["dashboard"].startswith("http://127.0.0.1:")


def test_a_command_task_inherits_no_credentials():
    from burst.taskrun import task_environment

    worker = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9/",
              "AWS_ENDPOINT_URL": "http://127.0.0.1:8/", "AWS_ACCESS_KEY_ID": "AKIA",
              "aws_secret_access_key": "s", "DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY": "/k",
              "BURST_NODE_PYTHON": "/py", "PATH": "/bin", "HOME": "/h", "LANG": "C"}
    assert task_environment(worker) == {"PATH": "/bin", "HOME": "/h", "LANG": "C",
                                        "AWS_EC2_METADATA_DISABLED": "true"}


PROBE = """
import json, os, boto3
found = boto3.Session().get_credentials()
json.dump({"aws": sorted(k for k in os.environ if k.startswith(("AWS_", "DASK_"))),
           "credentials": None if found is None else found.access_key},
          open(os.path.join(os.environ["BURST_OUTPUT"], "seen.json"), "w"))
"""


def test_a_command_task_on_the_sandbox_finds_no_credentials(sandbox, tmp_path, monkeypatch):
    """Run for real: the task's botocore finds no credentials (no keys, no metadata service
    endpoint), though its worker has an instance role."""
    import yaml

    from burst.runner import run

    (tmp_path / "probe.py").write_text(PROBE)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump({
        "name": "isolation", "cores": 2, "max_runtime": "5m", "instance_types": ["c5.large"],
        "run": {"command": "python probe.py", "params": {"n": [1]}}}))
    monkeypatch.chdir(tmp_path)
    result = run(tmp_path / "job.yaml")
    assert result.status == "succeeded", result.manifest["failures"]
    [found] = result.folder.glob("outputs/*/seen.json")  # the one task's output folder
    seen = json.loads(found.read_text())
    assert seen == {"aws": ["AWS_EC2_METADATA_DISABLED"], "credentials": None}


STEAL = """
id -u > "$BURST_OUTPUT/uid"
echo "$HOME" > "$BURST_OUTPUT/home"
cat "$1" > "$BURST_OUTPUT/stolen" 2> "$BURST_OUTPUT/refused" || true
cat /proc/$PPID/environ > "$BURST_OUTPUT/environ" 2> "$BURST_OUTPUT/environ-refused" || true
cat "$2" > "$BURST_OUTPUT/control"
cat "$BURST_INPUT/data.txt" > "$BURST_OUTPUT/input"
ln -s "$1" "$BURST_OUTPUT/link"
"""


def test_a_command_task_runs_as_the_task_user_and_cannot_read_the_workers_key(
        sandbox, tmp_path, monkeypatch):
    """Issue 12: with a task user (the agent's --task-user; on EC2 the boot script makes
    one), a command task runs as that user, through the real CommandTask on a real Dask
    worker and S3 (the sandbox's): it cannot read a 0600 key of the worker's user, which a
    readable file beside it shows is the mode at work, nor the worker's environment; it still
    reads the job's files (shipped owner-only) and inputs, and its outputs are collected, a
    link to the key among them left out."""
    import os
    import pwd
    import shutil
    import tarfile
    import tempfile
    import uuid

    from distributed import LocalCluster

    from burst import taskrun

    if os.geteuid() != 0:
        pytest.skip("running a task as another user needs root (the node agent is root on EC2)")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("this machine has no 'nobody' user to run the task as")
    # A temporary folder others may pass through, as /tmp is on a node (pytest's is 0700).
    shared = Path(tempfile.mkdtemp(prefix="burst-taskuser-"))
    shared.chmod(0o755)
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    try:
        agent = shared / "agent"
        agent.mkdir(mode=0o755)
        key, control = agent / "worker.key", agent / "public.txt"
        key.write_text("-----BEGIN PRIVATE KEY-----\nsecret\n")
        key.chmod(0o600)
        control.write_text("anyone may read this\n")
        control.chmod(0o644)

        script = tmp_path / "steal.sh"
        script.write_text(STEAL)
        script.chmod(0o700)  # owner-only, as a user's own files may be
        with tarfile.open(tmp_path / "code.tar.gz", "w:gz") as tar:
            tar.add(script, arcname="steal.sh")
        s3 = client(sandbox, "s3")
        bucket = f"burst-taskuser-{uuid.uuid4().hex[:8]}"
        s3.create_bucket(Bucket=bucket)
        s3.upload_file(str(tmp_path / "code.tar.gz"), bucket, "jobs/j/code.tar.gz")
        s3.put_object(Bucket=bucket, Key="jobs/j/inputs/data.txt", Body=b"input rows\n")
        config = {"bucket": bucket, "region": "us-east-1", "prefix": "jobs/j", "job_id": "j",
                  "argv": ["sh", "steal.sh", str(key), str(control)], "timeout": 60,
                  "code": "jobs/j/code.tar.gz",
                  "inputs": [{"name": "data.txt", "kind": "file", "bucket": bucket,
                              "key": "jobs/j/inputs/data.txt"}]}
        keys = sandbox.credentials
        monkeypatch.setenv("AWS_ENDPOINT_URL", sandbox.endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys["aws_access_key_id"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys["aws_secret_access_key"])
        monkeypatch.setenv(taskrun.TASK_USER_VARIABLE, "nobody")

        with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                          dashboard_address=None) as cluster, Client(cluster) as c:
            done = c.submit(taskrun.CommandTask(config), (0, {}), pure=False).result()
        record = done["value"]
        assert record["exit_code"] == 0, record
        assert sorted(record["outputs"]) == ["control", "environ", "environ-refused", "home",
                                             "input", "refused", "stolen", "uid"]

        def output(name: str) -> str:
            body = s3.get_object(Bucket=bucket, Key=f"jobs/j/outputs/0/{name}")["Body"]
            return body.read().decode()

        assert output("uid").strip() == str(nobody.pw_uid)
        assert output("stolen") == "" and "Permission denied" in output("refused")
        assert output("environ") == "" and "Permission denied" in output("environ-refused")
        assert output("control") == "anyone may read this\n"  # the mode refused, not the path
        assert output("input") == "input rows\n"
        assert output("home").strip().endswith("/work")  # its own folder, not the worker's
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_the_task_folder_is_not_taken_from_someone_else(tmp_path):
    """The tasks' folder is in a shared /tmp: one made in advance by another user, or a link,
    is refused rather than used."""
    import os

    from burst.taskrun import _private_folder

    made = _private_folder(tmp_path / "mine")
    assert made.stat().st_mode & 0o777 == 0o711 and made.stat().st_uid == os.getuid()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RuntimeError, match="not this worker's own folder"):
        _private_folder(tmp_path / "link")


def test_a_nodes_failure_report_is_under_its_own_userid_and_the_client_reads_it(
        sandbox, monkeypatch):
    """The agent's report (burst.node.report_failure) lands at failed/<its aws:userid>/<its
    instance id> in the cluster's bucket, the one key its role may write there; the provider
    reads it back for the client, cut at 4,000 bytes."""
    import types

    keys = sandbox.credentials
    monkeypatch.setenv("AWS_ENDPOINT_URL", sandbox.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys["aws_secret_access_key"])
    ident = ClusterIdentity("idreport0001", "job-idreport", datetime.now(UTC) + timedelta(hours=1))
    s3 = client(sandbox, "s3")
    provider = AwsProvider(sandbox_module.session(), "us-east-1", sandbox.endpoint)
    assert provider.node_failures(ident) == []  # no bucket yet: nothing reported
    from burst import storage

    assert node.failure_bucket(ident.cluster_id) == storage.bucket_name(ident)
    s3.create_bucket(Bucket=node.failure_bucket(ident.cluster_id))
    agent = node.Node.__new__(node.Node)
    agent.args = types.SimpleNamespace(cluster_id=ident.cluster_id)
    agent.region, agent.instance_id = "us-east-1", "i-0report"
    agent.report_failure("worker i-0report: RuntimeError: " + "x" * 5000)
    user_id = client(sandbox, "sts").get_caller_identity()["UserId"]
    listed = s3.list_objects_v2(Bucket=f"burst-{ident.cluster_id}")["Contents"]
    assert [o["Key"] for o in listed] == [f"failed/{user_id}/i-0report"]
    [message] = provider.node_failures(ident)
    assert message.startswith("worker i-0report: RuntimeError: xxx") and len(message) == 4000
    s3.delete_object(Bucket=f"burst-{ident.cluster_id}", Key=listed[0]["Key"])
    s3.delete_bucket(Bucket=f"burst-{ident.cluster_id}")
