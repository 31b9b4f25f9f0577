"""The sandbox cloud: moto's AWS API on loopback, with local process groups as instances.

- Control plane: moto's server on 127.0.0.1; burst's AWS provider only sees an endpoint URL.
- Data plane: a hypervisor watches the instances; it runs each new instance's real user-data
  script as a local process group, kills the group when the instance is terminated, and
  applies the shutdown behaviour when the group exits by itself (the instance powered off).
- Instance metadata: an IMDSv2 emulator per instance, reached through
  AWS_EC2_METADATA_SERVICE_ENDPOINT exactly as botocore does on EC2; it also serves the
  instance role's credentials and spot interruption notices for drills.
- Single-user by construction: each sandbox makes random keys (one pair for its owner's
  client, one for its instances' role) and its endpoint refuses every request whose SigV4
  signature they did not make. The owner's keys are in $BURST_HOME/sandbox.json, mode 0600.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import io
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from burst.catalog import SANDBOX_REGIONS
from burst.cloud.base import TAG_ROLE
from burst.cloud.limits import HYPERVISOR_AGENT, AwsLimits, buckets_from, quotas_from
from burst.errors import SettingError
from burst.home import burst_home, ensure_home, write_private

# What a bare moto server (no guard) takes: the provisioning benchmark's in-process moto.
UNGUARDED_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
SANDBOX_REGION = "us-east-1"
POLL_SECONDS = 0.25
# This host boots at most this many instances at once; the rest wait, "running" but not yet
# up, as an EC2 instance is for its first tens of seconds. On EC2 every instance boots on its
# own CPUs; here they share the host's, and a hundred Python processes importing Dask at once
# on two cores starve each other past the timeouts (the metadata service's among them), a
# failure AWS would not produce. An instance holds its slot until its console shows its Dask
# server up, its boot script exits, or BOOT_SLOT_SECONDS pass.
BOOT_SLOTS_ENV = "BURST_SANDBOX_BOOT_SLOTS"
BOOT_SLOTS = max(4, 4 * (os.cpu_count() or 1))
BOOT_SLOT_SECONDS = 60.0
BOOTED_MARKERS = (b"Start worker at", b"Scheduler at:")
# Each idle Dask worker polls: its event-loop tick every 20 ms, its memory every 100 ms, the
# system every 500 ms, and profiles itself every 10 ms; about 3% of a core per node, paid on
# EC2 by each instance's own CPUs, here by the host's, which a hundred idle nodes saturate.
# The sandbox's nodes poll less and do not profile (the dashboard's Profile page stays empty);
# the benchmarks give their LocalClusters NODE_DASK_CONFIG, so comparisons stay fair.
NODE_DASK_CONFIG = {
    "distributed.admin.tick.interval": "1s",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.profile.enabled": False,
}
# As the nodes get it: Dask reads DASK_A__B_C as a.b-c, its values parsed as Python literals.
NODE_DASK_ENV = {
    "DASK_" + key.upper().replace(".", "__").replace("-", "_"): str(value)
    for key, value in NODE_DASK_CONFIG.items()
}


# The sandbox "machine image": its shutdown powers the instance off by ending its process group.
FAKE_SHUTDOWN = "#!/bin/sh\nkill -TERM 0\n"
# Which image the instances boot: "client" (the client's interpreter and packages baked in:
# fast) or "stock" (what Amazon Linux 2023 has: a bare python3.X, dnf, the AWS CLI; nodes
# then build their environment from the wheelhouse, as on EC2). BURST_SANDBOX_IMAGE.
IMAGES = ("client", "stock")
IMAGE_ENV = "BURST_SANDBOX_IMAGE"


def image_from(value: str | None) -> str:
    image = (value or "client").strip()
    if image not in IMAGES:
        raise ValueError(f"{IMAGE_ENV}: {value!r} is not an image; accepted: {', '.join(IMAGES)}")
    return image


def boot_slots_from(value: str | None) -> int:
    if not (value or "").strip():
        return BOOT_SLOTS
    if not value.strip().isdigit() or int(value) < 1:
        raise ValueError(
            f"{BOOT_SLOTS_ENV}: {value!r} is not accepted; accepted: a whole number >= 1"
        )
    return int(value)


def check_settings() -> None:
    """The sandbox's settings from the environment, refused (SettingError, naming the
    variable, the value and what is accepted) before a sandbox starts with them."""
    try:
        image_from(os.environ.get(IMAGE_ENV))
        boot_slots_from(os.environ.get(BOOT_SLOTS_ENV))
        quotas_from(os.environ.get("BURST_SANDBOX_QUOTAS", ""))
        buckets_from(os.environ.get("BURST_SANDBOX_LIMITS", ""))
    except ValueError as error:
        raise SettingError(str(error), "correct or unset that variable") from None


# The stock image's dnf: its Python packages are there when the image has that interpreter
# (python3.X in the image's bin), and a missing one fails as dnf does.
STOCK_DNF = """#!/bin/sh
# burst sandbox: the stock image's dnf (install of pythonX.Y[-pip] only)
here=$(dirname "$0")
[ "$1" = install ] || { echo "Error: the sandbox's dnf only installs" >&2; exit 1; }
shift
for package in "$@"; do
  case "$package" in
    -*) continue ;;
    python3.*-pip) python=${package%-pip} ;;
    python3.*) python=$package ;;
    *) echo "Error: Unable to find a match: $package" >&2; exit 1 ;;
  esac
  [ -x "$here/$python" ] || { echo "Error: Unable to find a match: $package" >&2; exit 1; }
