"""The sandbox cloud itself: instances are real process groups driven by moto's EC2 state."""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.conftest import client


def wait_for(predicate, seconds: float = 20, step: float = 0.2):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"condition not met in {seconds}s")


def launch(cloud, user_data: str, instance_type: str = "c5.xlarge") -> str:
    ec2 = client(cloud, "ec2")
    image = client(cloud, "ssm").get_parameter(
        Name="/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
    )["Parameter"]["Value"]
    reply = ec2.run_instances(ImageId=image, InstanceType=instance_type, MinCount=1, MaxCount=1,
                              UserData=user_data, InstanceInitiatedShutdownBehavior="terminate")
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
