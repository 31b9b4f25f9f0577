"""Finished work is never lost: results stream to disk as tasks finish, the deadline is its
own outcome (exit 5) and a resumed job runs only what is missing. Drills on the sandbox."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import numpy as np

from burst.runner import run
from tests.conftest import BURST, ctrl_c_reaches, settled_leftovers
from tests.test_pipeline import write_job

SLOW = """
    import time

    import numpy as np

    def task(x):
        time.sleep({seconds})
        return {{"x": x, "square": np.int64(x * x), "pair": np.arange(2) * x}}
    """


def lines_of(folder) -> list[dict]:
    path = folder / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_the_deadline_keeps_results_exits_5_and_resume_runs_the_rest(sandbox, tmp_path):
    spec = write_job(tmp_path, "deadline_job", SLOW.format(seconds=0.2), tasks="{range: 300}",
                     extra="grace: 2m\n")
    spec.write_text(spec.read_text().replace("max_runtime: 5m", "max_runtime: 15s"))
    stopped = subprocess.run([BURST, "run", str(spec), "--json"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert stopped.returncode == 5, stopped.stderr
    first = json.loads(stopped.stdout)
    folder = tmp_path / "results" / first["job_id"]
    done = [line for line in lines_of(folder) if line["status"] == "done"]
    assert first["status"] == "deadline" and first["tasks"]["done"] == len(done)
    assert 0 < len(done) < 300 and first["teardown"]["verified"]
    assert f"max_runtime 15s reached: {len(done)} of 300 tasks done, results kept" in (
        stopped.stderr)
    assert f"--resume {first['job_id']}" in stopped.stderr
    # numpy values are JSON numbers and lists in results.jsonl
    line = done[0]
    x = line["input"]
    assert line["result"] == {"x": x, "square": x * x, "pair": [0, x]}

    spec.write_text(spec.read_text().replace("max_runtime: 15s", "max_runtime: 5m"))
    resumed = subprocess.run([BURST, "run", str(spec), "--resume", first["job_id"], "--json"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    second = json.loads(resumed.stdout)
    assert second["job_id"] == first["job_id"] and second["status"] == "succeeded"
    assert second["tasks"]["done"] == 300 and second["tasks"]["ran"] == 300 - len(done)
    assert [r["cluster_id"] for r in second["runs"]] == [first["cluster_id"],
                                                          second["cluster_id"]]
    assert sorted(line["task"] for line in lines_of(folder)) == list(range(300))
    for manifest in (first, second):
        assert settled_leftovers(sandbox, manifest["cluster_id"]) == []


def test_ctrl_c_keeps_the_finished_tasks_lines(sandbox, tmp_path):
    spec = write_job(tmp_path, "interrupted_job", SLOW.format(seconds=0.5), tasks="{range: 400}")
    process = subprocess.Popen([BURST, "run", str(spec), "--json"], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=ctrl_c_reaches)
    give_up = time.monotonic() + 180
    folders = []
    while time.monotonic() < give_up:
        folders = list((tmp_path / "results").glob("*"))
        if folders and len(lines_of(folders[0])) >= 3:
            break
        time.sleep(0.2)
    assert folders, "no task finished"
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    manifest = json.loads(stdout)
    kept = lines_of(folders[0])
    assert manifest["status"] == "interrupted" and len(kept) >= 3
    assert manifest["tasks"]["done"] == len(kept) < 400  # the manifest counts the lines
    assert manifest["teardown"]["verified"]
    assert settled_leftovers(sandbox, manifest["cluster_id"]) == []


def test_function_tasks_have_a_timeout_and_their_output_captured(sandbox, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = write_job(tmp_path, "talkative_job", """
        import logging
        import time

        import numpy as np

        def task(x):
            print(f"hello {x}")
            logging.getLogger("science").warning("careful %s", x)
            while x == 3:  # stuck in Python code (one long call into C would finish first)
                time.sleep(0.05)
            return np.arange(3) * x
        """, tasks="{range: 4}", extra="")
    spec.write_text(spec.read_text() + "  timeout: 2s\n  retries: 0\n")
    result = run(spec)
    assert result.status == "failed"
    [failure] = result.failures
    assert failure.task == 3 and failure.error.startswith("TimeoutError: timed out after 2s")
    assert failure.stdout_tail == "hello 3"
    done = {o.task: o for o in result.outcomes if o.status == "done"}
    assert sorted(done) == [0, 1, 2]
    assert done[2].stdout_tail == "hello 2" and "careful 2" in done[2].stderr_tail
    # burst.run returns the real objects; results.jsonl holds them as JSON
    assert isinstance(done[2].result, np.ndarray) and done[2].result.tolist() == [0, 2, 4]
    stored = {line["task"]: line for line in lines_of(result.folder)}
    assert stored[2]["result"] == [0, 2, 4] and stored[2]["stdout_tail"] == "hello 2"
    assert stored[3]["status"] == "failed" and stored[3]["stdout_tail"] == "hello 3"
    assert settled_leftovers(sandbox, result.manifest["cluster_id"]) == []