done
"""

# The stock image's AWS CLI, for what the boot script asks of it: `s3 cp` (a prefix down with
# --recursive, stdin or a file up), `sts get-caller-identity --query UserId --output text`
# and `ssm put-parameter`; boto3 under the client's interpreter, with the instance's
# credentials from its metadata service and AWS_ENDPOINT_URL from the hypervisor.
STOCK_AWS = """
import argparse, os, sys
from pathlib import Path
import boto3
service, command, *rest = sys.argv[1:] + ["", ""]
parser = argparse.ArgumentParser(prog=f"aws {service} {command}")
for flag in ("--region", "--query", "--output", "--name", "--value", "--type"):
    parser.add_argument(flag)
for flag in ("--recursive", "--only-show-errors", "--quiet", "--overwrite"):
    parser.add_argument(flag, action="store_true")
parser.add_argument("paths", nargs="*")
args = parser.parse_args([r for r in rest if r])
region = args.region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
client = boto3.Session(region_name=region).client(service or "sts")
if (service, command) == ("sts", "get-caller-identity"):
    who = client.get_caller_identity()
    print(who["UserId"] if args.query == "UserId" else who)
elif (service, command) == ("ssm", "put-parameter"):
    client.put_parameter(
        Name=args.name, Value=args.value, Type=args.type or "String", Overwrite=args.overwrite
    )
elif (service, command) == ("s3", "cp") and len(args.paths) == 2:
    source, target = args.paths
    if args.recursive and source.startswith("s3://"):
        bucket, _, prefix = source[5:].partition("/")
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for item in page.get("Contents", []):
                path = Path(target, item["Key"][len(prefix):].lstrip("/"))
                path.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, item["Key"], str(path))
    elif target.startswith("s3://"):
        bucket, _, key = target[5:].partition("/")
        body = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
        client.put_object(Bucket=bucket, Key=key, Body=body)
    else:
        sys.exit(f"aws s3 cp: the sandbox's AWS CLI does not copy {source} to {target}")
else:
    sys.exit(f"aws: the sandbox's AWS CLI does not do {service} {command}")
