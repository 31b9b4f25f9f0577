"""Measure what burst costs over a plain Dask LocalCluster for the same job.

Runs `burst run jobs/pi.yaml --json` N times (each with a private sandbox cloud in a fresh
BURST_HOME, or with `--warm` all on one sandbox started before by `burst sandbox up`, from a
temporary copy of jobs/ so no results land in the repo), then runs the
same computation N times on a `distributed.LocalCluster` shaped like burst's workers (one
worker process per worker instance, one thread per vCPU). Prints one JSON object on stdout;
progress goes to stderr.

    .venv/bin/python scripts/bench_overhead.py --repeat 3
    .venv/bin/python scripts/bench_overhead.py --repeat 3 --warm
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
JOBS = REPO / "jobs"
SPEC = "jobs/pi.yaml"
TASKS = 200
STAGES = ("plan", "connect", "provision", "bootstrap", "run", "collect", "teardown")


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


BURST = Path(sys.executable).parent / "burst"


def run_burst_once(
    index: int, repeat: int, warm_home: Path | None = None
) -> tuple[float, dict[str, Any]]:
    """One whole `burst run` in a throwaway working folder, with a private BURST_HOME (so a
    private sandbox) or `warm_home`, whose sandbox is already up."""
    burst = BURST
    with tempfile.TemporaryDirectory(prefix="burst-bench-") as tmp:
        home = warm_home or Path(tmp) / "home"
        work = Path(tmp) / "work"
        home.mkdir(exist_ok=True)
        shutil.copytree(JOBS, work / "jobs", ignore=shutil.ignore_patterns("__pycache__"))
        env = {**os.environ, "BURST_HOME": str(home)}
        log(f"burst run {index}/{repeat} (BURST_HOME={home}, cwd={work})")
        started = time.perf_counter()
        completed = subprocess.run(
            [str(burst), "run", SPEC, "--json"],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=None,  # burst's progress passes through to our stderr
            text=True,
            check=False,
        )
        wall = time.perf_counter() - started
    if completed.returncode != 0:
        log(f"burst exited with {completed.returncode}; stdout was:\n{completed.stdout}")
        raise SystemExit(f"burst run {index} failed (exit {completed.returncode})")
    manifest: dict[str, Any] = json.loads(completed.stdout)
    if manifest.get("status") != "succeeded":
        raise SystemExit(f"burst run {index} ended with status {manifest.get('status')!r}")
    log(f"burst run {index}: {wall:.2f}s wall, stages {manifest['timings']}")
    return wall, manifest


def worker_shape(manifest: dict[str, Any]) -> tuple[int, int]:
    """(workers, threads per worker) as burst ran them: one per instance, nthreads = vCPUs."""
    vcpus = [i["vcpus"] for i in manifest["instances"] if i["role"] == "worker"]
    if not vcpus:
        raise SystemExit("the burst manifest lists no worker instances")
    counts = Counter(vcpus)
    if len(counts) > 1:
        log(f"workers have mixed vCPUs {dict(counts)}; using the most common")
    return len(vcpus), counts.most_common(1)[0][0]


def run_local_once(
    index: int, repeat: int, workers: int, threads: int
) -> tuple[dict[str, float], Any]:
    """Start a LocalCluster, map pi.sample over the tasks, reduce, close; time each part."""
    import cloudpickle
    import dask
    import pi  # from jobs/, put on sys.path by main()
    from distributed import Client, LocalCluster

    from burst.cloud.sandbox import NODE_DASK_CONFIG

    # Ship the job module by value, as burst does: the workers need no copy of it.
    cloudpickle.register_pickle_by_value(pi)
    log(f"local cluster run {index}/{repeat} ({workers} workers x {threads} threads)")
    started = time.perf_counter()
    with dask.config.set(NODE_DASK_CONFIG):  # the Dask settings the sandbox's nodes run
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=threads,
            processes=True,
            dashboard_address=":0",
        )
    client = Client(cluster)
    client.wait_for_workers(workers)
    start = time.perf_counter() - started

    started = time.perf_counter()
    futures = client.map(pi.sample, range(TASKS), pure=False)
    result = pi.estimate(client.gather(futures))
    compute = time.perf_counter() - started

    started = time.perf_counter()
    client.close()
    cluster.close()
    close = time.perf_counter() - started

    times = {"start": start, "compute": compute, "close": close, "wall": start + compute + close}
    log(f"local cluster run {index}: " + ", ".join(f"{k} {v:.2f}s" for k, v in times.items()))
    return times, result


def run_local_process_once(index: int, repeat: int, workers: int, threads: int) -> float:
    """run_local_once as a user's own script runs it: in a fresh interpreter that imports Dask,
    starts the LocalCluster, maps, reduces and exits (a process of its own, like `burst run`)."""
    log(f"local cluster in a fresh process {index}/{repeat}")
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, __file__, "--local-child", str(workers), str(threads)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - started
    log(f"local cluster in a fresh process {index}: {wall:.2f}s")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (default 3)")
    parser.add_argument("--json", action="store_true", help="print JSON (the default anyway)")
    parser.add_argument("--warm", action="store_true", help="runs share a sandbox already up")
    parser.add_argument("--local-child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    sys.path.insert(0, str(JOBS))
    if args.local_child:  # run_local_process_once's fresh interpreter
        run_local_once(1, 1, *args.local_child)
        return

    burst_walls: list[float] = []
    manifests: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="burst-bench-home-") as warm:
        home = Path(warm) if args.warm else None
        env = {**os.environ, "BURST_HOME": warm}
        if home:
            subprocess.run([str(BURST), "sandbox", "up"], env=env, check=True, stdout=sys.stderr)
        try:
            for i in range(1, args.repeat + 1):
                wall, manifest = run_burst_once(i, args.repeat, home)
                burst_walls.append(wall)
                manifests.append(manifest)
        finally:
            if home:
                subprocess.run(
                    [str(BURST), "sandbox", "down"], env=env, check=False, stdout=sys.stderr
                )
    workers, threads = worker_shape(manifests[0])
    if any(worker_shape(m) != (workers, threads) for m in manifests[1:]):
        log("the burst runs had different worker shapes; the local cluster uses the first")

    local: dict[str, list[float]] = {"start": [], "compute": [], "close": [], "wall": []}
    for i in range(1, args.repeat + 1):
        times, result = run_local_once(i, args.repeat, workers, threads)
        for key, value in times.items():
            local[key].append(value)
        if result != manifests[0]["result"]:
            log(f"local result {result} differs from burst's {manifests[0]['result']}")

    fresh = [run_local_process_once(i, args.repeat, workers, threads)
             for i in range(1, args.repeat + 1)]  # fmt: skip

    burst_median = statistics.median(burst_walls)
    local_median = statistics.median(local["wall"])
    report = {
        "sandbox": "up before the runs (--warm)" if args.warm else "private, per run (cold)",
        "burst": {
            "wall_seconds": [round(w, 3) for w in burst_walls],
            "median": round(burst_median, 3),
            "stage_medians": {
                stage: median([m["timings"][stage] for m in manifests if stage in m["timings"]])
                for stage in STAGES
                if any(stage in m["timings"] for m in manifests)
            },
        },
        "local_cluster": {
            "wall_seconds": [round(w, 3) for w in local["wall"]],
            "median": round(local_median, 3),
            "start": median(local["start"]),
            "compute": median(local["compute"]),
            "close": median(local["close"]),
        },
        # In this process, after the first run: Dask already imported, the workers not.
        "ratio_median": round(burst_median / local_median, 2),
        "local_cluster_fresh_process": {
            "wall_seconds": [round(w, 3) for w in fresh],
            "median": median(fresh),
        },
        "ratio_median_fresh_process": round(burst_median / statistics.median(fresh), 2),
        "workers": workers,
        "threads_per_worker": threads,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
