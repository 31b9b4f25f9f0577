"""The node agent: runs ON each instance, started by the user-data script.

It is shipped inside the user data and so imports nothing from burst: only the standard
library, boto3 and distributed, which the instance's environment has at the client's exact
versions. It reads the cluster's TLS material from SSM, starts the Dask scheduler or a worker
over tls://, stops at the deadline even if the client is gone, and retires a worker
gracefully when a spot interruption notice arrives. When it returns, the user-data script
powers the instance off (and its shutdown behaviour terminates it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request

METADATA_ENDPOINT = "http://169.254.169.254/"
# How often a worker asks the metadata service for a spot interruption notice (two minutes'
# warning on EC2); drills on the sandbox set it lower to see the notice while work still runs.
SPOT_POLL_SECONDS = float(os.environ.get("BURST_SPOT_POLL_SECONDS") or 5.0)
SPOT_NOTICE = "meta-data/spot/instance-action"
REBALANCE_NOTICE = "meta-data/events/recommendations/rebalance"
NOTICES = ((SPOT_NOTICE, "spot interruption"), (REBALANCE_NOTICE, "rebalance recommendation"))
# Where a retiring worker tells the client it goes: [key, instance id] -> reason and time
# (burst.cluster reads the same key to replace the lost cores).
INTERRUPTED_KEY = "burst-interrupted"
# What a BurstCluster sets on the scheduler every few seconds while it lives (burst.cluster).
HEARTBEAT_KEY = "burst-heartbeat"
# The scheduler's handlers that act as a Dask client: submit or change work, run code on the
# scheduler or the workers, install plugins, stop the cluster. Only a peer whose certificate
# is the client's or the detached driver's (its OU, see burst.tls) may call them; a worker's
# or the scheduler's key may not. A client's own stream handlers (update-graph, ...) are
# reachable only after register-client, so guarding that guards them.
CLIENT_ROLES = frozenset({"client", "driver"})
CLIENT_ONLY_HANDLERS = (
    "register-client",
    "run_function",
    "broadcast",
    "feed",
    "proxy",
    "scatter",
    "retry",
    "restart",
    "restart_workers",
    "terminate",
    "set_metadata",
    "rebalance",
    "replicate",
    "register_scheduler_plugin",
    "unregister_scheduler_plugin",
    "register_worker_plugin",
    "unregister_worker_plugin",
    "register_nanny_plugin",
    "unregister_nanny_plugin",
    "dump_cluster_state_to_url",
)


# Where a node that gave up says why: an object in the cluster's bucket under
# failed/<its aws:userid>/, the only place in it a worker's role may write besides the tasks'
# outputs (burst.cloud.aws._node_roles). For an instance's role, aws:userid is
# "<role id>:<instance id>" (https://docs.aws.amazon.com/IAM/latest/UserGuide/
# reference_policies_variables.html): a worker can write its own report, no one else's.
FAILED_PREFIX = "failed/"
# How the agent tells its worker process the task user (burst.taskrun.TASK_USER_VARIABLE).
TASK_USER_VARIABLE = "BURST_NODE_TASK_USER"
FAILURE_BYTES = 4000  # what a report keeps, and what the client reads of one


def failure_bucket(cluster_id: str) -> str:
    """The cluster's bucket (burst.storage.bucket_name; this module imports nothing of burst)."""
    return f"burst-{cluster_id}".lower()


def failure_key(user_id: str, instance_id: str) -> str:
    return f"{FAILED_PREFIX}{user_id}/{instance_id}"


def _read(request: urllib.request.Request, attempts: int = 5) -> str:
    """A metadata request; a slow or busy service (a loaded machine) is asked again."""
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(request, timeout=5) as reply:
                return reply.read().decode()
        except urllib.error.HTTPError:
            raise
        except OSError:
            if attempt == attempts - 1:
                raise
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


class Metadata:
    """IMDSv2, at the endpoint botocore uses (AWS_EC2_METADATA_SERVICE_ENDPOINT)."""

    def __init__(self) -> None:
        self.base = os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", METADATA_ENDPOINT)
        self.base = self.base.rstrip("/") + "/latest/"
        self.token = self._new_token()

    def _new_token(self) -> str:
        request = urllib.request.Request(
            self.base + "api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"},
        )
        return _read(request)

    def get(self, path: str) -> str | None:
        for attempt in range(2):
            request = urllib.request.Request(
                self.base + path, headers={"X-aws-ec2-metadata-token": self.token}
            )
            try:
                return _read(request)
            except urllib.error.HTTPError as error:
                if error.code == 404:
                    return None
                if error.code != 401 or attempt:
                    raise
                self.token = self._new_token()  # tokens expire; runs outlive them
        return None


