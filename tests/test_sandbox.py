"""The sandbox cloud itself: instances are real process groups driven by moto's EC2 state."""

from __future__ import annotations

import json
import os
import time

import pytest

from burst.cloud import sandbox as sandbox_module
from tests.conftest import client


def wait_for(predicate, seconds: float = 20, step: float = 0.2):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"condition not met in {seconds}s")


def launch(cloud, user_data: str, instance_type: str = "c5.xlarge", role: str = "") -> str:
    ec2 = client(cloud, "ec2")
    tags = [{"ResourceType": "instance", "Tags": [{"Key": "burst:role", "Value": role}]}]
    image = client(cloud, "ssm").get_parameter(
        Name="/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
    )["Parameter"]["Value"]
    reply = ec2.run_instances(ImageId=image, InstanceType=instance_type, MinCount=1, MaxCount=1,
                              UserData=user_data, InstanceInitiatedShutdownBehavior="terminate",
                              TagSpecifications=tags if role else [])
    return reply["Instances"][0]["InstanceId"]


def state(cloud, instance_id: str) -> str:
    reply = client(cloud, "ec2").describe_instances(InstanceIds=[instance_id])
    return reply["Reservations"][0]["Instances"][0]["State"]["Name"]


def test_user_data_runs_with_metadata_and_role_credentials(sandbox, tmp_path):
    client(sandbox, "ssm").put_parameter(Name="/sandbox-test/value", Value="hello",
                                         Type="SecureString")
    out = tmp_path / "out.json"
    script = f"""#!/bin/bash
"$BURST_NODE_PYTHON" - <<'PY'
import json, os, urllib.request, boto3
base = os.environ["AWS_EC2_METADATA_SERVICE_ENDPOINT"].rstrip("/") + "/latest/"
def get(path, token=None):
    headers = {{"X-aws-ec2-metadata-token": token}} if token else {{}}
    try:
        request = urllib.request.Request(base + path, headers=headers)
        return urllib.request.urlopen(request).read().decode()
    except urllib.error.HTTPError as e:
        return e.code
token = urllib.request.urlopen(urllib.request.Request(base + "api/token", method="PUT",
    headers={{"X-aws-ec2-metadata-token-ttl-seconds": "60"}})).read().decode()
ssm = boto3.client("ssm", region_name=get("meta-data/placement/region", token))
json.dump({{
    "without_token": get("meta-data/instance-id"),
    "instance_id": get("meta-data/instance-id", token),
    "instance_type": get("meta-data/instance-type", token),
    "vcpus": os.environ["BURST_NODE_VCPUS"],
    "pgid_is_own": os.getpgid(0) == os.getsid(0),
    "dask_profile": os.environ.get("DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"),
    "secret": ssm.get_parameter(Name="/sandbox-test/value",
                                WithDecryption=True)["Parameter"]["Value"],
}}, open("{out}", "w"))
PY
sleep 60
"""
    instance_id = launch(sandbox, script)
    wait_for(out.exists)
    seen = json.loads(out.read_text())
    assert seen["without_token"] == 401  # IMDSv2 only
    assert seen["instance_id"] == instance_id
    assert seen["instance_type"] == "c5.xlarge" and seen["vcpus"] == "4"
    assert seen["pgid_is_own"]  # the instance is its own process group
    assert seen["dask_profile"] == "False"  # the host's idle housekeeping is slowed (NODE_DASK_ENV)
    assert seen["secret"] == "hello"  # credentials came from the instance role via IMDS
    client(sandbox, "ec2").terminate_instances(InstanceIds=[instance_id])
    wait_for(lambda: instance_id not in sandbox.hypervisor.instances)


def test_terminating_an_instance_kills_its_processes(sandbox, tmp_path):
    pid_file = tmp_path / "pid"
    instance_id = launch(sandbox, f"#!/bin/bash\nsleep 300 &\necho $! > {pid_file}\nwait\n")
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip())
    child = int(pid_file.read_text())
    os.kill(child, 0)  # alive
    client(sandbox, "ec2").terminate_instances(InstanceIds=[instance_id])

    def gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(gone)


