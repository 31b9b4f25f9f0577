"""How N workers boot on the sandbox with AWS's limits on (issue 10).

Starts a sandbox in this process (so its limits' counters can be read), boots a BurstCluster
of N worker instances through burst's real path, and prints: seconds until every worker
joined (and burst's stage timings), the SSM calls the nodes made (per node), those the client
made, the calls throttled (and retried) by bucket, and failures. The sandbox's limits are
AWS's defaults unless BURST_SANDBOX_LIMITS says otherwise (e.g. `ssm.read=10/10` to see the
nodes survive throttling).

    .venv/bin/python scripts/bench_boot.py --instances 20 --json

Each sandbox worker is a real process (a Nanny and its worker), so N is bounded by this
machine's memory: about 150 MB per worker.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=20, help="worker instances")
    parser.add_argument("--instance-type", default="c5.large")
    parser.add_argument("--json", action="store_true", help="print the JSON object only")
    args = parser.parse_args(argv)

    import burst
    from burst.catalog import SNAPSHOT
    from burst.cloud.limits import SSM_READS
    from burst.cloud.sandbox import Sandbox
    from burst.errors import BurstError

    vcpus = SNAPSHOT[args.instance_type].vcpus
    out: dict[str, Any] = {
        "instances": args.instances,
        "instance_type": args.instance_type,
        "limits": os.environ.get("BURST_SANDBOX_LIMITS") or "AWS's defaults",
        "loadavg_before": [round(v, 2) for v in os.getloadavg()],
    }
    with tempfile.TemporaryDirectory(prefix="burst-boot-") as tmp:
        os.environ["BURST_HOME"] = str(Path(tmp) / "home")
        with Sandbox(Path(tmp) / "sandbox") as cloud:
            cloud.publish()
            started = time.monotonic()
            try:
                with burst.BurstCluster(
                    cores=args.instances * vcpus,
                    max_runtime="30m",
                    instance_types=[args.instance_type],
                    max_pool_share=1.0,
                    boot_timeout=1800,
                    quiet=True,
                ) as cluster:
                    out["seconds_until_all_joined"] = round(time.monotonic() - started, 1)
                    out["workers_joined"] = len(cluster.scheduler_info["workers"])
                    out["stages"] = {k: round(v, 1) for k, v in cluster.timings.items()}
                out["failures"] = []
            except BurstError as error:
                out["failures"] = [str(error)]
            calls = cloud.limits.calls
            nodes = args.instances + 1  # the scheduler too
            node_reads = sum(
                n
                for (svc, op, who), n in calls.items()
                if svc == "ssm" and op in SSM_READS and who == "node"
            )
            out["ssm_reads_by_nodes"] = node_reads
            out["ssm_reads_per_node"] = round(node_reads / nodes, 2)
            out["ssm_reads_by_client"] = sum(
                n
                for (svc, op, who), n in calls.items()
                if svc == "ssm" and op in SSM_READS and who == "client"
            )
            out["ec2_calls_by_client"] = sum(
                n for (svc, _, who), n in calls.items() if svc == "ec2" and who == "client"
            )
            out["throttled_by_bucket"] = dict(cloud.limits.throttled)
    out["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(out, indent=2) if args.json else out)
    return 0 if not out["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