def peer_role(comm) -> str | None:
    """The role (OU) in the certificate the peer of a TLS comm presented; None without one."""
    certificate = (getattr(comm, "extra_info", None) or {}).get("peercert") or {}
    for attributes in certificate.get("subject", ()):
        for key, value in attributes:
            if key == "organizationalUnitName":
                return value
    return None


def _worker_retiring(role: str | None, message: dict) -> bool:
    """A worker may set one piece of metadata itself: its retirement notice."""
    keys = message.get("keys") or [None]
    return role == "worker" and keys[0] == INTERRUPTED_KEY


# Calls of a client-only handler that a worker's certificate may still make.
WORKER_EXCEPTIONS = {"set_metadata": _worker_retiring}


REFUSED = "refused to a peer with"  # in every refusal's text (burst.tls.refusal reads it)


def only_for(roles: frozenset[str], name: str, handler, also=None):
    """`handler`, callable only by a peer whose certificate has one of `roles` (or for which
    `also(role, message)` holds)."""
    takes_comm = next(iter(inspect.signature(handler).parameters), None) == "comm"
    takes_serializers = "serializers" in inspect.signature(handler).parameters

    async def guarded(comm, serializers=None, **message):
        role = peer_role(comm)
        if role not in roles and not (also and also(role, message)):
            refusal = (
                f"{name}: {REFUSED} a {role or 'missing'} certificate; only "
                f"{' or '.join(sorted(roles))} certificates may act as a Dask client here"
            )
            if name == "register-client":
                # A Client sends register-client without asking a reply and waits for
                # stream-start: without one it would wait out its timeout. A stream-start
                # with an error makes it fail at once with this text.
                with contextlib.suppress(OSError):
                    await comm.write([{"op": "stream-start", "error": refusal}])
            raise PermissionError(refusal)
        if takes_serializers:
            message["serializers"] = serializers
        result = handler(comm, **message) if takes_comm else handler(**message)
        return await result if inspect.isawaitable(result) else result

    guarded.__name__ = f"guarded_{getattr(handler, '__name__', name)}"
    return guarded


def guard_client_handlers(server) -> None:
    """Let only a client's or the driver's certificate call the server's client handlers."""
    for name in CLIENT_ONLY_HANDLERS:
        if name in server.handlers:
            server.handlers[name] = only_for(
                CLIENT_ROLES, name, server.handlers[name], WORKER_EXCEPTIONS.get(name)
            )


def check_versions(expected: dict[str, str]) -> None:
    """Dask needs the same versions everywhere; refuse to join a mismatched cluster."""
    import cloudpickle
    import dask
    import distributed

    found = {
        "python": "{}.{}".format(*sys.version_info[:2]),
        "dask": dask.__version__,
        "distributed": distributed.__version__,
        "cloudpickle": cloudpickle.__version__,
    }
    wrong = {k: (v, found.get(k)) for k, v in expected.items() if found.get(k) != v}
    if wrong:
        details = ", ".join(f"{k} {got} (client has {want})" for k, (want, got) in wrong.items())
        raise RuntimeError(f"version mismatch with the client: {details}")


