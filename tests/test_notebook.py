"""The notebook user's API: burst.run -> JobResult, and the quickstart notebook, executed."""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

import burst
from burst.runner import JobResult, TaskOutcome
from tests.conftest import REPO, cluster_ids, settled_leftovers


def test_run_a_dict_spec_gives_results_failures_cost_timings_and_a_dataframe(
    sandbox, tmp_path, monkeypatch
):
    pandas = pytest.importorskip("pandas")
    (tmp_path / "squares.py").write_text(textwrap.dedent("""
        def task(x):
            if x == 3:
                raise ValueError("three is unlucky")
            return {"x": x, "square": x * x}
        """))
    monkeypatch.chdir(tmp_path)  # the results folder is relative to where burst runs
    result = burst.run(
        {
            "name": "squares",
            "cores": 2,
            "max_runtime": "5m",
            "instance_types": ["c5.large"],
            "run": {"function": "squares:task", "tasks": [1, 2, 3, 4], "retries": 0},
        },
        folder=tmp_path,
    )
    assert isinstance(result, JobResult)
    assert result.status == "failed" and not result.ok
    assert result.results == [{"x": x, "square": x * x} for x in (1, 2, 4)]
    assert [(f.task, f.input) for f in result.failures] == [(2, 3)]
    assert "ValueError: three is unlucky" in result.failures[0].error
    assert result.manifest["tasks"] == {"total": 4, "done": 3, "failed": 1, "retried": 0}
    assert result.folder == Path("results") / result.job_id
    assert json.loads((tmp_path / result.folder / "manifest.json").read_text()) == result.manifest

    assert list(result.timings) == [
        "plan", "connect", "provision", "bootstrap", "run", "collect", "teardown"
    ]
    assert result.timings == result.manifest["timings"]
    cost = result.cost
    assert cost["price_source"] == result.manifest["plan"]["price_source"]
    assert cost["planned_hourly"] == Decimal(result.manifest["plan"]["hourly"]) > 0
    assert cost["hourly"] > 0 and cost["complete"]
    assert 0 < cost["actual"] <= cost["bound"] == Decimal(result.manifest["plan"]["cost_bound"])

    frame = result.to_dataframe()
    assert isinstance(frame, pandas.DataFrame)
    assert list(frame.index) == [0, 1, 2, 3]
    assert list(frame["status"]) == ["done", "done", "failed", "done"]
    assert list(frame["input"]) == [1, 2, 3, 4]
    assert frame.loc[3, "result.square"] == 16 and frame.loc[0, "result.x"] == 1
    assert "three is unlucky" in frame.loc[2, "error"]
    workers = {i["instance_id"] for i in result.manifest["instances"] if i["role"] == "worker"}
    assert set(frame.loc[frame["status"] == "done", "worker"]) <= workers
    assert "failed" in result._repr_html_() and result.job_id in result._repr_html_()
    assert settled_leftovers(sandbox, result.manifest["cluster_id"]) == []


def test_cost_reads_the_manifest_as_decimals():
    manifest = {
        "cost": {"actual": "0.1234", "actual_complete": True, "still_running": 0,
                 "planned_hourly": "0.5", "launched_hourly": "0.6", "cost_bound": "0.75",
                 "price_source": "snapshot", "billing": "per second, 60 s minimum"},
    }
    cost = JobResult("j", "succeeded", Path("."), manifest).cost
    assert cost["actual"] == Decimal("0.1234") and cost["bound"] == Decimal("0.75")
    assert cost["hourly"] == Decimal("0.6") and cost["planned_hourly"] == Decimal("0.5")
    assert JobResult("j", "error", Path("."), {}).cost == {}


def test_to_dataframe_without_pandas_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    result = JobResult("j", "succeeded", Path("."), {}, [TaskOutcome(0, 0, "done", 1)])
    with pytest.raises(ImportError, match=r"pip install pandas"):
        result.to_dataframe()
    assert result.results == [1]


