"""The nodes' boot script, run for real by bash: a failed step is published where the client
looks and the node powers off, instead of leaving a billed instance that never joins."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import subprocess
from datetime import UTC, datetime, timedelta

from burst import bootstrap, node


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


def _task_user_block() -> str:
    script = bootstrap.render(bootstrap.NodeConfig("worker", "c-boot",
                                                   datetime.now(UTC) + timedelta(minutes=5)))
    start, end = script.index("# -- task user"), script.index("# -- end task user")
    assert script.index(bootstrap.TASK_USER_BLOCK) == start  # before the agent starts:
    assert '"${TASK_USER[@]}" || status=$?' in script[end:]  # the agent gets --task-user
    return script[start:end]


def _run_block(tmp_path, env: dict[str, str]) -> tuple[list[str], list[str], str]:
    """The rendered block, run by bash with id/useradd/nft/dnf stand-ins: what it called, the
    agent arguments it chose, and the nftables rules it loaded."""
    bin_dir, calls, rules = tmp_path / "bin", tmp_path / "calls", tmp_path / "rules.nft"
    bin_dir.mkdir()
    _tool(bin_dir, "id", f'echo "id $*" >> {calls}; exit 1')  # no such user yet
    _tool(bin_dir, "useradd", f'echo "useradd $*" >> {calls}')
    _tool(bin_dir, "dnf", f'echo "dnf $*" >> {calls}')
    _tool(bin_dir, "nft", f'echo "nft $*" >> {calls}; cat > {rules}')
    script = "set -euo pipefail\n" + _task_user_block() + 'printf "%s\\n" "${TASK_USER[@]}"\n'
    done = subprocess.run(["bash", "-c", script], env={"PATH": f"{bin_dir}:/usr/bin:/bin", **env},
                          capture_output=True, text=True, timeout=60, check=True)
    called = calls.read_text().splitlines() if calls.exists() else []
    return called, done.stdout.split(), rules.read_text() if rules.exists() else ""


def test_on_ec2_the_boot_makes_a_task_user_kept_off_the_metadata_service(tmp_path):
    """The task user (issue 12): made as a system user without a login, an owner-match
    nftables rule rejects its traffic to the metadata service (IPv4 and IPv6), and the agent
    is told to run command tasks as it."""
    calls, arguments, rules = _run_block(tmp_path, {})
    user = bootstrap.TASK_USER
    assert f"useradd --system --no-create-home --home-dir /nonexistent --shell /sbin/nologin " \
           f"{user}" in calls
    assert "nft -f -" in calls
    assert f'meta skuid "{user}" ip daddr 169.254.169.254 reject' in rules
    assert f'meta skuid "{user}" ip6 daddr fd00:ec2::254 reject' in rules
    assert arguments == ["--task-user", user]
    # The rules are valid nftables (checked, not applied), where nft is installed: for a user
    # that exists here.
    nft = shutil.which("nft")
    if nft and os.geteuid() == 0:
        check = subprocess.run([nft, "-c", "-f", "-"], input=rules.replace(user, "root"),
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stderr


def test_the_sandbox_gets_no_task_user_and_no_firewall_rule(tmp_path):
    """On the sandbox (its endpoint or its interpreter set) nothing is made on the shared
    host: tasks run as the sandbox's user, as its README section says."""
    for env in ({"AWS_ENDPOINT_URL": "http://127.0.0.1:1"}, {"BURST_NODE_PYTHON": "/py"}):
        folder = tmp_path / next(iter(env))
        folder.mkdir()
        calls, arguments, _ = _run_block(folder, env)
        assert calls == [] and arguments == []


def test_the_agent_and_the_task_runner_agree_on_the_task_users_variable():
    from burst import node, taskrun

    assert node.TASK_USER_VARIABLE == taskrun.TASK_USER_VARIABLE
    assert node.parse_args(["--role", "worker", "--cluster-id", "c", "--deadline", "1",
                            "--task-user", "burst-task"]).task_user == "burst-task"


def test_a_stock_node_installs_the_wheelhouse_from_the_bucket_and_never_an_index():
    """Issue 10: the environment comes from the client's wheelhouse in the cluster's bucket,
    on disk under /opt; pip is told --no-index, so no node talks to PyPI."""
    houses = (("x86_64", "s3://burst-c/wheelhouse/ab12/"), ("aarch64", "s3://burst-c/wheelhouse/cd34/"))
    config = bootstrap.NodeConfig("worker", "c", datetime.now(UTC) + timedelta(minutes=5),
                                  wheelhouses=houses,
                                  requirements=("numpy>=2", "dask==1.0", "boto3", "bokeh"))
    script = bootstrap.render(config)
    assert len(script.encode()) <= bootstrap.USER_DATA_LIMIT
    assert "    x86_64) WHEELS=s3://burst-c/wheelhouse/ab12/ ;;" in script
    assert "    aarch64) WHEELS=s3://burst-c/wheelhouse/cd34/ ;;" in script
    assert 'aws s3 cp --recursive --only-show-errors --region "$region" "$WHEELS"' in script
    assert 'NODE_DIR="${BURST_NODE_ROOT:-/opt/burst}"' in script
    installs = [line for line in script.splitlines() if "pip\" install" in line]
    assert installs and all("--no-index" in line for line in installs)
    assert "'numpy>=2' dask==1.0 boto3 bokeh" in script


def _agent(role: str, pair: dict, *extra: str) -> node.Node:
    agent = node.Node.__new__(node.Node)  # no metadata service or SSM: the pair is given
    agent.args = node.parse_args(["--role", role, "--cluster-id", "wait00000001",
                                  "--deadline", "1", *extra])
    agent._tls = pair
    return agent


def test_a_worker_up_before_its_scheduler_waits_for_it_then_its_nanny_joins_at_once():
    """The Nanny's own first contact backs off exponentially without a cap; the agent waits
    for the scheduler to answer first (real TLS, the worker's own certificate)."""
    import socket

    from distributed import Nanny, Scheduler

    from burst import tls

    bundle = tls.issue("wait00000001", timedelta(minutes=5)).node_bundle()
    worker = _agent("worker", bundle["worker"], "--death-timeout", "60")
    scheduler = _agent("scheduler", bundle["scheduler"])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"tls://127.0.0.1:{port}"

    async def main() -> None:
        waiting = asyncio.ensure_future(worker._until_listening(address, worker.security()))
        await asyncio.sleep(1.0)
        assert not waiting.done()  # nothing listens yet: still waiting, no error
        async with Scheduler(host="127.0.0.1", port=port, protocol="tls", dashboard=False,
                             security=scheduler.security()) as running:
            await asyncio.wait_for(waiting, 30)
            assert not running.workers  # the probe is no worker
            async with Nanny(address, nthreads=1, security=worker.security(),
                             protocol="tls", host="127.0.0.1"):
                assert len(running.workers) == 1

    asyncio.run(main())


def test_a_worker_whose_scheduler_never_answers_leaves_it_to_the_nanny_after_death_timeout():
    from burst import tls

    bundle = tls.issue("wait00000002", timedelta(minutes=5)).node_bundle()
    worker = _agent("worker", bundle["worker"], "--death-timeout", "0.6")
    closed = "tls://127.0.0.1:9"  # discard: nothing listens there
    assert asyncio.run(worker._until_listening(closed, worker.security())) is None