@pytest.mark.parametrize("ending", ["exit 0", "shutdown -h now; sleep 60"])
def test_an_instance_that_powers_off_is_terminated(sandbox, ending):
    instance_id = launch(sandbox, f"#!/bin/bash\nsleep 0.5\n{ending}\n")
    wait_for(lambda: state(sandbox, instance_id) == "terminated")
    wait_for(lambda: instance_id not in sandbox.hypervisor.instances)


def test_spot_interruption_notice_is_served_then_instance_terminated(sandbox, tmp_path):
    instance_id = launch(sandbox, "#!/bin/bash\nsleep 300\n")
    wait_for(lambda: instance_id in sandbox.hypervisor.instances)
    instance = sandbox.hypervisor.instances[instance_id]
    assert instance.metadata("meta-data/spot/instance-action") is None
    sandbox.hypervisor.interrupt(instance_id, notice_seconds=1)
    action = json.loads(instance.metadata("meta-data/spot/instance-action"))
    assert action["action"] == "terminate"
    wait_for(lambda: state(sandbox, instance_id) == "terminated")


def test_the_host_boots_a_few_instances_at_once_the_scheduler_first(sandbox, tmp_path,
                                                                     monkeypatch):
    """An instance holds a boot slot until its console shows its Dask server up; the others
    wait, running but not booted, and a waiting scheduler boots before waiting workers."""
    hypervisor = sandbox.hypervisor
    monkeypatch.setattr(hypervisor, "boot_slots", hypervisor._booting() + 1)
    go, up = tmp_path / "go", "Scheduler at: tls://127.0.0.1:1"
    first = launch(sandbox, f"#!/bin/bash\nuntil [ -e {go} ]; do sleep 0.1; done\n"
                            f"echo '{up}'\nsleep 300\n")
    wait_for(lambda: first in hypervisor.instances)
    worker = launch(sandbox, f"#!/bin/bash\necho '{up}'\nsleep 300\n", role="worker")
    scheduler = launch(sandbox, "#!/bin/bash\nsleep 300\n", role="scheduler")
    time.sleep(8 * sandbox_module.POLL_SECONDS)
    assert worker not in hypervisor.instances and scheduler not in hypervisor.instances
    assert state(sandbox, worker) == "running"  # running to EC2, still booting on the host
    go.touch()  # the first one's server is up: its slot goes to the scheduler
    wait_for(lambda: scheduler in hypervisor.instances)
    time.sleep(8 * sandbox_module.POLL_SECONDS)
    assert worker not in hypervisor.instances  # the scheduler never says it is up
    client(sandbox, "ec2").terminate_instances(InstanceIds=[first, scheduler])
    wait_for(lambda: worker in hypervisor.instances)  # a terminated one frees its slot
    client(sandbox, "ec2").terminate_instances(InstanceIds=[worker])
    wait_for(lambda: not {first, worker, scheduler} & set(hypervisor.instances))


# ---------------------------------------------------------------- single-user by construction