def test_cluster_refuses_a_positional_core_count_and_async_use():
    with pytest.raises(TypeError, match="cores=8"):
        burst.BurstCluster(8)
    # asynchronous=True belongs in a coroutine (`async with`): refused outside one, before
    # any plan or cloud call.
    with pytest.raises(TypeError, match="asynchronous=True needs a running event loop"):
        burst.BurstCluster(cores=2, asynchronous=True)


def _kernel(tmp_path: Path, monkeypatch) -> str:
    """A kernelspec for this very interpreter, so the notebook runs in the test's venv."""
    spec = tmp_path / "jupyter" / "kernels" / "burst-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "burst test",
        "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return "burst-test"


def _text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            parts.append(output["text"])
        elif "data" in output:
            parts.append(output["data"].get("text/plain", ""))
    return "".join(parts)


def test_quickstart_notebook_executes_top_to_bottom(sandbox, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    source = REPO / "notebooks" / "quickstart.ipynb"
    notebook = nbformat.read(source, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
        "commit the notebook with its outputs cleared"
    )
    # A copy of the repository's layout, so that results/ lands in tmp_path.
    shutil.copytree(REPO / "jobs", tmp_path / "jobs")
    (tmp_path / "notebooks").mkdir()
    # The kernel inherits BURST_HOME from the session sandbox, so it uses that sandbox.
    before = cluster_ids(sandbox)
    nbclient.NotebookClient(
        notebook,
        kernel_name=_kernel(tmp_path, monkeypatch),
        timeout=600,
        resources={"metadata": {"path": str(tmp_path / "notebooks")}},
    ).execute()

    text = "\n".join(_text(cell) for cell in notebook.cells if cell.cell_type == "code")
    assert "status: succeeded" in text
    pi = float(re.search(r"pi estimate: ([\d.]+) from 400,000 darts", text).group(1))
    assert abs(pi - math.pi) < 0.02
    assert "20 results, 0 failures" in text
    mapped = float(re.search(r"client.map pi estimate: ([\d.]+)", text).group(1))
    assert abs(mapped - math.pi) < 0.05
    mean = float(re.search(r"dask.array mean: ([\d.]+) over 16 chunks", text).group(1))
    assert abs(mean - 0.5) < 0.01
    assert "job teardown verified: True" in text
    assert "cluster teardown verified: True" in text
    # The cluster's card shows in the notebook, with what it may cost.
    card = next(o for cell in notebook.cells for o in cell.get("outputs", [])
                if "text/html" in o.get("data", {}) and "BurstCluster" in o["data"]["text/html"])
    assert "bound $" in card["data"]["text/html"]
    manifests = list((tmp_path / "notebooks" / "results").glob("pi-*/manifest.json"))
    assert len(manifests) == 1
    tasks = json.loads(manifests[0].read_text())["tasks"]
    assert tasks == {"total": 20, "done": 20, "failed": 0, "retried": 0}
    started = cluster_ids(sandbox) - before  # the job's cluster and the notebook's own
    assert len(started) == 2
    for cluster_id in started:
        assert settled_leftovers(sandbox, cluster_id) == []


def test_overrides_change_one_field_of_a_section_and_keep_the_rest():
    from burst.job import load_job

    job = load_job(REPO / "jobs" / "pi.yaml", {"cores": 2, "run": {"tasks": {"range": 3}}})
    assert job.spec.cores == 2 and job.tasks == [0, 1, 2]
    assert job.spec.run.function == "pi:sample" and job.spec.run.reduce == "pi:estimate"


def test_a_cluster_left_open_is_torn_down_when_python_exits(sandbox, tmp_path):
    """A notebook kernel restarted (or a script ending) without cluster.close()."""
    import subprocess

    script = tmp_path / "forgetful.py"
    script.write_text(textwrap.dedent("""
        import burst
        cluster = burst.BurstCluster(cores=2, max_runtime="5m", instance_types=["c5.large"])
        print(cluster.cluster_id, len(cluster.worker_instances), flush=True)
        """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300)  # inherits BURST_HOME: the session sandbox
    assert done.returncode == 0, done.stderr
    cluster_id, workers = done.stdout.split()
    assert workers == "1"
    assert settled_leftovers(sandbox, cluster_id) == []
