"""Throughput of a BurstCluster against a LocalCluster of the same worker shapes.

On one sandbox cloud (started in this process, so both burst measurements share it warm):

- **map**: `client.map(math.sqrt, range(N))` gathered, tiny tasks (scheduler overhead);
- **matmul**: `(x @ x.T).sum()` of a `dask.array` of SIZE x SIZE float64 in CHUNK chunks
  (BLAS work: where one BLAS thread per task thread matters);
- **run**: `burst.run` of N tiny tasks (`math:sqrt`): the manifest's run stage, against the
  LocalCluster's `client.map` of the same N tasks.

The LocalCluster has one worker process (under a Nanny) per burst worker instance and one
thread per vCPU. Prints one JSON object on stdout (with `--json`, else a short table) with
each figure, the ratios and the machine's load average before and after; progress on stderr.

    .venv/bin/python scripts/bench_throughput.py --json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def tiny_map(client, tasks: int) -> None:
    futures = client.map(math.sqrt, range(tasks), pure=False)
    results = client.gather(futures)
    if results[-1] != math.sqrt(tasks - 1):
        raise SystemExit("map gave a wrong result")


def matmul(client, size: int, chunk: int) -> None:
    import dask.array as da

    x = da.random.RandomState(0).random((size, size), chunks=chunk)
    total = client.compute((x @ x.T).sum()).result()
    if not math.isfinite(total) or total <= 0:
        raise SystemExit("matmul gave a wrong result")


def measure(client, args: argparse.Namespace) -> dict[str, float]:
    client.submit(math.sqrt, 4, pure=False).result()  # connections made, code loaded
    figures = {"map": [], "matmul": []}
    for _ in range(args.repeat):
        figures["map"].append(timed(lambda: tiny_map(client, args.tasks)))
        figures["matmul"].append(timed(lambda: matmul(client, args.size, args.chunk)))
    return {k: round(statistics.median(v), 3) for k, v in figures.items()}


def shape(cluster) -> tuple[int, int]:
    """(workers, threads per worker) of a cluster whose workers are all alike."""
    threads = {w["nthreads"] for w in cluster.scheduler_info["workers"].values()}
    if len(threads) != 1:
        raise SystemExit(f"workers of different sizes: {threads}")
    return len(cluster.scheduler_info["workers"]), threads.pop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the JSON object only")
    parser.add_argument("--cores", type=int, default=8)
    parser.add_argument("--instance-type", default="c5.xlarge")
    parser.add_argument("--tasks", type=int, default=2000, help="tiny tasks (map and run)")
    parser.add_argument("--size", type=int, default=4000, help="matmul: SIZE x SIZE")
    parser.add_argument("--chunk", type=int, default=500, help="matmul: chunk side")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--skip-run", action="store_true", help="no `burst run` figure")
    args = parser.parse_args(argv)

    import dask
    from distributed import Client, LocalCluster

    import burst
    from burst.cloud.sandbox import NODE_DASK_CONFIG, Sandbox

    load_before = os.getloadavg()
    out: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "loadavg_before": [round(v, 2) for v in load_before]},
        "params": {
            "cores": args.cores,
            "instance_type": args.instance_type,
            "tasks": args.tasks,
            "matmul": f"{args.size}x{args.size} float64, chunks {args.chunk}",
            "repeat": args.repeat,
        },
    }
    here = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="burst-throughput-") as tmp:
        os.environ["BURST_HOME"] = str(Path(tmp) / "home")
        os.chdir(tmp)  # burst.run's results folder is relative to where it runs
        with Sandbox(Path(tmp) / "sandbox") as cloud:
            cloud.publish()
            log(f"BurstCluster: {args.cores} cores of {args.instance_type}")
            with burst.BurstCluster(
                cores=args.cores,
                max_runtime="30m",
                instance_types=[args.instance_type],
                max_pool_share=1.0,
                quiet=True,
            ) as cluster, Client(cluster) as client:
                workers, threads = shape(cluster)
                out["burst"] = measure(client, args)
            log(f"burst: {out['burst']}; LocalCluster: {workers} workers x {threads} threads")
            with dask.config.set(NODE_DASK_CONFIG), LocalCluster(
                n_workers=workers, threads_per_worker=threads, dashboard_address=None
            ) as local, Client(local) as client:
                out["local"] = measure(client, args)
            log(f"local: {out['local']}")
            out["params"]["workers"] = f"{workers} x {threads} threads"
            if not args.skip_run:
                runs = []
                for _ in range(args.repeat):
                    result = burst.run(
                        {
                            "name": "throughput",
                            "cores": args.cores,
                            "max_runtime": "30m",
                            "instance_types": [args.instance_type],
                            "max_pool_share": 1.0,
                            "outputs": "results",  # relative: under tmp, the cwd
                            "run": {
                                "function": "math:sqrt",
                                "allow_any_module": True,  # math is not a job-folder module
                                "tasks": {"range": args.tasks},
                            },
                        },
                        folder=tmp,
                    )
                    if result.status != "succeeded" or len(result.results) != args.tasks:
                        raise SystemExit(f"burst run ended {result.status}")
                    runs.append(result.timings["run"])
                out["burst"]["run_stage"] = round(statistics.median(runs), 3)
                log(f"burst run stage: {out['burst']['run_stage']}s")
        os.chdir(here)
    ratios = {
        "map": out["burst"]["map"] / out["local"]["map"],
        "matmul": out["burst"]["matmul"] / out["local"]["matmul"],
    }
    if "run_stage" in out["burst"]:
        ratios["run_stage_vs_local_map"] = out["burst"]["run_stage"] / out["local"]["map"]
    out["burst_over_local"] = {k: round(v, 2) for k, v in ratios.items()}
    out["machine"]["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for key in ("map", "matmul"):
            print(f"{key:8} burst {out['burst'][key]:8.3f}s  local {out['local'][key]:8.3f}s")
        if "run_stage" in out["burst"]:
            print(f"run      burst {out['burst']['run_stage']:8.3f}s  (vs local map)")
        print(f"ratios   {out['burst_over_local']}; load {out['machine']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
