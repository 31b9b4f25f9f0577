"""The nodes' boot script, run for real by bash: a failed step is published where the client
looks and the node powers off, instead of leaving a billed instance that never joins."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from datetime import UTC, datetime, timedelta

from burst import bootstrap


def _tool(folder, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _boot(tmp_path, failing_tool: str, extra_env=None):
    """Run a worker's user data on a stock-image path where `failing_tool` fails; aws, curl
    and shutdown are stand-ins that record what they were asked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for name in ("shutdown", "dnf"):
        _tool(bin_dir, name, f'echo "{name} $*" >> {calls}')
    # The AWS CLI: STS names the role's userid; what `s3 cp -` reads is recorded.
    _tool(bin_dir, "aws", f'echo "aws $*" >> {calls}\n'
                          f'[ "$1" = sts ] && echo "AROATEST:i-0boot"\n'
                          f'[ "$1" = s3 ] && echo "body $(cat)" >> {calls}\nexit 0')
    _tool(bin_dir, "curl", "exit 7")  # no metadata service here
    _tool(bin_dir, failing_tool, f'echo "{failing_tool} $*" >> {calls}; exit 3')
    deadline = datetime.now(UTC) + timedelta(minutes=5)
    script = bootstrap.render(bootstrap.NodeConfig("worker", "c-boot", deadline))
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path), **(extra_env or {})}
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        # Its own session: the dead-man's switch sleeps on in the background, as on a node.
        boot = subprocess.Popen(
            ["bash", "-c", script], env=env, stdout=stdout, stderr=stderr, start_new_session=True
        )
        try:
            boot.wait(timeout=60)
        finally:
            os.killpg(boot.pid, signal.SIGKILL)
    return out.read_text(), err.read_text(), calls.read_text().splitlines()


def test_a_failed_install_is_published_and_the_node_powers_off(tmp_path):
    _, stderr, calls = _boot(tmp_path, "dnf")
    assert "boot of the worker failed at line" in stderr and "dnf install" in stderr
    # Under the role's own aws:userid in the cluster's bucket: the one report it may write.
    (put,) = [c for c in calls if c.startswith("aws s3 cp")]
    assert put.endswith("- s3://burst-c-boot/failed/AROATEST:i-0boot/unknown")
    (body,) = [c for c in calls if c.startswith("body ")]
    assert "boot of the worker failed at line" in body and "dnf install" in body
    assert calls[-1] == "shutdown -h now"
    # Nothing after the failed step ran: no environment was built on the failing node.
    assert not any("venv" in c or c.startswith("python") for c in calls)


def test_the_agent_reports_its_own_failures_not_the_boot_trap(tmp_path):
    """With the interpreter given (the sandbox), an agent that exits non-zero is not a boot
    failure: the agent publishes its own reason, the trap does not overwrite it."""
    python = tmp_path / "fake-python"
    python.write_text("#!/bin/bash\nexit 9\n")
    python.chmod(0o755)
    stdout, _, calls = _boot(tmp_path, "dnf", {"BURST_NODE_PYTHON": str(python)})
    assert "burst node agent exited with 9; powering off" in stdout
    assert not [c for c in calls if c.startswith("aws")] and calls[-1] == "shutdown -h now"
