"""How results.jsonl is written: a write per task (flush_seconds=0, the old way) against
batches (the default, FLUSH_SECONDS), for tasks finishing as fast as the client can take
them. Prints JSON: per mode, the lines, the writes to the file and the client's time per task.

    .venv/bin/python scripts/bench_results_log.py --tasks 20000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from burst.results import FLUSH_SECONDS, ResultsLog, TaskOutcome


def outcome(task: int) -> TaskOutcome:
    """A command task's line as the sweeps write them (argv, outputs, digests, tails)."""
    return TaskOutcome(
        task,
        {"seed": task, "temp": 0.5},
        "done",
        {
            "argv": ["python", "simulate.py", "--seed", str(task), "--temp", "0.5"],
            "exit_code": 0,
            "outputs": ["ising.csv"],
            "sha256": {"ising.csv": "0" * 64},
            "stdout_tail": "T 0.5: energy -0.46 magnetisation 0.01\n" * 5,
        },
        worker="tls://10.0.0.12:40123",
        seconds=1.25,
        attempts=1,
        exit_code=0,
        folder=f"outputs/seed={task},temp=0.5",
    )


def measure(tasks: int, flush_seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        log = ResultsLog(Path(tmp) / "job", flush_seconds=flush_seconds)
        lines = [outcome(task) for task in range(tasks)]
        started = time.perf_counter()
        for line in lines:
            log.add(line)
        log.close()
        seconds = time.perf_counter() - started
        written = sum(1 for _ in (Path(tmp) / "job" / "results.jsonl").open())
    return {
        "flush_seconds": flush_seconds,
        "lines": written,
        "writes": log.flushes,
        "seconds": round(seconds, 4),
        "microseconds_per_task": round(seconds / tasks * 1e6, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20000)
    args = parser.parse_args()
    runs = [measure(args.tasks, 0), measure(args.tasks, FLUSH_SECONDS)]
    print(json.dumps({"tasks": args.tasks, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