class Node:
    def __init__(self, args: argparse.Namespace) -> None:
        import boto3
        from botocore.config import Config

        self.args = args
        self.metadata = Metadata()
        self.instance_id = self.metadata.get("meta-data/instance-id") or "unknown"
        self.address = self.metadata.get("meta-data/local-ipv4") or "0.0.0.0"
        region = self.metadata.get("meta-data/placement/region")
        # SSM's parameter reads share 40 per second per account and region: a throttled read
        # is retried with backoff (and client-side rate limiting), never fatal.
        retries = Config(retries={"mode": "adaptive", "max_attempts": 10})
        self.ssm = boto3.client("ssm", region_name=region, config=retries)
        self.region = region
        self.path = f"/burst/{args.cluster_id}"
        self._tls: dict | None = None

    def security(self):
        """This node's own TLS identity: the pair of its role (scheduler or worker), which its
        instance role alone may read."""
        from distributed.security import Security

        role = self.args.role
        tls = self.tls_pair()
        return Security(
            tls_ca_file=tls["ca"],
            require_encryption=True,
            **{f"tls_{role}_cert": tls["cert"], f"tls_{role}_key": tls["key"]},
        )

    def tls_pair(self) -> dict:
        """This node's TLS pair from SSM, read once."""
        if self._tls is None:
            name = f"{self.path}/tls-{self.args.role}"
            secret = self.ssm.get_parameter(Name=name, WithDecryption=True)
            self._tls = json.loads(secret["Parameter"]["Value"])
        return self._tls

    def seconds_left(self) -> float:
        return max(0.0, self.args.deadline - time.time())

    def report_failure(self, message: str) -> None:
        """Tell the client why this node will never join, instead of letting it time out:
        under this node's own aws:userid in the bucket (see FAILED_PREFIX). STS's
        GetCallerIdentity needs no permission and names the userid AWS checks the policy's
        ${aws:userid} against."""
        import boto3

        user_id = boto3.client("sts", region_name=self.region).get_caller_identity()["UserId"]
        boto3.client("s3", region_name=self.region).put_object(
            Bucket=failure_bucket(self.args.cluster_id),
            Key=failure_key(user_id, self.instance_id),
            Body=message[:FAILURE_BYTES].encode(),
        )

    async def scheduler(self) -> None:
        from distributed import Scheduler

        scheduler = Scheduler(
            host=self.address,
            port=self.args.port,
            protocol="tls",
            security=self.security(),
            # The dashboard is plain HTTP without login: on the instance's loopback alone,
            # reached through a tunnel (README, Security).
            dashboard_address=f"127.0.0.1:{self.args.dashboard_port}",
            idle_timeout=self.args.idle_timeout or None,
        )
        guard_client_handlers(scheduler)  # before it listens
        async with scheduler:
            port = scheduler.port
            public = self.metadata.get("meta-data/public-ipv4") or self.address
            dashboard = scheduler.services.get("dashboard")
            self.ssm.put_parameter(
                Name=f"{self.path}/scheduler",
                Type="String",
                Overwrite=True,
                Value=json.dumps(
                    {
                        "private": f"tls://{self.address}:{port}",
                        "public": f"tls://{public}:{port}",
                        "dashboard": f"http://127.0.0.1:{dashboard.port}/status"
                        if dashboard
                        else None,
                        "instance_id": self.instance_id,
                    }
                ),
            )
            alone = asyncio.ensure_future(self._without_client(scheduler))
            try:
                done = await self._until_deadline(scheduler.finished(), alone)
            finally:
                alone.cancel()
            if alone in done and alone.exception() is None:
                # Its workers are told to close too; each then powers its instance off.
                await scheduler.close(reason="no client")

    async def _without_client(self, scheduler) -> None:
        """Returns when no client has been connected for --no-client-timeout seconds: no Dask
        Client (a detached job's driver is one) and no BurstCluster heartbeat, so a client
        killed outright does not leave its cluster billing until the deadline."""
        timeout = self.args.no_client_timeout
        seen, beat = time.monotonic(), None
        while True:
            await asyncio.sleep(min(5.0, timeout / 4))
            clients = [c for c in scheduler.clients if c != "fire-and-forget"]
            latest = scheduler.get_metadata(keys=[HEARTBEAT_KEY], default=None)
            if clients or latest != beat:
                seen, beat = time.monotonic(), latest
            elif time.monotonic() - seen > timeout:
                print(f"no client for {timeout:g}s: shutting the cluster down", flush=True)
                return

    async def worker(self) -> None:
        """A Nanny and its worker process, as `dask worker` starts them: the Nanny sets
        distributed's pre-spawn environment (one OpenMP/BLAS thread per task thread), holds
        the worker to the instance's memory and restarts a worker process that died."""
        from distributed import Nanny

        if self.args.task_user:  # the worker process inherits it (burst.taskrun.task_user)
            import pwd

            pwd.getpwnam(self.args.task_user)  # a missing user fails the node, reported
            os.environ[TASK_USER_VARIABLE] = self.args.task_user
        address = self.args.scheduler or await self._scheduler_address()
        security = self.security()
        await self._until_listening(address, security)
        nthreads = int(os.environ.get("BURST_NODE_VCPUS") or os.cpu_count() or 1)
        # "auto" is the machine's memory; sandbox instances share one host, so the sandbox
        # declares each instance type's memory, as it declares its vCPUs.
        memory = int(os.environ.get("BURST_NODE_MEMORY") or 0) or "auto"
        async with Nanny(
            address,
            nthreads=nthreads,
            name=self.instance_id,
            host=self.address,
            protocol="tls",
            security=security,
            dashboard=False,
            death_timeout=self.args.death_timeout,
            memory_limit=memory,
        ) as nanny:
            watch = asyncio.ensure_future(self._spot_notice())
            try:
                done = await self._until_deadline(nanny.finished(), watch)
                if watch in done and watch.exception() is None:
                    await self._retire(nanny, watch.result())
            finally:
                watch.cancel()

    async def _retire(self, nanny, reason: str) -> None:
        """Hand this worker's data to the others, then leave; the Nanny must not restart it."""
        nanny.close_gracefully(reason=reason)
        with contextlib.suppress(OSError):  # the client reads it to replace the lost cores
            await nanny.scheduler.set_metadata(
                keys=[INTERRUPTED_KEY, self.instance_id],
                value={"reason": reason, "time": time.time()},
            )
        try:
            await nanny.scheduler.retire_workers(
                workers=[nanny.worker_address],
                close_workers=True,
                remove=True,
                stimulus_id=f"{reason}-{time.time()}",
            )
        finally:
            await nanny.close(reason=reason)

    async def _scheduler_address(self) -> str:
        wait = 1.0  # a hundred workers asking every second would be most of SSM's 40/s
        while self.seconds_left() > 0:
            try:
                value = self.ssm.get_parameter(Name=f"{self.path}/scheduler")
                return json.loads(value["Parameter"]["Value"])["private"]
            except self.ssm.exceptions.ParameterNotFound:
                await asyncio.sleep(wait)
                wait = min(3.0, wait * 1.5)
        raise RuntimeError("the deadline passed before the scheduler published its address")

    async def _until_listening(self, address: str, security) -> None:
        """Returns when the scheduler answers a connection (or after --death-timeout, leaving
        the Nanny to fail as it does). The Nanny's own first contact retries with uncapped
        exponential backoff (distributed.comm.core.connect: up to 0.01 s x 2^n), so a worker
        up before its scheduler would wait up to twice the scheduler's boot; here a try every
        0.25 s at most."""
        from distributed.comm import connect

        give_up = time.monotonic() + self.args.death_timeout
        while time.monotonic() < give_up:
            try:
                comm = await connect(
                    address, timeout=0.25, **security.get_connection_args("worker")
                )
            except OSError:  # refused, or not yet there (a TimeoutError is one)
                continue
            await comm.close()
            return

    async def _spot_notice(self) -> str:
        """Returns only when the two-minute interruption notice, or a rebalance
        recommendation (EC2's earlier warning of an elevated risk), is really there."""
        while True:
            for path, reason in NOTICES:
                try:
                    notice = await asyncio.to_thread(self.metadata.get, path)
                except OSError as error:  # a metadata hiccup is not an interruption
                    print(f"metadata unavailable ({error}); still watching", flush=True)
                    notice = None
                if notice is not None:
                    print(f"{reason} notice: retiring this worker", flush=True)
                    return reason
            await asyncio.sleep(SPOT_POLL_SECONDS)

    async def _until_deadline(self, *awaitables) -> set:
        tasks = [asyncio.ensure_future(a) for a in awaitables]
        done, _ = await asyncio.wait(
            tasks, timeout=self.seconds_left(), return_when=asyncio.FIRST_COMPLETED
        )
        if not done:
            print("deadline reached: shutting down", flush=True)
        return done


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="burst-node")
    parser.add_argument("--role", choices=["scheduler", "worker"], required=True)
    parser.add_argument("--cluster-id", required=True)
    parser.add_argument("--deadline", type=float, required=True, help="UNIX time to stop")
    parser.add_argument("--port", type=int, default=8786)
    parser.add_argument("--dashboard-port", type=int, default=8787)
    parser.add_argument("--idle-timeout", type=float, default=1800.0, help="seconds; 0: none")
    parser.add_argument("--no-client-timeout", type=float, default=120.0, help="seconds")
    parser.add_argument("--death-timeout", type=float, default=120.0)
    parser.add_argument("--versions", type=json.loads, default={})
    parser.add_argument("--scheduler", default="", help="tls://ip:port, else read from SSM")
    parser.add_argument(
        "--task-user",
        default="",
        help="run command tasks as this unprivileged user (the boot script makes it on EC2)",
    )
    return parser.parse_args(argv)


