"""The whole pipeline on the sandbox: `burst run`, and teardown on every path."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import textwrap
import time
from decimal import Decimal
from pathlib import Path

import pytest

from burst.runner import run
from tests.conftest import BURST, REPO, ctrl_c_reaches, settled_leftovers


def burst(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([BURST, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def write_job(folder: Path, module: str, code: str, tasks: str = "{range: 6}",
              extra: str = "") -> Path:
    (folder / f"{module}.py").write_text(textwrap.dedent(code))
    spec = folder / f"{module}.yaml"
    # `extra` adds to the run section (indented lines) or replaces a top-level field: a key
    # given twice is refused in a spec, so the base's line of that field is left out.
    replaced = {line.split(":")[0] for line in extra.splitlines() if not line.startswith(" ")}
    base = [f"name: {module.replace('_', '-')}", "cores: 4", "max_runtime: 5m",
            "instance_types: [c5.large]"]
    base = [line for line in base if line.split(":")[0] not in replaced]
    spec.write_text("\n".join(base) + textwrap.dedent(f"""
        run:
          function: {module}:task
          tasks: {tasks}
        """) + extra)
    return spec


def test_pi_runs_end_to_end_with_json_manifest(sandbox, tmp_path):
    done = burst("run", str(REPO / "jobs" / "pi.yaml"), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout)  # stdout is the manifest alone
    assert abs(manifest["result"]["pi"] - math.pi) < 0.01
    roles = [i["role"] for i in manifest["instances"]]
    assert roles.count("scheduler") == 1 and roles.count("worker") >= 1
    assert manifest["cores"]["worker_vcpus"] >= manifest["spec"]["cores"] == 8
    assert manifest["teardown"]["verified"] and manifest["teardown"]["leftovers"] == []
    cost = manifest["cost"]  # billed: every instance at least its one-minute minimum
    assert Decimal(cost["actual"]) >= sum(
        Decimal(i["hourly"]) / 60 for i in manifest["instances"]
    ) and cost["actual_complete"] and cost["still_running"] == 0
    assert all(Decimal(i["cost"]) > 0 for i in manifest["instances"])
    stages = {"plan", "connect", "provision", "bootstrap", "run", "collect", "teardown"}
    assert set(manifest["timings"]) == stages
    # The default sandbox image: the nodes ran the client's own interpreter, no wheelhouse.
    assert manifest["node_environment"] == {"provided": "client-interpreter"}
    assert all(i["end_time"] for i in manifest["instances"])
    folder = tmp_path / "results" / manifest["job_id"]
    lines = (folder / "results.jsonl").read_text().splitlines()
    assert len(lines) == 200 and all(json.loads(line)["status"] == "done" for line in lines)
    assert json.loads((folder / "manifest.json").read_text()) == manifest
    assert settled_leftovers(sandbox, manifest["cluster_id"]) == []
    assert "Plan" in done.stderr and "workers joined" in done.stderr


def test_failing_tasks_exit_1_and_keep_the_others(sandbox, tmp_path):
    spec = write_job(tmp_path, "sometimes", """
        def task(x):
            if x % 3 == 0:
                raise ValueError(f"bad input {x}")
            return x * 10

        def total(results):
            return sum(results)
        """, extra="  retries: 0\n  reduce: sometimes:total\n")
    done = burst("run", str(spec), "--json", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    manifest = json.loads(done.stdout)
    assert manifest["status"] == "failed"
    assert manifest["error"] == "2 of 6 tasks failed; reduce not run"
    assert manifest["tasks"] == {"total": 6, "done": 4, "failed": 2, "retried": 0}
    assert [f["task"] for f in manifest["failures"]] == [0, 3]
    error = manifest["failures"][1]["error"]
    assert error.startswith("ValueError: bad input 3\n")
    # The traceback names the user's file and line, and shows it (not <dynamic-code>).
    assert f'File "{tmp_path / "sometimes.py"}", line 4, in task' in error
    assert 'raise ValueError(f"bad input {x}")' in error and "<dynamic-code>" not in error
    results = [json.loads(line) for line in
               (tmp_path / "results" / manifest["job_id"] / "results.jsonl").open()]
    assert [r.get("result") for r in results if r["status"] == "done"] == [10, 20, 40, 50]
    assert manifest["teardown"]["verified"]
    assert settled_leftovers(sandbox, manifest["cluster_id"]) == []


def test_an_exception_in_burst_itself_still_tears_down(sandbox, tmp_path, monkeypatch):
    import burst.runner

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in burst")

    monkeypatch.setattr(burst.runner, "map_tasks", broken)
    spec = write_job(tmp_path, "fine_job", "def task(x):\n    return x\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError, match="a bug in burst"):
        run(spec)
    manifest = json.loads(next((tmp_path / "results").glob("*/manifest.json")).read_text())
    assert manifest["status"] == "error" and manifest["teardown"]["verified"]
    assert settled_leftovers(sandbox, manifest["cluster_id"]) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_tears_down_and_exits_130(sandbox, tmp_path, sig):
    started = tmp_path / "started"
    spec = write_job(tmp_path, f"slow_{sig.name.lower()}", f"""
        import time
        from pathlib import Path

        def task(x):
            Path({str(started)!r}).touch()
            time.sleep(120)
            return x
        """)
    process = subprocess.Popen([BURST, "run", str(spec), "--json"], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=ctrl_c_reaches)
    deadline = time.monotonic() + 120
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert started.exists(), "the tasks never started"
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    manifest = json.loads(next((tmp_path / "results").glob("*/manifest.json")).read_text())
    assert manifest["status"] == "interrupted" and manifest["teardown"]["verified"]
    assert settled_leftovers(sandbox, manifest["cluster_id"]) == []


def test_fold_finds_a_low_energy_fold(sandbox, tmp_path):
    done = burst("run", str(REPO / "jobs" / "fold.yaml"), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout)
    assert manifest["result"]["energy"] <= -8  # the known optimum is -9
    assert manifest["result"]["runs"] == 64
    assert settled_leftovers(sandbox, manifest["cluster_id"]) == []


@pytest.mark.sandbox
def test_sandbox_up_is_used_by_run_then_down(tmp_path):
    env = {**os.environ, "BURST_HOME": str(tmp_path / "home")}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([BURST, *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)

    up = cli("sandbox", "up")
    try:
        assert up.returncode == 0, up.stderr
        assert "sandbox running at http://127.0.0.1:" in up.stdout
        assert cli("sandbox", "status").returncode == 0
        spec = write_job(tmp_path, "on_long_lived", "def task(x):\n    return x + 1\n",
                         tasks="[1, 2, 3]")
        done = cli("run", str(spec), "--json")
        assert done.returncode == 0, done.stderr
        assert "sandbox cloud (running)" in done.stderr
        assert json.loads(done.stdout)["teardown"]["verified"]
        status = cli("sandbox", "status")
        assert "  0 running: each is a process group on this machine" in status.stdout
    finally:
        down = cli("sandbox", "down")
    assert down.returncode == 0 and "sandbox stopped" in down.stdout
    after = cli("sandbox", "status")
    assert after.returncode == 3 and "not running" in after.stdout


def test_a_failing_reduce_keeps_the_results_and_exits_1(sandbox, tmp_path):
    (tmp_path / "sibling_helper.py").write_text("def double(x):\n    return 2 * x\n")
    spec = write_job(tmp_path, "reduce_fails", """
        from sibling_helper import double  # a sibling module: shipped by value too

        def task(x):
            return double(x)

        def total(results):
            raise ZeroDivisionError("reduce broke")
        """, extra="  reduce: reduce_fails:total\n")
    done = burst("run", str(spec), "--json", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    manifest = json.loads(done.stdout)  # printed on failure too
    assert manifest["status"] == "failed" and "run.reduce raised ZeroDivisionError" in (
        manifest["error"])
    results = [json.loads(line) for line in
               (tmp_path / "results" / manifest["job_id"] / "results.jsonl").open()]
    assert [r["result"] for r in results] == [0, 2, 4, 6, 8, 10]
    assert settled_leftovers(sandbox, manifest["cluster_id"]) == []


def test_tasks_all_failing_alike_stop_early_and_exit_1(sandbox, tmp_path):
    spec = write_job(tmp_path, "always_fails", """
        import time

        def task(x):
            time.sleep(0.2)
            raise FileNotFoundError("data.csv is missing")
        """, tasks="{range: 200}", extra="  retries: 2\n")
    done = burst("run", str(spec), cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "stopped early (run.fail_fast): the first 5 tasks all failed the same way " \
           "(FileNotFoundError: data.csv is missing)" in done.stderr
    assert "stopped early" in done.stdout  # the summary's line
    folder = next((tmp_path / "results").iterdir())
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "failed_fast" and manifest["teardown"]["verified"]
    assert manifest["tasks"]["failed"] == 5 and manifest["tasks"]["done"] == 0
    assert manifest["tasks"]["not_run"] == 195
    lines = [json.loads(line) for line in (folder / "results.jsonl").open()]
    # kept, and each tried once: a function's exception is not retried (retries: 2 is for
    # lost workers and timeouts)
    assert len(lines) == 5 and {line["attempts"] for line in lines} == {1}
    assert settled_leftovers(sandbox, manifest["cluster_id"]) == []


def test_outputs_cannot_escape_their_task_s_folder(sandbox, tmp_path, monkeypatch):
    """A task with the bucket's credentials writes behind the client's back, once every task
    finished: `0/..` (which turned outputs/ into a file and lost the job), a file planted in
    another task's folder, another task's output overwritten. The job keeps every line and
    every honest output; only the overwritten task fails."""
    from burst import events
    from tests.conftest import client

    (tmp_path / "write.py").write_text(textwrap.dedent("""
        import os, sys
        from pathlib import Path

        Path(os.environ["BURST_OUTPUT"], "out.txt").write_text(f"task {sys.argv[1]}")
        """))
    (tmp_path / "hostile.yaml").write_text(textwrap.dedent("""\
        name: hostile
        cores: 2
        max_runtime: 5m
        instance_types: [c5.large]
        run:
          command: python write.py {n}
          params: {n: [0, 1, 2]}
        """))
    where: dict = {}

    def behind_the_back(event):
        if isinstance(event, events.Planned):
            where.update(bucket=f"burst-{event.cluster_id}", base=f"jobs/{event.job_id}")
        if isinstance(event, events.TasksProgress) and event.done == event.total:
            s3, base = client(sandbox, "s3"), where["base"]
            for key, body in [("0/..", b"x"), ("0/planted.txt", b"y"), ("1/out.txt", b"z")]:
                s3.put_object(Bucket=where["bucket"], Key=f"{base}/outputs/{key}", Body=body)

    monkeypatch.chdir(tmp_path)
    result = run(tmp_path / "hostile.yaml", on_event=behind_the_back)
    assert result.status == "failed"
    [failure] = result.failures
    assert failure.task == 1 and "not what task 1 wrote" in failure.error
    outputs = result.folder / "outputs"
    assert sorted(p.name for p in outputs.iterdir()) == ["index.csv", "n=0", "n=2"]
    assert [p.name for p in (outputs / "n=0").iterdir()] == ["out.txt"]
    assert (outputs / "n=0" / "out.txt").read_text() == "task 0"
    lines = [json.loads(line) for line in (result.folder / "results.jsonl").open()]
    assert [(line["task"], line["status"]) for line in lines] == [
        (0, "done"), (1, "failed"), (2, "done")]
    assert sorted(result.manifest["outputs_ignored"]) == sorted(
        [f"{where['base']}/outputs/0/..", f"{where['base']}/outputs/0/planted.txt"])
    assert result.manifest["teardown"]["verified"]
    assert settled_leftovers(sandbox, result.manifest["cluster_id"]) == []


def test_the_csv_grid_example_names_its_output_folders(sandbox, tmp_path):
    done = burst("run", str(REPO / "jobs" / "grid.yaml"), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout)
    folder = tmp_path / "results" / manifest["job_id"]
    lines = [json.loads(line) for line in (folder / "results.jsonl").open()]
    names = ["seed=1,temp=0.5,label=cold", "seed=1,temp=2.0,label=warm",
             "seed=2,temp=0.5,label=cold", "seed=2,temp=2.0,label=warm"]
    assert [line["folder"] for line in lines] == [f"outputs/{n}" for n in names]
    assert all((folder / "outputs" / n / "ising.csv").is_file() for n in names)
    index = (folder / "outputs" / "index.csv").read_text().splitlines()
    assert index[0] == "task,folder,seed,temp,label"
    assert index[1] == '0,"outputs/seed=1,temp=0.5,label=cold",1,0.5,cold'
    assert settled_leftovers(sandbox, manifest["cluster_id"]) == []


def test_a_command_failing_alike_stops_early_after_its_retries(sandbox, tmp_path):
    (tmp_path / "needs_data.py").write_text(textwrap.dedent("""
        import sys

        sys.exit(f"error: cannot open data/run-{sys.argv[1]}.csv"[:23])  # the same line
        """))
    (tmp_path / "cmd_fails.yaml").write_text(textwrap.dedent("""\
        name: cmd-fails
        cores: 2
        max_runtime: 5m
        instance_types: [c5.large]
        run:
          command: python needs_data.py {n}
          params: {n: {range: 60}}
          retries: 1
        """))
    done = burst("run", "cmd_fails.yaml", "--json", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    manifest = json.loads(done.stdout)
    assert manifest["status"] == "failed_fast"
    assert "(exit code 1: error: cannot open data)" in manifest["error"]
    assert manifest["tasks"]["failed"] == 5 and manifest["tasks"]["not_run"] == 55
    # a command's non-zero exit is retried: each of the five ran twice
    assert {f["attempts"] for f in manifest["failures"]} == {2}
    assert settled_leftovers(sandbox, manifest["cluster_id"]) == []