"""


def state_file() -> Path:
    return burst_home() / "sandbox.json"


def session(credentials: dict[str, str] | None = None) -> boto3.Session:
    """A session for the sandbox, never with a real AWS key: the sandbox's own `credentials`
    (its state's), else those of the sandbox published in $BURST_HOME, else the placeholder
    keys a bare moto server takes."""
    if credentials is None:
        credentials = _published_credentials() or UNGUARDED_CREDENTIALS
    keys = {k: credentials[k] for k in ("aws_access_key_id", "aws_secret_access_key")}
    return boto3.Session(region_name=SANDBOX_REGION, **keys)


def _published_credentials() -> dict[str, str] | None:
    try:
        return json.loads(state_file().read_text())["credentials"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _new_keys(prefix: str) -> dict[str, str]:
    """An access key pair shaped like AWS's (20 upper-case characters, 40-character secret)."""
    return {
        "aws_access_key_id": prefix + secrets.token_hex(8).upper(),
        "aws_secret_access_key": secrets.token_urlsafe(30),
    }


# ----------------------------------------------------------------- the guard

IDENTITY_PATH = "/__burst_sandbox__/identity"
MAX_SKEW = timedelta(minutes=15)  # as AWS: an older signature is refused (no replays later)


def identity_token(secret: str) -> str:
    """What proves to the sandbox's identity page that the asker holds the sandbox's secret,
    without sending the secret itself (the port may belong to someone else by then)."""
    return hmac.new(secret.encode(), b"burst sandbox identity", hashlib.sha256).hexdigest()


class SigV4Guard:
    """WSGI middleware in front of moto: only requests signed (AWS SigV4) with one of this
    sandbox's keys get through; the signature is recomputed with botocore's own signer from
    the request as received. moto itself takes any key, so without this any local user could
    drive the sandbox, whose instances run their user data as the sandbox's owner."""

    def __init__(self, app, keys: list[dict[str, str]]):
        self.app = app
        self.keys = {k["aws_access_key_id"]: k for k in keys}
        self.client_secret = keys[0]["aws_secret_access_key"]

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") == IDENTITY_PATH:
            return self._identity(environ, start_response)
        body = self._body(environ)
        refusal = self._refusal(environ, body)
        if refusal:
            return self._refuse(environ, start_response, refusal)
        return self.app(environ, start_response)

    def _identity(self, environ, start_response):
        offered = environ.get("HTTP_X_BURST_SANDBOX_TOKEN", "")
        if not hmac.compare_digest(offered, identity_token(self.client_secret)):
            return self._refuse(environ, start_response, "not this sandbox's token")
        data = json.dumps({"pid": os.getpid()}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [data]

    @staticmethod
    def _body(environ) -> bytes:
        """Read the body once (to check its hash) and hand moto a fresh copy."""
        from werkzeug.wsgi import get_input_stream

        body = get_input_stream(environ).read()
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        return body

    def _refusal(self, environ, body: bytes) -> str | None:
        from botocore.auth import S3SigV4Auth, SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        authorization = environ.get("HTTP_AUTHORIZATION", "")
        if not authorization.startswith("AWS4-HMAC-SHA256 "):
            return "the request is not signed with AWS SigV4"
        fields = dict(
            part.strip().split("=", 1)
            for part in authorization.removeprefix("AWS4-HMAC-SHA256 ").split(",")
            if "=" in part
        )
        try:
            key_id, day, region, service, _ = fields["Credential"].split("/")
            signed, signature = fields["SignedHeaders"].split(";"), fields["Signature"]
        except (KeyError, ValueError):
            return "malformed Authorization header"
        keys = self.keys.get(key_id)
        if keys is None:
            return f"the access key {key_id} is not this sandbox's"
        stamp = environ.get("HTTP_X_AMZ_DATE", "")
        try:
            when = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            return "no X-Amz-Date"
        if abs(datetime.now(UTC) - when) > MAX_SKEW or not stamp.startswith(day):
            return "the signature's date is more than 15 minutes off"
        token = keys.get("aws_session_token")
        if token is not None and environ.get("HTTP_X_AMZ_SECURITY_TOKEN") != token:
            return "wrong session token"
        headers = {}
        for name in signed:
            key = name.upper().replace("-", "_")
            value = environ.get(key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}")
            if value is None:
                return f"signed header {name} is missing"
            headers[name] = value
        request = AWSRequest(
            method=environ["REQUEST_METHOD"],
            url=f"http://{environ.get('HTTP_HOST', '')}{environ.get('RAW_URI', '/')}",
            headers=headers,
            data=body,
        )
        request.context["timestamp"] = stamp
        credentials = Credentials(
            key_id, keys["aws_secret_access_key"], keys.get("aws_session_token")
        )
        signer = (S3SigV4Auth if service == "s3" else SigV4Auth)(credentials, service, region)
        expected = signer.signature(
            signer.string_to_sign(request, signer.canonical_request(request)), request
        )
        if not hmac.compare_digest(expected, signature):
            return "the signature does not match"
        declared = headers.get("x-amz-content-sha256")
        if declared and len(declared) == 64 and hashlib.sha256(body).hexdigest() != declared:
            return "the body does not match its signed hash"
        return None

    @staticmethod
    def _refuse(environ, start_response, why: str):
        message = f"burst sandbox: {why}; use the keys in $BURST_HOME/sandbox.json"
        if "json" in environ.get("CONTENT_TYPE", ""):
            body = json.dumps({"__type": "UnrecognizedClientException", "message": message})
            kind = "application/x-amz-json-1.1"
        else:
            body = (
                "<ErrorResponse><Error><Code>InvalidClientTokenId</Code>"
                f"<Message>{message}</Message></Error></ErrorResponse>"
            )
            kind = "text/xml"
        start_response("403 Forbidden", [("Content-Type", kind)])
        return [body.encode()]


def create_boundary(iam) -> None:
    """The node roles' permissions boundary, made once per account as an operator would
    (moto's state is one per process, so another sandbox of this process may have made it)."""
    from burst.cloud.aws import BOUNDARY_DOCUMENT, BOUNDARY_NAME, IAM_PATH

    with contextlib.suppress(iam.exceptions.EntityAlreadyExistsException):
        iam.create_policy(
            PolicyName=BOUNDARY_NAME, Path=IAM_PATH, PolicyDocument=BOUNDARY_DOCUMENT.read_text()
        )


def _guarded_moto_server(keys: list[dict[str, str]]):
    """moto's app behind the SigV4 guard (only the owner's keys get in), then AWS's limits
    (request rates, launch rate, vCPU quotas: limits.py); returns the server and the limits."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    limits = AwsLimits.from_environment(DomainDispatcherApplication(create_backend_app))
    app = SigV4Guard(limits, keys)
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    return server, limits


# ------------------------------------------------------------------ metadata


def _peer_uid(peer: tuple[str, int], server: tuple[str, int]) -> int | None:
    """The user owning the local TCP connection from `peer` to `server`, from Linux's
    /proc/net/tcp (IPv4, established connections only: a closed one of the same port may
    linger there, owned by root); None where there is no such table (macOS) or no match."""

    def hexed(address: tuple[str, int]) -> str:
        return f"{socket.inet_aton(address[0])[::-1].hex().upper()}:{address[1]:04X}"

    try:
        wanted = (hexed(peer), hexed(server), "01")  # 01: TCP_ESTABLISHED
        with open("/proc/net/tcp") as table:
            next(table)
            for line in table:
                fields = line.split()
                if tuple(fields[1:4]) == wanted:
                    return int(fields[7])
    except (OSError, ValueError, StopIteration):
        return None
    return None


class _Metadata(BaseHTTPRequestHandler):
    """IMDSv2: a PUT for a token, then GETs that carry it. It serves the instance role's keys,
    so it answers only processes of the sandbox's own user (Linux; see README, Security): on
    EC2 only the instance reaches its metadata service, here every local user could."""

    instance: SandboxInstance  # set per server class

    def log_message(self, *args):  # keep the sandbox quiet
        pass

    def _reply(self, status: int, body: str = "") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(data)  # a caller that timed out has hung up: nothing to tell it

    def _stranger(self) -> bool:
        uid = _peer_uid(self.client_address[:2], self.server.server_address[:2])
        if uid is not None and uid != os.getuid():
            self._reply(403)
            return True
        return False

    def do_PUT(self):
        if self._stranger():
            return
        if self.path == "/latest/api/token" and self.headers.get(
            "X-aws-ec2-metadata-token-ttl-seconds"
        ):
            self._reply(200, self.instance.token)
        else:
            self._reply(400)

    def do_GET(self):
        if self._stranger():
            return
        if self.headers.get("X-aws-ec2-metadata-token") != self.instance.token:
            return self._reply(401)  # IMDSv2 is required, as burst sets HttpTokens=required
        value = self.instance.metadata(self.path.removeprefix("/latest/").rstrip("/"))
        self._reply(404) if value is None else self._reply(200, value)


@dataclass
class SandboxInstance:
    instance_id: str
    instance_type: str
    zone: str
    vcpus: int
    role: str
    folder: Path
    keys: dict[str, str]  # the instance role's credentials
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    process: subprocess.Popen | None = None
    server: ThreadingHTTPServer | None = None
    booted_at: float = 0.0  # monotonic time its boot script started
    up: bool = False  # its Dask server is up: it no longer holds a boot slot
    lock: threading.Lock = field(default_factory=threading.Lock)
    instance_action: dict | None = None  # a spot interruption notice
    rebalance: dict | None = None  # a rebalance recommendation

    def metadata(self, path: str) -> str | None:
        credentials = {
            "Code": "Success",
            "Type": "AWS-HMAC",
            "AccessKeyId": self.keys["aws_access_key_id"],
            "SecretAccessKey": self.keys["aws_secret_access_key"],
            "Token": self.keys["aws_session_token"],
            "LastUpdated": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "Expiration": (datetime.now(UTC) + timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        values = {
            "meta-data/instance-id": self.instance_id,
            "meta-data/instance-type": self.instance_type,
            "meta-data/local-ipv4": "127.0.0.1",
            "meta-data/public-ipv4": "127.0.0.1",
            "meta-data/placement/availability-zone": self.zone,
            "meta-data/placement/region": self.zone[:-1],
            "meta-data/iam/security-credentials": self.role,
            f"meta-data/iam/security-credentials/{self.role}": json.dumps(credentials),
            "dynamic/instance-identity/document": json.dumps(
                {
                    "instanceId": self.instance_id,
                    "instanceType": self.instance_type,
                    "availabilityZone": self.zone,
                    "region": self.zone[:-1],
                }
            ),
        }
        if self.instance_action:
            values["meta-data/spot/instance-action"] = json.dumps(self.instance_action)
        if self.rebalance:
            values["meta-data/events/recommendations/rebalance"] = json.dumps(self.rebalance)
        return values.get(path)

    def serve_metadata(self) -> str:
        handler = type("Metadata", (_Metadata,), {"instance": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def kill(self) -> None:
        """Idempotent, and safe from two threads at once (the hypervisor's loop and stop())."""
        _POWERED.pop(self.instance_id, None)
        with self.lock:
            server, self.server = self.server, None
        if self.process and self.process.poll() is None:
            _kill_group(self.process)
        if server:
            server.shutdown()
            server.server_close()


def _kill_group(process: subprocess.Popen, grace: float = 3.0) -> None:
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


# ---------------------------------------------------------------- hypervisor

# Process groups of the instances this process runs, by instance id. moto marks an instance
# terminated at once, where EC2 first shuts it down; so that "terminated" means gone here too,
# moto's terminate and stop kill the instance's processes before they return.
_POWERED: dict[str, int] = {}
_CUT: set[str] = set()  # instances moto terminated or stopped: never booted after that
_POWER_LOCK = threading.Lock()
# The hypervisors of this process, woken when moto creates, stops or terminates an instance:
# EC2 boots an instance when it is launched, not at its next poll. Without a change they look
# at EC2's state only every FULL_RECONCILE_SECONDS (a describe per region costs the host CPU).
_WATCHERS: set[threading.Event] = set()
FULL_RECONCILE_SECONDS = 2.0


def _changed() -> None:
    for event in list(_WATCHERS):
        event.set()


def _power_cut_on_terminate() -> None:
    from moto.ec2.models.instances import Instance

    if getattr(Instance, "_burst_power_cut", False):
        return

    def cutting(method):
        def wrapper(self, *args, **kwargs):
            with _POWER_LOCK:
                _CUT.add(self.id)
                group = _POWERED.pop(self.id, None)
                if group is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(group, signal.SIGKILL)
            try:
                return method(self, *args, **kwargs)
            finally:
                _changed()

        return wrapper

    def launching(init):
        def wrapper(self, *args, **kwargs):
            init(self, *args, **kwargs)
            _changed()  # the response is still being written: the next poll describes it

        return wrapper

    Instance.terminate = cutting(Instance.terminate)
    Instance.stop = cutting(Instance.stop)
    Instance.__init__ = launching(Instance.__init__)
    Instance._burst_power_cut = True
    _fleet_deletion_as_ec2()
    _forgetting_as_ec2()


# EC2 forgets what moto keeps for the sandbox's life: a deleted resource has no tags, and a
# terminated instance "remains visible after termination (for approximately one hour)"
# (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeInstances.html).
# moto's DescribeTags reads every tag it ever held, about 60 a job: a long-lived sandbox
# would slow down with every job. Deleted fleets are forgotten with the instances.
FORGET_AFTER_SECONDS = 3600.0
_ENDED_AT: dict[str, float] = {}  # terminated instance or deleted fleet -> monotonic time


def _forgetting_as_ec2() -> None:
    from moto.ec2.models import EC2Backend
    from moto.ec2.models.instances import Instance

    if getattr(EC2Backend, "_burst_forgets", False):
        return

    def untagging(method, deleted):
        def wrapper(self, *args, **kwargs):
            result = method(self, *args, **kwargs)
            for resource_id in deleted(result, *args, **kwargs):
                self.tags.pop(resource_id, None)
            return result

        return wrapper

    EC2Backend.delete_volume = untagging(EC2Backend.delete_volume, lambda r, *_: [r.id])
    EC2Backend.delete_launch_template = untagging(
        EC2Backend.delete_launch_template, lambda r, *_: [r.id]
    )
    EC2Backend._delete_security_group = untagging(
        EC2Backend._delete_security_group, lambda r, vpc_id, group_id: [group_id]
    )
    delete_fleets, terminate = EC2Backend.delete_fleets, Instance.terminate

    def deleting_fleets(self, fleet_ids, *args, **kwargs):
        deleted = delete_fleets(self, fleet_ids, *args, **kwargs)
        _ENDED_AT.update(dict.fromkeys(fleet_ids, time.monotonic()))
        return deleted

    def terminating(self, *args, **kwargs):
        _ENDED_AT.setdefault(self.id, time.monotonic())
        return terminate(self, *args, **kwargs)

    EC2Backend.delete_fleets = deleting_fleets
    Instance.terminate = terminating
    EC2Backend._burst_forgets = True


def forget_ended() -> list[str]:
    """Forget the instances terminated and the fleets deleted FORGET_AFTER_SECONDS ago, and
    their tags, as EC2 does. Returns their ids."""
    from moto.backends import get_backend

    now = time.monotonic()
    old = {i for i, at in list(_ENDED_AT.items()) if now - at >= FORGET_AFTER_SECONDS}
    if not old:
        return []
    for regions in get_backend("ec2").values():
        for backend in regions.values():
            for reservation_id, reservation in list(backend.reservations.items()):
                reservation.instances = [i for i in reservation.instances if i.id not in old]
                if not reservation.instances:
                    del backend.reservations[reservation_id]
            for resource_id in old:
                backend.fleets.pop(resource_id, None)
                backend.tags.pop(resource_id, None)
    for resource_id in old:
        _ENDED_AT.pop(resource_id, None)
    return sorted(old)


def _fleet_deletion_as_ec2() -> None:
    """EC2 deletes an instant fleet with TerminateInstances=True whose instances are already
    gone; moto then calls TerminateInstances with no ids and refuses. Only that is changed."""
    from moto.ec2.models.fleets import Fleet

    terminate = Fleet.terminate_instances

    def terminate_live(self) -> None:
        requests = self.spot_requests + self.on_demand_instances
        instances = [getattr(r, "instance", None) or r["instance"] for r in requests]
        if any(i.state != "terminated" for i in instances):
            terminate(self)

    Fleet.terminate_instances = terminate_live


def _tag(described: dict, key: str) -> str | None:
    return next((t["Value"] for t in described.get("Tags", []) if t["Key"] == key), None)


def _console_says(console: Path, markers: tuple[bytes, ...]) -> bool:
    try:
        text = console.read_bytes()
    except OSError:
        return False
    return any(marker in text for marker in markers)


class Hypervisor:
    """Boots, kills and powers off the sandbox's instances as moto's EC2 state says."""

    def __init__(
        self,
        endpoint: str,
        folder: Path,
        credentials: dict[str, str] | None = None,
        instance_keys: dict[str, str] | None = None,
        image: str = "client",
    ):
        self.endpoint = endpoint
        self.image = image_from(image)
        self.boot_slots = boot_slots_from(os.environ.get(BOOT_SLOTS_ENV))
        self.folder = folder
        self.instance_keys = instance_keys or {
            **UNGUARDED_CREDENTIALS,
            "aws_session_token": "testing",
        }
        self.clients = {
            # The hypervisor is the cloud itself: its calls are not the account's (limits.py).
            r: session(credentials).client(
                "ec2",
                region_name=r,
                endpoint_url=endpoint,
                config=Config(user_agent_extra=HYPERVISOR_AGENT),
            )
            for r in SANDBOX_REGIONS
        }
        self.instances: dict[str, SandboxInstance] = {}
        self._vcpus: dict[str, int] = {}
        self._memory: dict[str, int] = {}  # instance type -> bytes
        self._fleets_seen: set[str] = set()
        self._template_data: dict[str, dict] = {}  # instance id -> its launch template's data
        self._stop = threading.Event()
        self._change = threading.Event()  # set by moto's launches and terminations
        self._waiting = False  # instances wait for a boot slot
        self._thread = threading.Thread(target=self._loop, name="sandbox-hypervisor", daemon=True)
        self.errors: list[str] = []
        bin_dir = folder / "image-bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        (bin_dir / "shutdown").write_text(FAKE_SHUTDOWN)
        (bin_dir / "shutdown").chmod(0o755)
        self.bin_dir = bin_dir
        if self.image == "stock":
            self._stock_image()

    def _stock_image(self) -> None:
        """What Amazon Linux 2023 gives: the client's Python minor as python3.X (the bare
        base interpreter, none of the client's packages), dnf and the AWS CLI."""
        python = self.bin_dir / "python{}.{}".format(*sys.version_info[:2])
        python.unlink(missing_ok=True)
        python.symlink_to(getattr(sys, "_base_executable", sys.executable))
        for name, text in (
            ("dnf", STOCK_DNF),
            ("aws", f"#!{sys.executable}\n# burst sandbox: the image's AWS CLI\n{STOCK_AWS}"),
        ):
            (self.bin_dir / name).write_text(text)
            (self.bin_dir / name).chmod(0o755)

    def start(self) -> None:
        _WATCHERS.add(self._change)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._change.set()
        _WATCHERS.discard(self._change)
        self._thread.join(10)
        for instance in list(self.instances.values()):
            instance.kill()

    def interrupt(self, instance_id: str, notice_seconds: float = 120) -> None:
        """A spot interruption drill: post the two-minute notice, terminate when it expires."""
        instance = self.instances[instance_id]
        when = datetime.now(UTC) + timedelta(seconds=notice_seconds)
        instance.instance_action = {
            "action": "terminate",
            "time": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        timer = threading.Timer(
            notice_seconds,
            self._ec2(instance).terminate_instances,
            kwargs={"InstanceIds": [instance_id]},
        )
        timer.daemon = True
        timer.start()

    def recommend_rebalance(self, instance_id: str) -> None:
        """EC2's rebalance recommendation, its earlier signal that a spot instance is at
        elevated risk of interruption: in the metadata, nothing terminated (a notice may or
        may not follow). https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/
        rebalance-recommendations.html"""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.instances[instance_id].rebalance = {"noticeTime": now}

    def _ec2(self, instance: SandboxInstance):
        return self.clients[instance.zone[:-1]]

    def _loop(self) -> None:
        last_full = last_change = last_forget = 0.0
        while not self._stop.is_set():
            self._change.wait(POLL_SECONDS)
            if self._stop.is_set():
                return
            now = time.monotonic()
            if self._change.is_set():
                self._change.clear()
                last_change = now
            full = (
                now - last_change < 1.0  # moto may still be adding what woke us: look again
                or self._waiting
                or now - last_full > FULL_RECONCILE_SECONDS
            )
            try:
                if full:
                    last_full = time.monotonic()
                    self._reconcile()
                else:
                    self._reap()
                if now - last_forget > 60:
                    last_forget = now
                    forget_ended()
            except Exception as error:  # moto restarting or shutting down: try again
                self.errors.append(repr(error))

    def _reap(self) -> None:
        """Power off the instances whose boot script exited by itself: a local look, no API
        call. One that moto terminated or stopped (its processes killed, so exited too) is
        already off: powering it off again races moto's own termination."""
        for instance in list(self.instances.values()):
            with _POWER_LOCK:
                cut = instance.instance_id in _CUT
            if not cut and instance.process and instance.process.poll() is not None:
                self._power_off(instance)

    def _reconcile(self) -> None:
        live = {}
        # Terminated instances stay in the answers for an hour (see forget_ended): filtered
        # out by the API, not parsed to be dropped.
        running = [{"Name": "instance-state-name", "Values": ["pending", "running"]}]
        for ec2 in self.clients.values():
            for page in ec2.get_paginator("describe_instances").paginate(Filters=running):
                for reservation in page["Reservations"]:
                    for described in reservation["Instances"]:
                        live[described["InstanceId"]] = described
        waiting = [d for i, d in live.items() if i not in self.instances]
        # The scheduler first: its workers wait for it, holding their slots.
        waiting.sort(key=lambda d: _tag(d, TAG_ROLE) != "scheduler")
        free = max(0, self.boot_slots - self._booting())
        self._waiting = len(waiting) > free  # look again at every poll until all booted
        for described in waiting[:free]:
            self._boot(described)
        for instance_id, instance in list(self.instances.items()):
            if instance_id not in live:
                instance.kill()  # terminated or stopped through the API
                del self.instances[instance_id]
        self._reap()

    def _booting(self) -> int:
        """How many instances hold a boot slot now."""
        now = time.monotonic()
        for instance in self.instances.values():
            if not instance.up and (
                now - instance.booted_at > BOOT_SLOT_SECONDS
                or instance.process is None
                or instance.process.poll() is not None
                or _console_says(instance.folder / "console.log", BOOTED_MARKERS)
            ):
                instance.up = True
        return sum(not instance.up for instance in self.instances.values())

    def _boot(self, described: dict) -> None:
        instance_id = described["InstanceId"]
        instance_type = described["InstanceType"]
        ec2 = self.clients[described["Placement"]["AvailabilityZone"][:-1]]
        if instance_type not in self._vcpus:
            info = ec2.describe_instance_types(InstanceTypes=[instance_type])
            self._vcpus[instance_type] = info["InstanceTypes"][0]["VCpuInfo"]["DefaultVCpus"]
            mib = info["InstanceTypes"][0].get("MemoryInfo", {}).get("SizeInMiB", 0)
            self._memory[instance_type] = mib * 2**20
        template = self._launch_template_data(ec2, instance_id)
        profile = described.get("IamInstanceProfile", {}).get("Arn") or template.get(
            "IamInstanceProfile", {}
        ).get("Name", "/sandbox-node")
        instance = SandboxInstance(
            instance_id=instance_id,
            instance_type=instance_type,
            zone=described["Placement"]["AvailabilityZone"],
            vcpus=self._vcpus[instance_type],
            role=profile.rsplit("/", 1)[-1],
            folder=self.folder / instance_id,
            keys=self.instance_keys,
        )
        instance.folder.mkdir(parents=True, exist_ok=True)
        user_data = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")[
            "UserData"
        ].get("Value", "")
        script = instance.folder / "user-data"
        script.write_bytes(base64.b64decode(user_data) if user_data else b"#!/bin/sh\n")
        script.chmod(0o700)
        with _POWER_LOCK:  # moto may have terminated it meanwhile: then it never boots
            if instance_id in _CUT:
                instance.kill()
                return
            try:
                with open(instance.folder / "console.log", "ab") as console:
                    instance.process = subprocess.Popen(
                        [str(script)],
                        cwd=instance.folder,
                        env=self._instance_env(instance),
                        stdin=subprocess.DEVNULL,
                        stdout=console,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its own process group: the whole "machine"
                    )
            except BaseException:
                instance.kill()  # stops its metadata server; the next poll boots it again
                raise
            instance.booted_at = time.monotonic()
            # Registered only once booted, so a failed boot is retried rather than forgotten.
            self.instances[instance_id] = instance
            _POWERED[instance_id] = instance.process.pid

    def _launch_template_data(self, ec2, instance_id: str) -> dict:
        """moto launches fleet instances without the launch template's instance profile and
        shutdown behaviour, which EC2 applies; find the template through the fleet."""
        for fleet in ec2.describe_fleets()["Fleets"]:
            if fleet["FleetId"] in self._fleets_seen:
                continue
            self._fleets_seen.add(fleet["FleetId"])
            spec = fleet["LaunchTemplateConfigs"][0]["LaunchTemplateSpecification"]
            try:
                versions = ec2.describe_launch_template_versions(
                    LaunchTemplateId=spec["LaunchTemplateId"], Versions=[spec["Version"]]
                )["LaunchTemplateVersions"]
            except ec2.exceptions.ClientError:  # torn down meanwhile: its instances are gone
                continue
            members = ec2.describe_fleet_instances(FleetId=fleet["FleetId"])["ActiveInstances"]
            for member in members:
                self._template_data[member["InstanceId"]] = versions[0]["LaunchTemplateData"]
        return self._template_data.get(instance_id, {})

    def _instance_env(self, instance: SandboxInstance) -> dict[str, str]:
        """The instance sees AWS only through its metadata service and the sandbox network."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AWS_", "BURST_", "DASK_", "PYTHONPATH"))
        }
        env.update(
            {
                "HOME": str(instance.folder),
                "TMPDIR": str(instance.folder),
                "AWS_EC2_METADATA_SERVICE_ENDPOINT": instance.serve_metadata(),
                "AWS_ENDPOINT_URL": self.endpoint,  # the sandbox's "network" routes AWS to moto
                "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                # The host's cores are shared, so the instance's vCPUs are declared, not counted.
                "BURST_NODE_VCPUS": str(instance.vcpus),
                "BURST_NODE_MEMORY": str(self._memory.get(instance.instance_type, 0)),
                **NODE_DASK_ENV,
            }
        )
        if poll := os.environ.get("BURST_SPOT_POLL_SECONDS"):  # spot drills: see node.py
            env["BURST_SPOT_POLL_SECONDS"] = poll
        if self.image == "stock":  # a stock image: no pip configuration, no client packages
            env = {k: v for k, v in env.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}
            env["PATH"] = f"{self.bin_dir}:{env.get('PATH', '')}"
            env["PIP_CONFIG_FILE"] = os.devnull
            env["BURST_NODE_ROOT"] = str(instance.folder / "opt-burst")  # its /opt/burst
        else:  # the sandbox image: the client's Python and packages baked in
            env["PATH"] = f"{self.bin_dir}:{Path(sys.executable).parent}:{env.get('PATH', '')}"
            env["BURST_NODE_PYTHON"] = sys.executable
        return env

    def _power_off(self, instance: SandboxInstance) -> None:
        instance.kill()
        ec2 = self._ec2(instance)
        behaviour = (
            self._template_data.get(instance.instance_id, {}).get(
                "InstanceInitiatedShutdownBehavior"
            )
            or (
                ec2.describe_instance_attribute(
                    InstanceId=instance.instance_id,
                    Attribute="instanceInitiatedShutdownBehavior",
                )["InstanceInitiatedShutdownBehavior"]["Value"]
            )
        )
        if behaviour == "terminate":
            ec2.terminate_instances(InstanceIds=[instance.instance_id])
        else:
            ec2.stop_instances(InstanceIds=[instance.instance_id])


# ------------------------------------------------------------------- sandbox


class Sandbox:
    """moto's server plus the hypervisor, in this process."""

    def __init__(self, folder: Path | None = None, image: str | None = None):
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.image = image_from(image if image is not None else os.environ.get(IMAGE_ENV))
        self._owns_folder = folder is None
        self.folder = Path(folder or tempfile.mkdtemp(prefix="burst-sandbox-"))
        # The owner's keys, and the instances' role keys (served by their metadata service).
        self.credentials = _new_keys("AKIA")
        self.instance_keys = {**_new_keys("ASIA"), "aws_session_token": secrets.token_urlsafe(32)}
        self._server, self.limits = _guarded_moto_server([self.credentials, self.instance_keys])
        self._serving = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.endpoint = ""
        self.hypervisor: Hypervisor | None = None

    def start(self) -> Sandbox:
        self._serving.start()
        host, port = self._server.server_address[:2]
        self.endpoint = f"http://{host}:{port}"
        _power_cut_on_terminate()
        self._prepare_account()
        self.hypervisor = Hypervisor(
            self.endpoint, self.folder, self.credentials, self.instance_keys, self.image
        )
        self.hypervisor.start()
        return self

    def stop(self) -> None:
        if self.hypervisor:
            self.hypervisor.stop()
        self._server.shutdown()
        self._serving.join()
        if self._owns_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _prepare_account(self) -> None:
        """What an operator does once per AWS account: the node roles' permissions boundary."""
        create_boundary(self.session().client("iam", endpoint_url=self.endpoint))

    def session(self) -> boto3.Session:
        """A session with this sandbox's owner keys."""
        return session(self.credentials)

    def state(self) -> dict:
        """What a client needs to use this sandbox: its endpoint and its owner's keys."""
        return {
            "endpoint": self.endpoint,
            "pid": os.getpid(),
            "folder": str(self.folder),
            "credentials": self.credentials,
            "image": self.image,
        }

    def publish(self) -> None:
        """Let this user's other burst processes use this sandbox: the state file (with the
        keys) is readable by its owner alone, in a $BURST_HOME only its owner may enter."""
        ensure_home()
        write_private(state_file(), json.dumps(self.state()))


def running_sandbox() -> dict | None:
    """The long-lived sandbox of this machine (`burst sandbox up`), if it answers. No state
    file, a torn one, or a sandbox that is gone all mean none; anything else is a bug."""
    try:
        state = json.loads(state_file().read_text())
        endpoint, credentials = state["endpoint"], state["credentials"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # half written by a sandbox starting now, or not ours
    quick = Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1})
    try:
        session(credentials).client(
            "sts", endpoint_url=endpoint, config=quick
        ).get_caller_identity()
    except (BotoCoreError, ClientError, KeyError, TypeError):
        return None  # its process is gone (the state file outlived it)
    return state


IDLE_STOP_SECONDS = 1800  # a sandbox started by `burst submit` stops after this without work


def serve(idle_stop: float | None = None) -> None:
    """`burst sandbox up` runs this in its own process until SIGTERM; started by `burst submit`
    (idle_stop), it also stops once no instance has run for `idle_stop` seconds."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with Sandbox() as sandbox:
        sandbox.publish()
        busy = time.monotonic()
        while not stop.wait(1):
            if sandbox.hypervisor.instances:
                busy = time.monotonic()
            elif idle_stop is not None and time.monotonic() - busy > idle_stop:
                print(f"no instance for {idle_stop:g}s: the sandbox stops", flush=True)
                break
        state_file().unlink(missing_ok=True)


def start_detached(timeout: float = 60, idle_stop: float | None = None) -> dict:
    home = ensure_home()
    state_file().unlink(missing_ok=True)
    idle = [] if idle_stop is None else ["--idle-stop", f"{idle_stop:g}"]
    with open(home / "sandbox.log", "ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "burst.cloud.sandbox", *idle],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = running_sandbox()
        if state:
            return state
        time.sleep(0.2)
    raise RuntimeError(f"the sandbox did not start in {timeout:.0f}s; see {home / 'sandbox.log'}")


class NotTheSandbox(RuntimeError):
    """The state file names a process that is not this user's sandbox."""


def _answers_as(state: dict) -> int | None:
    """The pid the sandbox at the state's endpoint gives when shown the state's token."""
    request = urllib.request.Request(
        state["endpoint"] + IDENTITY_PATH,
        headers={
            "X-Burst-Sandbox-Token": identity_token(state["credentials"]["aws_secret_access_key"])
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return int(json.loads(reply.read())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _command_line(pid: int) -> str:
    """The process's command line ('' when it is gone), through ps (Linux and macOS)."""
    found = subprocess.run(
        ["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, check=False
    )
    return found.stdout.strip()


def stop_detached(timeout: float = 30) -> bool:
    """Stop the long-lived sandbox: False when none runs. The process the state file names is
    signalled only once it proves to be the sandbox: it answers the sandbox's identity check
    with that pid, or (hung) it is `python -m burst.cloud.sandbox`. Else NotTheSandbox."""
    try:
        state = json.loads(state_file().read_text())
        pid, endpoint = int(state["pid"]), state["endpoint"]
        state["credentials"]["aws_secret_access_key"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    answered = _answers_as(state)
    if answered != pid:
        command = _command_line(pid)
        if not command:
            state_file().unlink(missing_ok=True)  # it died and left its state file
            return False
        if answered is not None or "burst.cloud.sandbox" not in command:
            raise NotTheSandbox(
                f"pid {pid} named by {state_file()} is not the sandbox at {endpoint} "
                f"({command[:80]!r}); nothing was stopped"
            )
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        state_file().unlink(missing_ok=True)
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and state_file().exists():
        time.sleep(0.2)
    return True


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m burst.cloud.sandbox")
    parser.add_argument("--idle-stop", type=float, help="stop after this many seconds idle")
    serve(parser.parse_args().idle_stop)
