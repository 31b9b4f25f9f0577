"""Command sweeps end to end on the sandbox: outputs collected, failures kept apart,
inputs through S3, values passed without a shell, and nothing left behind."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import textwrap
import uuid
from pathlib import Path

import pytest
import yaml

from burst.runner import run
from burst.spec import SpecError
from tests.conftest import BURST, REPO, client, settled_leftovers


def burst(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([BURST, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def test_the_example_sweep_collects_every_tasks_output(sandbox, tmp_path):
    done = burst("run", str(REPO / "jobs" / "sweep.yaml"), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout)
    assert manifest["status"] == "succeeded"
    assert manifest["tasks"] == {"total": 16, "done": 16, "failed": 0, "retried": 0}
    folder = tmp_path / "results" / manifest["job_id"]
    results = [json.loads(line) for line in (folder / "results.jsonl").open()]
    assert [r["input"] for r in results] == [
        {"seed": s, "temp": t} for s in range(4) for t in (0.5, 1.0, 2.0, 4.0)]
    for result in results:
        assert result["status"] == "done" and result["exit_code"] == 0
        assert result["result"]["outputs"] == ["ising.csv"]
        assert result["result"]["argv"][:3] == ["python", "simulate.py", "--seed"]
        assert f"T {result['input']['temp']}:" in result["result"]["stdout_tail"]
        # each task's outputs in a folder named by its parameters, kept in results.jsonl
        assert result["folder"] == "outputs/seed={seed},temp={temp}".format(**result["input"])
        rows = list(csv.reader((folder / result["folder"] / "ising.csv").open()))
        assert rows[0] == ["sweep", "energy_per_spin", "magnetisation"] and len(rows) == 201
    assert sorted(p.name for p in (folder / "outputs").iterdir()) == sorted(
        [f"seed={s},temp={t}" for s in range(4) for t in (0.5, 1.0, 2.0, 4.0)] + ["index.csv"])
    index = list(csv.DictReader((folder / "outputs" / "index.csv").open()))
    assert [(int(r["task"]), r["folder"]) for r in index] == [
        (r["task"], r["folder"]) for r in results]
    assert index[5]["seed"] == "1" and index[5]["temp"] == "1.0"
    assert folder.stat().st_mode & 0o777 == 0o700  # results are private
    assert manifest["teardown"]["verified"]
    assert any(d.startswith("bucket/") for d in manifest["teardown"]["deleted"])
    assert settled_leftovers(sandbox, manifest["cluster_id"]) == []


def test_failing_values_exit_1_keep_the_other_outputs_and_name_the_failures(sandbox, tmp_path):
    shutil.copy(REPO / "jobs" / "simulate.py", tmp_path)
    (tmp_path / "failing.yaml").write_text(textwrap.dedent("""\
        name: failing-sweep
        cores: 4
        max_runtime: 5m
        instance_types: [c5.xlarge]
        run:
          command: python simulate.py --seed {seed} --temp {temp} --sweeps 20
          params:
            seed: [1, 2, 3]
            temp: [1.5, 0]
          retries: 1
        """))
    done = burst("run", "failing.yaml", "--json", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    manifest = json.loads(done.stdout)
    assert manifest["status"] == "failed"
    # Each failing task ran twice (retries: 1); the counts come from the scheduler.
    assert manifest["tasks"] == {"total": 6, "done": 3, "failed": 3, "retried": 3}
    assert [f["task"] for f in manifest["failures"]] == [1, 3, 5]
    for failure in manifest["failures"]:
        assert failure["input"]["temp"] == 0
        assert failure["error"] == "exit code 2" and failure["exit_code"] == 2
        assert "temperature must be positive, got 0.0" in failure["stderr_tail"]
        assert failure["attempts"] == 2
    outputs = tmp_path / "results" / manifest["job_id"] / "outputs"
    kept = ["seed=1,temp=1.5", "seed=2,temp=1.5", "seed=3,temp=1.5"]
    assert sorted(p.name for p in outputs.iterdir()) == ["index.csv", *kept]
    assert all((outputs / t / "ising.csv").stat().st_size > 0 for t in kept)
    results = [json.loads(line) for line in
               (tmp_path / "results" / manifest["job_id"] / "results.jsonl").open()]
    assert [r["status"] for r in results] == ["done", "failed"] * 3
    assert all(r["attempts"] == 1 for r in results if r["status"] == "done")
    assert settled_leftovers(sandbox, manifest["cluster_id"]) == []


PROBE = '''
import json, os, sys, time
from pathlib import Path

tag, mode, marker = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "sleep":
    time.sleep(120)
if mode == "flaky" and not Path(marker).exists():
    Path(marker).touch()
    sys.exit("first attempt fails on purpose")
inputs = Path(os.environ["BURST_INPUT"])
out = Path(os.environ["BURST_OUTPUT"])
(out / "nested").mkdir()
(out / "nested" / "probe.json").write_text(json.dumps({
    "argv": sys.argv[1:],
    "task": os.environ["BURST_TASK"],
    "inputs": sorted(str(p.relative_to(inputs)) for p in inputs.rglob("*")),
    "table": (inputs / "table.csv").read_text(),
    "weights": (inputs / "weights.bin").read_bytes().hex(),
    "lookup": (inputs / "refdata" / "sub" / "lookup.txt").read_text(),
    "input_write_bits": [oct(p.stat().st_mode & 0o222) for p in inputs.rglob("*")],
    "cwd_files": sorted(os.listdir(".")),
}))
print("probe done", tag)
'''


def test_inputs_values_timeouts_and_retries(sandbox, tmp_path, monkeypatch):
    (tmp_path / "probe.py").write_text(PROBE)
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    (tmp_path / "refdata" / "sub").mkdir(parents=True)
    (tmp_path / "refdata" / "sub" / "lookup.txt").write_text("lookup table")
    external = f"external-inputs-{uuid.uuid4().hex[:8]}"  # not burst's: must survive teardown
    s3 = client(sandbox, "s3")
    s3.create_bucket(Bucket=external)
    s3.put_object(Bucket=external, Key="models/weights.bin", Body=bytes(range(8)))
    marker = tmp_path / "flaky-marker"
    rows = [
        {"tag": "x; touch pwned", "mode": "ok"},
        {"tag": "$(touch pwned2) `touch pwned3` | rm -rf .", "mode": "ok"},
        {"tag": "slow", "mode": "sleep"},
        {"tag": "again", "mode": "flaky"},
    ]
    spec = {
        "name": "probe",
        "cores": 4,
        "max_runtime": "5m",
        "instance_types": ["c5.xlarge"],
        "inputs": ["table.csv", "refdata", f"s3://{external}/models/weights.bin"],
        "run": {
            "command": f"python probe.py {{tag}} {{mode}} {marker}",
            "params": rows,
            "timeout": "3s",
            "retries": 1,
        },
    }
    (tmp_path / "probe.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.chdir(tmp_path)
    result = run(tmp_path / "probe.yaml")
    assert result.status == "failed"
    manifest = result.manifest
    assert manifest["tasks"] == {"total": 4, "done": 3, "failed": 1, "retried": 2}
    [timed_out] = manifest["failures"]
    assert timed_out["task"] == 2 and timed_out["error"] == "timed out after 3s"
    assert timed_out["exit_code"] is None and timed_out["attempts"] == 2
    assert [o.attempts for o in result.outcomes] == [1, 1, 2, 2]

    probes = {o.task: json.loads((result.folder / o.folder / "nested" / "probe.json").read_text())
              for o in result.outcomes if o.status == "done"}
    assert result.outcomes[0].folder == "outputs/mode=ok,tag=x__touch_pwned"  # keys sorted
    assert sorted(probes) == [0, 1, 3]
    # Each value arrived as one literal argument; no shell ever saw it.
    assert probes[0]["argv"][0] == "x; touch pwned"
    assert probes[1]["argv"][0] == "$(touch pwned2) `touch pwned3` | rm -rf ."
    for root in (tmp_path, sandbox.folder):
        assert not [p for p in root.rglob("pwned*")], "a value was run by a shell"
    assert (tmp_path / "probe.py").exists()
    for index, probe in probes.items():
        assert probe["task"] == str(index)
        assert probe["inputs"] == ["refdata", "refdata/sub", "refdata/sub/lookup.txt",
                                   "table.csv", "weights.bin"]
        assert probe["table"] == "a,b\n1,2\n" and probe["lookup"] == "lookup table"
        assert probe["weights"] == bytes(range(8)).hex()
        assert set(probe["input_write_bits"]) == {"0o0"}  # read-only (root ignores it)
        # The job's files (not the inputs, not results/) are in the task's folder.
        assert "probe.py" in probe["cwd_files"] and "table.csv" not in probe["cwd_files"]
        assert "results" not in probe["cwd_files"]
    assert result.outcomes[3].result["stdout_tail"] == "probe done again"
    assert settled_leftovers(sandbox, manifest["cluster_id"]) == []
    assert s3.head_object(Bucket=external, Key="models/weights.bin")["ContentLength"] == 8


def test_a_missing_input_is_a_spec_error_before_any_cloud_call(sandbox, tmp_path, monkeypatch):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({
        "cores": 2, "inputs": ["absent.bin"],
        "run": {"command": "echo {a}", "params": {"a": [1]}}}))
    before = {b["Name"] for b in client(sandbox, "s3").list_buckets()["Buckets"]}
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError, match="inputs: 'absent.bin' does not exist"):
        run(tmp_path / "s.yaml")
    assert {b["Name"] for b in client(sandbox, "s3").list_buckets()["Buckets"]} == before
    assert not (tmp_path / "results").exists()


def test_retries_of_a_function_job_are_counted(sandbox, tmp_path, monkeypatch):
    marker = tmp_path / "failed-once"
    (tmp_path / "flaky_fn.py").write_text(textwrap.dedent(f"""
        from pathlib import Path

        def task(x):
            if x == 2 and not Path({str(marker)!r}).exists():
                Path({str(marker)!r}).touch()
                raise RuntimeError("first attempt fails")
            return x
        """))
    (tmp_path / "flaky.yaml").write_text(yaml.safe_dump({
        "name": "flaky", "cores": 2, "max_runtime": "5m", "instance_types": ["c5.large"],
        # an exception is retried only when the spec asks (it is deterministic by default)
        "run": {"function": "flaky_fn:task", "tasks": [1, 2, 3], "retries": 2,
                "retry_exceptions": True}}))
    monkeypatch.chdir(tmp_path)
    result = run(tmp_path / "flaky.yaml")
    assert result.ok and result.results == [1, 2, 3]
    assert result.manifest["tasks"] == {"total": 3, "done": 3, "failed": 0, "retried": 1}
    assert [o.attempts for o in result.outcomes] == [1, 2, 1]
    assert settled_leftovers(sandbox, result.manifest["cluster_id"]) == []


def test_a_task_that_writes_its_inputs_fails(sandbox, tmp_path, monkeypatch):
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    (tmp_path / "tamper.py").write_text(textwrap.dedent("""
        import os, sys
        from pathlib import Path

        try:
            (Path(os.environ["BURST_INPUT"]) / "table.csv").write_text("overwritten")
        except OSError:
            sys.exit("the input is read-only")
        """))
    (tmp_path / "tamper.yaml").write_text(yaml.safe_dump({
        "name": "tamper", "cores": 2, "max_runtime": "5m", "instance_types": ["c5.large"],
        "inputs": ["table.csv"],
        "run": {"command": "python tamper.py {n}", "params": {"n": [1]}, "retries": 1}}))
    monkeypatch.chdir(tmp_path)
    result = run(tmp_path / "tamper.yaml")
    [failure] = result.manifest["failures"]
    # Permission bits stop a normal user; root (as on the nodes) is caught changing the input.
    if os.geteuid() == 0:
        assert failure["error"].startswith("the read-only 'inputs/table.csv' changed while this")
    else:
        assert failure["error"] == "exit code 1"
        assert "the input is read-only" in failure["stderr_tail"]
    assert failure["attempts"] == 2  # the retry got a fresh copy, and was caught again
    assert (tmp_path / "table.csv").read_text() == "a,b\n1,2\n"
    assert settled_leftovers(sandbox, result.manifest["cluster_id"]) == []


def test_the_csv_sweep_example_runs_one_task_per_row(sandbox, tmp_path):
    done = burst("run", str(REPO / "jobs" / "csv_sweep.yaml"), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout)
    assert manifest["status"] == "succeeded" and manifest["tasks"]["done"] == 6
    folder = tmp_path / "results" / manifest["job_id"]
    results = [json.loads(line) for line in (folder / "results.jsonl").open()]
    rows = list(csv.DictReader((REPO / "jobs" / "points.csv").open()))
    assert [r["input"] for r in results] == [
        {"seed": int(r["seed"]), "temp": float(r["temp"]) if "." in r["temp"] else int(r["temp"]),
         "sweeps": int(r["sweeps"])} for r in rows]
    assert results[4]["result"]["argv"][4:6] == ["--temp", "2.27"]
    outputs = sorted((folder / "outputs").rglob("ising.csv"))
    assert len(outputs) == 6
    assert sorted(len(p.read_text().splitlines()) for p in outputs) == [201] * 4 + [301] * 2
    assert settled_leftovers(sandbox, manifest["cluster_id"]) == []
