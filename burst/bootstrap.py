"""User data: the script an instance runs at boot to become a scheduler or a worker.

It carries no secrets (user data is readable through DescribeInstanceAttribute): the node
agent fetches the TLS material from SSM with the instance's role.
"""

from __future__ import annotations

import base64
import gzip
import json
import shlex
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

import burst.node
from burst.software import client_python

USER_DATA_LIMIT = 16 * 1024  # EC2's limit, before base64


def client_versions() -> dict[str, str]:
    """What the workers must match: Python's minor version and the exact Dask stack."""
    return {
        "python": client_python(),
        "dask": version("dask"),
        "distributed": version("distributed"),
        "cloudpickle": version("cloudpickle"),
    }


@dataclass(frozen=True)
class NodeConfig:
    role: str  # "scheduler" or "worker"
    cluster_id: str
    deadline: datetime
    port: int = 8786
    dashboard_port: int = 8787
    idle_timeout: float = 1800.0  # seconds without a task: the scheduler stops
    no_client_timeout: float = 120.0  # seconds without a client: the scheduler stops
    scheduler: str = ""  # a worker's scheduler (tls://ip:port) when known at launch
    # The wheelhouses in the cluster's bucket, as (uname -m, s3://bucket/wheelhouse/<hash>/),
    # and what to install from them (burst.wheelhouse): a stock image's environment.
    wheelhouses: tuple[tuple[str, str], ...] = ()
    requirements: tuple[str, ...] = ()


TASK_USER = "burst-task"
# On EC2 itself (the sandbox sets its endpoint and interpreter, and runs every instance as one
# local user: never a user or a firewall rule on its host), command tasks run as an
# unprivileged user that may not reach the metadata service, and so not the role's keys: an
# owner-match rule, as AWS's "Limit access to the Instance Metadata Service"
# (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instance-metadata-limiting-access.html)
# does with iptables, here in nftables, the firewall Amazon Linux 2023 uses (installed if
# missing). It cannot read the agent's key files either (mode 0600, root's). A failure here
# fails the boot (the ERR trap): tasks never fall back to root.
TASK_USER_BLOCK = f"""# -- task user
TASK_USER=()
if [ -z "${{AWS_ENDPOINT_URL:-}}${{BURST_NODE_PYTHON:-}}" ]; then
  id -u {TASK_USER} >/dev/null 2>&1 || useradd --system --no-create-home \\
    --home-dir /nonexistent --shell /sbin/nologin {TASK_USER}
  command -v nft >/dev/null 2>&1 || dnf install -y -q nftables >/dev/null
  nft -f - <<'NFT'
table inet burst_imds {{
  chain output {{
    type filter hook output priority 0; policy accept;
    meta skuid "{TASK_USER}" ip daddr 169.254.169.254 reject
    meta skuid "{TASK_USER}" ip6 daddr fd00:ec2::254 reject
  }}
}}
NFT
  TASK_USER=(--task-user {TASK_USER})
fi
# -- end task user
"""


def _agent_payload() -> str:
    source = Path(burst.node.__file__).read_bytes()
    return base64.b64encode(gzip.compress(source, mtime=0)).decode()