def _import_dask() -> None:
    with contextlib.suppress(Exception):
        import cloudpickle  # noqa: F401
        import distributed  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # botocore reads the role's credentials from the metadata service with a 1 s timeout and
    # one attempt by default: too little for a busy instance.
    os.environ.setdefault("AWS_METADATA_SERVICE_TIMEOUT", "5")
    os.environ.setdefault("AWS_METADATA_SERVICE_NUM_ATTEMPTS", "5")
    # Dask's import, about a second of CPU, runs while this thread waits on the metadata
    # service and SSM (check_versions imports again, raising what failed).
    importing = threading.Thread(target=_import_dask, daemon=True)
    importing.start()
    started = time.monotonic()
    node = Node(args)
    try:
        node.tls_pair()
        fetched = time.monotonic() - started
        importing.join()
        check_versions(args.versions)
        # On the console: where a slow boot's seconds went.
        print(
            f"agent: metadata and TLS pair {fetched:.2f}s, "
            f"Dask imported {time.monotonic() - started:.2f}s after start",
            flush=True,
        )
        asyncio.run(node.scheduler() if args.role == "scheduler" else node.worker())
    except Exception as error:
        message = f"{args.role} {node.instance_id}: {type(error).__name__}: {error}"
        print(message, file=sys.stderr, flush=True)
        try:
            node.report_failure(message)
        except Exception as report_error:  # the client still sees the instance power off
            print(f"could not report the failure: {report_error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
