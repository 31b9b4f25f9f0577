"""Nodes boot through SSM throttling (issue 10): the boot benchmark, run small, with an SSM
read bucket far below AWS's 40/s, still has every worker join and no failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.sandbox  # the benchmark starts its own sandbox


def test_workers_join_through_ssm_throttling(tmp_path):
    env = {**os.environ, "BURST_SANDBOX_LIMITS": "ssm.read=3/1", "BURST_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_boot.py"), "--instances", "2", "--json"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["failures"] == [] and result["workers_joined"] == 2, result["failures"]
    assert result["throttled_by_bucket"]["ssm.read"] > 0  # throttled, retried, joined
    assert result["ssm_reads_by_nodes"] >= 3  # every node read its TLS at least