def test_the_endpoint_refuses_requests_not_signed_with_the_sandbox_keys(sandbox):
    import urllib.error
    import urllib.request

    import boto3
    from botocore.exceptions import ClientError

    from burst.cloud.sandbox import UNGUARDED_CREDENTIALS

    def ec2(**keys):
        return boto3.Session(region_name="us-east-1", **keys).client(
            "ec2", endpoint_url=sandbox.endpoint)

    # moto alone takes any key: the placeholder keys, another key id, a right id with a
    # wrong secret, an unsigned request, moto's own control API: all refused.
    wrong_secret = {**sandbox.credentials, "aws_secret_access_key": "x" * 40}
    for keys in (UNGUARDED_CREDENTIALS, wrong_secret):
        with pytest.raises(ClientError) as refused:
            ec2(**keys).describe_instances()
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError, match="not this sandbox's"):
        boto3.Session(region_name="us-east-1", **UNGUARDED_CREDENTIALS).client(
            "ssm", endpoint_url=sandbox.endpoint).get_parameters_by_path(Path="/burst")
    for url, data in ((sandbox.endpoint + "/?Action=DescribeInstances&Version=2016-11-15", None),
                      (sandbox.endpoint + "/moto-api/reset", b"")):
        with pytest.raises(urllib.error.HTTPError) as unsigned:
            urllib.request.urlopen(urllib.request.Request(url, data=data))
        assert unsigned.value.code == 403
    # The instances' role keys need their session token too.
    no_token = {k: v for k, v in sandbox.instance_keys.items() if k != "aws_session_token"}
    with pytest.raises(ClientError):
        ec2(**no_token).describe_instances()
    assert ec2(**sandbox.instance_keys).describe_instances()["Reservations"] is not None
    assert ec2(**sandbox.credentials).describe_instances()["Reservations"] is not None


def test_a_body_changed_after_signing_is_refused(sandbox):
    """The signature covers the body: a request replayed with another body fails."""
    from botocore.exceptions import ClientError

    ssm = client(sandbox, "ssm")

    def tamper(request, **kwargs):
        request.body = request.body.replace(b"honest", b"forged")

    ssm.meta.events.register("before-send.ssm.PutParameter", tamper)
    try:
        with pytest.raises(ClientError, match="signature"):
            ssm.put_parameter(Name="/sandbox-test/tamper", Value="honest", Type="String")
    finally:
        ssm.meta.events.unregister("before-send.ssm.PutParameter", tamper)


def test_the_state_file_and_home_are_private(sandbox):
    from burst.cloud.sandbox import state_file

    path = state_file()
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert json.loads(path.read_text())["credentials"] == sandbox.credentials


def test_the_identity_page_answers_only_the_owner(sandbox):
    from burst.cloud.sandbox import _answers_as

    state = sandbox.state()
    assert _answers_as(state) == os.getpid()
    other = {**state, "credentials": {"aws_secret_access_key": "guess"}}
    assert _answers_as(other) is None


def test_sandbox_down_kills_only_the_sandbox(tmp_path, monkeypatch):
    """A state file naming another process (here a `sleep`) gets it refused, not killed."""
    import subprocess

    from burst.cloud import sandbox as sandbox_module

    monkeypatch.setenv("BURST_HOME", str(tmp_path / "home"))
    victim = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "home").mkdir()
        sandbox_module.state_file().write_text(json.dumps({
            "endpoint": "http://127.0.0.1:9", "pid": victim.pid, "folder": str(tmp_path),
            "credentials": {"aws_access_key_id": "AKIA", "aws_secret_access_key": "s"}}))
        with pytest.raises(sandbox_module.NotTheSandbox, match=f"pid {victim.pid}"):
            sandbox_module.stop_detached(timeout=1)
        time.sleep(0.2)
        assert victim.poll() is None  # alive
    finally:
        victim.kill()
        victim.wait()
    # A pid that is gone: nothing to stop, and the stale state file is removed.
    assert sandbox_module.stop_detached(timeout=1) is False
    assert not sandbox_module.state_file().exists()