def render(config: NodeConfig) -> str:
    versions = client_versions()
    python = f"python{versions['python']}"
    install = " ".join(shlex.quote(p) for p in config.requirements)
    wheelhouses = "".join(
        f"    {machine}) WHEELS={shlex.quote(uri)} ;;\n" for machine, uri in config.wheelhouses
    )
    agent_args = " ".join(
        shlex.quote(a)
        for a in [
            "--role",
            config.role,
            "--cluster-id",
            config.cluster_id,
            "--deadline",
            str(int(config.deadline.timestamp())),
            "--port",
            str(config.port),
            "--dashboard-port",
            str(config.dashboard_port),
            "--idle-timeout",
            f"{config.idle_timeout:g}",
            "--no-client-timeout",
            f"{config.no_client_timeout:g}",
            "--versions",
            json.dumps(versions),
            *(["--scheduler", config.scheduler] if config.scheduler else []),
        ]
    )
    # Where a failed boot is reported: see burst.node.report_failure.
    reports = f"s3://{burst.node.failure_bucket(config.cluster_id)}/{burst.node.FAILED_PREFIX}"
    script = f"""#!/bin/bash
# burst {config.role} node of cluster {config.cluster_id}; deadline {config.deadline.isoformat()}
set -euo pipefail
DEADLINE={int(config.deadline.timestamp())}
IMDS="${{AWS_EC2_METADATA_SERVICE_ENDPOINT:-http://169.254.169.254/}}"
IMDS="${{IMDS%/}}/latest"
# A failed step is published where the client looks (so it fails fast with the cause, not
# after minutes of billed boot), then the node powers off. Amazon Linux 2023 has the AWS CLI.
on_error() {{
  local message="boot of the {config.role} failed at line $1 (exit $2): $3"
  echo "$message" >&2
  if command -v aws >/dev/null 2>&1; then
    local token id region
    token=$(curl -sf -X PUT "$IMDS/api/token" -H "X-aws-ec2-metadata-token-ttl-seconds: 60" || :)
    local ask=(curl -sf -H "X-aws-ec2-metadata-token: $token")
    id=$("${{ask[@]}}" "$IMDS/meta-data/instance-id" || echo unknown)
    region=$("${{ask[@]}}" "$IMDS/meta-data/placement/region" || :)
    local who  # the role's aws:userid: the only failed/ prefix it may write (burst.node)
    who=$(aws sts get-caller-identity ${{region:+--region "$region"}} --query UserId \\
      --output text 2>/dev/null || echo unknown)
    printf '%s' "${{message:0:{burst.node.FAILURE_BYTES}}}" |
      aws s3 cp ${{region:+--region "$region"}} - "{reports}$who/$id" >/dev/null 2>&1 || true
  fi
  shutdown -h now
}}
trap 'on_error $LINENO $? "$BASH_COMMAND"' ERR
# Dead-man's switch: power off at the deadline, whatever becomes of the agent or the client.
( left=$(( DEADLINE - $(date +%s) )); sleep $(( left > 0 ? left : 0 )); shutdown -h now ) &
PY="${{BURST_NODE_PYTHON:-}}"
if [ -n "$PY" ]; then
  NODE_DIR=$(mktemp -d)  # the sandbox: every node shares one host
else
  # A stock Amazon Linux image: the client's Python, and a venv on disk (/tmp is memory on
  # Amazon Linux 2023) from the wheelhouse the client built and put in the cluster's bucket
  # (burst.wheelhouse): no package index is ever asked. BURST_NODE_ROOT: the sandbox's
  # instances share one host, each has its own folder.
  NODE_DIR="${{BURST_NODE_ROOT:-/opt/burst}}"
  mkdir -p "$NODE_DIR"
  dnf install -y -q {python} {python}-pip >/dev/null
  token=$(curl -sf -X PUT "$IMDS/api/token" -H "X-aws-ec2-metadata-token-ttl-seconds: 60")
  region=$(curl -sf -H "X-aws-ec2-metadata-token: $token" "$IMDS/meta-data/placement/region")
  case "$(uname -m)" in
{wheelhouses}    *) echo "no wheelhouse for $(uname -m)" >&2; false ;;
  esac
  aws s3 cp --recursive --only-show-errors --region "$region" "$WHEELS" "$NODE_DIR/wheels"
  {python} -m venv "$NODE_DIR/venv"
  "$NODE_DIR/venv/bin/pip" install -q --disable-pip-version-check --no-index \\
    --find-links "$NODE_DIR/wheels" {install}
  PY="$NODE_DIR/venv/bin/python"
fi
echo '{_agent_payload()}' | base64 -d | gunzip > "$NODE_DIR/burst_node.py"
{TASK_USER_BLOCK}trap - ERR  # from here the agent reports its own failures
echo "node python: $PY"  # in the console output: which environment the agent runs in
status=0
"$PY" "$NODE_DIR/burst_node.py" {agent_args} "${{TASK_USER[@]}}" || status=$?
echo "burst node agent exited with $status; powering off"
shutdown -h now
"""
    if len(script.encode()) > USER_DATA_LIMIT:
        raise ValueError(f"user data is {len(script.encode())} bytes; EC2 accepts 16 KB")
    return script
