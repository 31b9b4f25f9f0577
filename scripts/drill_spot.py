"""Spot interruption drill: a third of the workers interrupted mid-job, replaced, job correct.

Runs a job through `burst.run` on a sandbox cloud started in this process (so the drill can
reach its hypervisor), and once a share of the tasks is done, posts a spot interruption notice
(`Hypervisor.interrupt`) to a third of the workers. Each retires gracefully; burst launches
replacement capacity without the interrupted pools. Prints (with `--json`, as one JSON
object) whether the result is right, how many workers were interrupted and replaced, the
seconds until the cores were back to the target, what the replacements cost, and what was
left in the cloud afterwards (it must be nothing). Exit 0 when all of that holds.

    .venv/bin/python scripts/drill_spot.py --json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

JOB_CODE = '''
import time

def work(x):
    time.sleep({seconds})
    return x * x

def total(results):
    return sum(results)
'''


def log(message: str) -> None:
    print(f"[drill] {message}", file=sys.stderr, flush=True)


def leftovers(cloud, cluster_id: str, region: str) -> list[str]:
    """What of the cluster still exists, asked of the sandbox directly (not through burst)."""
    ec2 = cloud.session().client("ec2", region_name=region, endpoint_url=cloud.endpoint)
    tag = [{"Name": "tag:burst:cluster", "Values": [cluster_id]}]
    live = [{"Name": "instance-state-name",
             "Values": ["pending", "running", "stopping", "stopped", "shutting-down"]}]  # fmt: skip
    found = [
        f"instance {i['InstanceId']}"
        for r in ec2.describe_instances(Filters=tag + live)["Reservations"]
        for i in r["Instances"]
    ]
    ours = {
        i["InstanceId"]
        for r in ec2.describe_instances(Filters=tag)["Reservations"]
        for i in r["Instances"]
    }
    found += [
        f"process of {i}"
        for i, inst in cloud.hypervisor.instances.items()
        if i in ours and inst.process and inst.process.poll() is None
    ]
    return found


def drill(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    import burst
    from burst import events
    from burst.cloud.sandbox import Sandbox

    (folder / "drill.py").write_text(JOB_CODE.format(seconds=args.task_seconds))
    os.environ["BURST_HOME"] = str(folder / "home")
    # Nodes look for the notice this often (the hypervisor passes it on to the instances).
    os.environ["BURST_SPOT_POLL_SECONDS"] = "0.5"
    clusters: list[Any] = []
    interrupted: list[str] = []
    fired = threading.Event()
    with Sandbox(folder / "sandbox") as cloud:
        cloud.publish()

        def interrupt_a_third(event: events.Event) -> None:
            if isinstance(event, events.Planned):
                clusters.append(event.cluster)
            if (
                isinstance(event, events.TasksProgress)
                and not fired.is_set()
                and event.done >= args.tasks * args.at
            ):
                fired.set()
                workers = sorted(clusters[-1].workers)
                victims = workers[: max(1, len(workers) // 3)]
                log(f"{event.done} tasks done: interrupting {len(victims)} of {len(workers)}")
                for victim in victims:
                    cloud.hypervisor.interrupt(victim, notice_seconds=args.notice)
                interrupted.extend(victims)

        started = time.monotonic()
        result = burst.run(
            {
                "name": "drill",
                "cores": args.cores,
                "max_runtime": "20m",
                "instance_types": [args.instance_type],
                "spot": "spot-with-fallback",
                "max_pool_share": 1.0,
                "outputs": "results",  # relative: under folder, the cwd
                "run": {
                    "function": "drill:work",
                    "tasks": {"range": args.tasks},
                    "reduce": "drill:total",
                },
            },
            on_event=interrupt_a_third,
            folder=folder,
        )
        wall = time.monotonic() - started
        manifest = result.manifest
        cluster_id = manifest["cluster_id"]
        left = leftovers(cloud, cluster_id, "us-east-1")
    elastic = manifest["elasticity"]
    replaced = {i["instance_id"] for i in elastic["interruptions"] if i["replaced_by"] is not None}
    back = [r["seconds_to_rejoin"] for r in elastic["replacements"]]
    expected = sum(x * x for x in range(args.tasks))
    report = {
        "correct": result.status == "succeeded" and result.result == expected,
        "status": result.status,
        "tasks": manifest["tasks"],
        "cores": args.cores,
        "interrupted": len(interrupted),
        "interrupted_seen": len(elastic["interruptions"]),
        "replaced": len(replaced & set(interrupted)),
        "replacement_instances": sum(len(r["instances"]) for r in elastic["replacements"]),
        "replacement_pools": sorted({p for r in elastic["replacements"] for p in r["pools"]}),
        "seconds_until_cores_back": max(back) if back and None not in back else None,
        "replacement_cost": elastic["replacement_cost"],
        "cost": manifest["cost"]["actual"],
        "leftovers": sorted(set(left) | set(manifest["teardown"]["leftovers"])),
        "teardown_verified": manifest["teardown"]["verified"],
        "wall_seconds": round(wall, 1),
        "loadavg": [round(v, 2) for v in os.getloadavg()],
    }
    report["passed"] = (
        report["correct"]
        and report["interrupted"] > 0
        and report["replaced"] == report["interrupted"]
        and report["seconds_until_cores_back"] is not None
        and not report["leftovers"]
        and report["teardown_verified"]
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--cores", type=int, default=12)
    parser.add_argument("--instance-type", default="c5.large")
    parser.add_argument("--tasks", type=int, default=240)
    parser.add_argument("--task-seconds", type=float, default=1.0)
    parser.add_argument("--at", type=float, default=0.2, help="share of tasks done first")
    parser.add_argument("--notice", type=float, default=30.0, help="seconds until terminated")
    args = parser.parse_args(argv)
    if not 0 < args.at < 1 or args.tasks < 1 or not math.isfinite(args.task_seconds):
        parser.error("--at must be in (0, 1) and --tasks at least 1")
    here = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="burst-drill-") as tmp:
        os.chdir(tmp)  # burst.run's results folder is relative to where it runs
        try:
            report = drill(args, Path(tmp))
        finally:
            os.chdir(here)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:26} {value}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
