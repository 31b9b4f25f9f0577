"""Spot interruptions mid-job are replaced: scripts/drill_spot.py, small, on its own sandbox;
and the node agent's notice watch (interruption and rebalance recommendation), in memory."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from burst import node
from tests.conftest import REPO


@pytest.mark.sandbox  # the drill runs its own sandbox cloud
def test_drill_interrupts_a_third_and_gets_the_cores_back_with_nothing_left(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "drill_spot.py"), "--json", "--cores", "6",
         "--tasks", "90", "--task-seconds", "1", "--at", "0.15"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    assert completed.stdout, completed.stderr[-3000:]
    report = json.loads(completed.stdout)
    assert completed.returncode == 0 and report["passed"], (report, completed.stderr[-3000:])
    assert report["correct"] and report["tasks"]["done"] == 90
    assert report["interrupted"] == report["interrupted_seen"] == report["replaced"] == 1
    assert report["replacement_instances"] >= 1
    assert report["seconds_until_cores_back"] > 0
    assert float(report["replacement_cost"]) > 0  # billed: at least a minute of its price
    assert report["leftovers"] == [] and report["teardown_verified"]


class _Metadata:
    """What the instance metadata service answers: a path's value, or None (404)."""

    def __init__(self, values: dict[str, str]):
        self.values = values
        self.asked: list[str] = []

    def get(self, path: str) -> str | None:
        self.asked.append(path)
        return self.values.get(path)


@pytest.mark.parametrize(("path", "reason"), [
    (node.SPOT_NOTICE, "spot interruption"),
    (node.REBALANCE_NOTICE, "rebalance recommendation"),
])
def test_the_node_retires_on_an_interruption_notice_or_a_rebalance_recommendation(
        monkeypatch, path, reason):
    monkeypatch.setattr(node, "SPOT_POLL_SECONDS", 0.01)
    agent = node.Node.__new__(node.Node)  # no metadata service or SSM needed here
    agent.metadata = _Metadata({path: '{"action": "terminate"}'})
    assert asyncio.run(asyncio.wait_for(agent._spot_notice(), 5)) == reason


def test_the_node_keeps_watching_while_there_is_no_notice(monkeypatch):
    monkeypatch.setattr(node, "SPOT_POLL_SECONDS", 0.01)
    agent = node.Node.__new__(node.Node)
    agent.metadata = _Metadata({})
    with pytest.raises(TimeoutError):
        asyncio.run(asyncio.wait_for(agent._spot_notice(), 0.2))
    assert {node.SPOT_NOTICE, node.REBALANCE_NOTICE} <= set(agent.metadata.asked)
    assert len(agent.metadata.asked) > 4  # asked again and again
