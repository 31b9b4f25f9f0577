"""How many cloud calls it takes to provision and tear down N cores, and how long.

Runs burst's real provisioning code (plan, network, role, secret, scheduler, launch template,
EC2 Fleet, verified teardown) against the sandbox's control plane, moto's server in this
process behind the sandbox's AWS limits (request rates, launch bucket; the vCPU quotas raised
to what the run needs, as for an account whose quota request was granted), without booting
nodes. Counts every EC2 call by operation; mutating calls are all but Describe*/Get*, and the
calls the limits throttled. Prints one JSON object on stdout.

    .venv/bin/python scripts/bench_provision.py --cores 10000 --json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from burst import tls
from burst.cloud import sandbox
from burst.cloud.aws import AwsProvider
from burst.cloud.base import ClusterIdentity
from burst.plan import plan
from burst.provision import acquire_workers
from burst.spec import parse_spec


def _mutating(operation: str) -> bool:
    return not operation.startswith(("Describe", "Get", "List"))


def measure(
    cores: int, spot: str = "spot", instance_types: list[str] | None = None
) -> dict[str, Any]:
    """Provision `cores` and tear them down; return the calls and seconds of each phase."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    keys = sandbox._new_keys("AKIA")
    server, limits = sandbox._guarded_moto_server([keys])
    limits.quotas = {code: max(value, cores + 64.0) for code, value in limits.quotas.items()}
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    host, port = server.server_address[:2]
    endpoint = f"http://{host}:{port}"
    try:
        calls: dict[str, Counter] = {"provision": Counter(), "teardown": Counter()}
        phase = "provision"
        session = sandbox.session(keys)
        sandbox.create_boundary(session.client("iam", endpoint_url=endpoint))
        session.events.register(
            "before-call.ec2", lambda model, **kw: calls[phase].update([model.name])
        )
        fields = {
            "name": "bench",
            "cores": cores,
            "max_runtime": "1h",
            "spot": spot,
            "run": {"function": "bench:task", "tasks": [1]},
        }
        if instance_types:
            fields["instance_types"] = instance_types
        spec = parse_spec(fields)
        capacity_plan = plan(spec)
        provider = AwsProvider(session, spec.region, endpoint)
        deadline = datetime.now(UTC) + timedelta(hours=1)
        ident = ClusterIdentity(f"bench{cores}", "bench", deadline)
        started = time.monotonic()
        credentials = tls.issue(ident.cluster_id, timedelta(hours=1))
        zones = sorted({line.zone for line in capacity_plan.lines})
        env = provider.prepare(ident, zones, "127.0.0.1/32", credentials.node_bundle())
        scheduler = next(line for line in capacity_plan.lines if line.role == "scheduler")
        provider.launch_instance(ident, env, scheduler, "#!/bin/sh\n")
        template = provider.launch_template(ident, env, "#!/bin/sh\n", spec.architecture)
        got = acquire_workers(provider, ident, env, template, capacity_plan, spec)
        provision_seconds = time.monotonic() - started
        phase = "teardown"
        started = time.monotonic()
        report = provider.teardown(ident, wait=60)
        teardown_seconds = time.monotonic() - started
        instances = len(got.records)
        return {
            "cores_requested": cores,
            "cores_launched": got.cores,
            "instances": instances + 1,
            "worker_pools_planned": [
                {"type": w.instance_type, "zone": w.zone, "market": w.market, "count": w.count}
                for w in capacity_plan.workers
            ],
            "fleets": calls["provision"]["CreateFleet"],
            "provision": _phase(calls["provision"], provision_seconds),
            "teardown": _phase(calls["teardown"], teardown_seconds),
            "teardown_verified": report.verified,
            "throttled": dict(limits.throttled),
            # What other tools would send for the same workers (from their launch loops).
            "others_mutating_calls_to_launch": {
                "one run_instances per worker (dask-cloudprovider EC2Cluster)": instances,
                "run_instances in batches of 5 (Ray autoscaler)": math.ceil(instances / 5),
                "one create_tags per node after launch (SkyPilot)": instances,
            },
        }
    finally:
        server.shutdown()
        serving.join()


def _phase(calls: Counter, seconds: float) -> dict[str, Any]:
    return {
        "ec2_calls": dict(sorted(calls.items())),
        "ec2_calls_total": sum(calls.values()),
        "ec2_mutating_calls": sum(n for op, n in calls.items() if _mutating(op)),
        "seconds": round(seconds, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=10_000)
    parser.add_argument(
        "--spot", default="spot", choices=["spot", "spot-with-fallback", "on-demand"]
    )
    parser.add_argument("--instance-types", nargs="*", help="families or types to plan with")
    parser.add_argument("--json", action="store_true", help="one line of JSON")
    args = parser.parse_args()
    result = measure(args.cores, args.spot, args.instance_types)
    print(json.dumps(result, indent=None if args.json else 2))
    ok = result["teardown_verified"] and result["cores_launched"] >= args.cores
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