def test_the_metadata_service_answers_only_the_sandbox_user(sandbox):
    """The instance's metadata service hands out its role's keys: another local user (here
    `nobody`, which needs root to become) is refused; the owner gets a token."""
    import subprocess
    import sys

    from burst.cloud.sandbox import _peer_uid

    if sys.platform != "linux" or os.getuid() != 0:
        pytest.skip("needs Linux's /proc/net/tcp and root to act as another user")
    instance_id = launch(sandbox, "#!/bin/bash\nsleep 300\n")
    wait_for(lambda: instance_id in sandbox.hypervisor.instances)
    instance = sandbox.hypervisor.instances[instance_id]
    url = f"http://127.0.0.1:{instance.server.server_address[1]}/latest/api/token"
    ask = ("import urllib.request, urllib.error, sys\n"
           f"r = urllib.request.Request({url!r}, method='PUT', "
           "headers={'X-aws-ec2-metadata-token-ttl-seconds': '60'})\n"
           "try:\n    print(urllib.request.urlopen(r, timeout=5).status)\n"
           "except urllib.error.HTTPError as e:\n    print(e.code)\n")
    as_owner = subprocess.run([sys.executable, "-c", ask], capture_output=True, text=True)
    system_python = "/usr/bin/python3"  # the venv may sit where `nobody` cannot enter
    if not os.access(system_python, os.X_OK):
        pytest.skip("no /usr/bin/python3 to run as another user")
    as_nobody = subprocess.run([system_python, "-c", ask], capture_output=True, text=True,
                               user=65534, group=65534, cwd="/")
    client(sandbox, "ec2").terminate_instances(InstanceIds=[instance_id])
    assert as_owner.stdout.strip() == "200", as_owner.stderr
    assert as_nobody.stdout.strip() == "403", as_nobody.stderr
    import socket

    with socket.socket() as listener:  # the look-up finds the owner of a connection
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with socket.create_connection(listener.getsockname()) as connection:
            assert _peer_uid(connection.getsockname(), listener.getsockname()) == os.getuid()


def test_burst_home_and_the_job_index_are_private(tmp_path, monkeypatch):
    """A $BURST_HOME made world-readable (by hand, or an older burst) is tightened to 0700;
    the job index is 0600."""
    from burst import state

    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    monkeypatch.setenv("BURST_HOME", str(home))
    state.record("job-1", name="x")
    assert home.stat().st_mode & 0o777 == 0o700
    assert state.path().stat().st_mode & 0o777 == 0o600
    assert state.get("job-1")["name"] == "x"


def test_deleted_resources_lose_their_tags_and_ended_ones_are_forgotten_as_on_ec2(
        sandbox, monkeypatch):
    """moto keeps every tag and terminated instance for the sandbox's life (its DescribeTags
    then slows with every job); EC2 drops a deleted resource's tags at once and shows a
    terminated instance for about an hour."""
    from botocore.exceptions import ClientError

    ec2 = client(sandbox, "ec2")
    name = f"forget-{time.time_ns()}"

    def tags(kind: str) -> list[dict]:
        return [{"ResourceType": kind, "Tags": [{"Key": "burst:probe", "Value": name}]}]

    def tagged(resource_id: str) -> list[dict]:
        return ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [resource_id]}])["Tags"]

    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]
    group = ec2.create_security_group(GroupName=name, Description="probe", VpcId=vpc["VpcId"],
                                      TagSpecifications=tags("security-group"))["GroupId"]
    template = ec2.create_launch_template(
        LaunchTemplateName=name, LaunchTemplateData={"InstanceType": "c5.large"},
        TagSpecifications=tags("launch-template"))["LaunchTemplate"]["LaunchTemplateId"]
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=8,
                               TagSpecifications=tags("volume"))["VolumeId"]
    instance = launch(sandbox, "#!/bin/bash\nsleep 300\n", role="probe")
    assert all(tagged(i) for i in (group, template, volume, instance))

    ec2.delete_security_group(GroupId=group)
    ec2.delete_launch_template(LaunchTemplateId=template)
    ec2.delete_volume(VolumeId=volume)
    assert [tagged(i) for i in (group, template, volume)] == [[], [], []]

    ec2.terminate_instances(InstanceIds=[instance])
    wait_for(lambda: state(sandbox, instance) == "terminated")
    assert tagged(instance)  # still shown, tags and all, until EC2's hour has passed
    assert instance not in sandbox_module.forget_ended()
    monkeypatch.setattr(sandbox_module, "FORGET_AFTER_SECONDS", 0)  # the hour, passed
    assert instance in sandbox_module.forget_ended()
    with pytest.raises(ClientError, match="InvalidInstanceID.NotFound"):
        ec2.describe_instances(InstanceIds=[instance])
    assert tagged(instance) == []
