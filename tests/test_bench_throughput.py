"""scripts/bench_throughput.py runs, small, and reports every figure with the machine's load."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.sandbox  # the script runs its own sandbox cloud


def test_bench_throughput_reports_burst_and_local_figures_as_json(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_throughput.py"), "--json",
         "--cores", "4", "--instance-type", "c5.large", "--tasks", "100",
         "--size", "400", "--chunk", "200"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = json.loads(completed.stdout)
    assert out["params"]["workers"] == "2 x 2 threads"  # the same shapes on both sides
    assert out["params"]["matmul"] == "400x400 float64, chunks 200"
    for side in ("burst", "local"):
        assert out[side]["map"] > 0 and out[side]["matmul"] > 0
    assert out["burst"]["run_stage"] > 0
    assert set(out["burst_over_local"]) == {"map", "matmul", "run_stage_vs_local_map"}
    assert out["burst_over_local"]["map"] == round(out["burst"]["map"] / out["local"]["map"], 2)
    assert len(out["machine"]["loadavg_before"]) == len(out["machine"]["loadavg_after"]) == 3
    assert list(tmp_path.iterdir()) == []  # nothing left where it ran
