"""results.jsonl: JSON as a scientist expects, written as tasks finish, read back to resume;
and the worker-side capture and time limit of function tasks."""

from __future__ import annotations

import json
import sys
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal

import numpy as np
import pytest

from burst import taskrun
from burst.errors import SpecError
from burst.results import ResultsLog, TaskOutcome, dumps, job_folder, load_for_resume, to_json


def test_numpy_and_friends_are_stored_as_json_values():
    value = {
        "scalar": np.int64(3),
        "float": np.float32(0.5),
        "array": np.arange(3),
        "matrix": np.eye(2),
        "set": {2, 1},
        "when": datetime(2026, 11, 28, tzinfo=UTC),
        "money": Decimal("0.10"),
    }
    assert json.loads(dumps(value)) == {
        "scalar": 3,
        "float": 0.5,
        "array": [0, 1, 2],
        "matrix": [[1.0, 0.0], [0.0, 1.0]],
        "set": [1, 2],
        "when": "2026-11-28T00:00:00+00:00",
        "money": "0.10",
    }
    assert to_json(object).startswith("<class")  # anything else: its repr


def test_each_outcome_is_on_disk_as_soon_as_it_is_added(tmp_path):
    log = ResultsLog(tmp_path / "job")
    log.add(TaskOutcome(1, 10, "done", np.float64(2.5), seconds=0.1))
    # Another reader (a crash right now) sees the line already: it was flushed.
    lines = (tmp_path / "job" / "results.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"task": 1, "input": 10, "status": "done", "result": 2.5, "seconds": 0.1}
    ]
    log.add(TaskOutcome(0, 0, "failed", error="ValueError: no"))
    log.close()
    assert [o.task for o in log.in_order()] == [0, 1]
    assert len(log.done()) == len(log.failed()) == 1


def _earlier(folder, tasks, lines, total=None):
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(
        {"tasks": {"total": len(tasks) if total is None else total}, "cluster_id": "c1",
         "status": "deadline", "cost": {"actual": "0.01"}}))
    (folder / "results.jsonl").write_text("".join(line + "\n" for line in lines))


def test_resume_keeps_the_done_tasks_and_drops_the_failed_lines(tmp_path):
    folder, tasks = tmp_path / "job-1", [10, 11, 12, 13]
    _earlier(folder, tasks, [
        dumps({"task": 0, "input": 10, "status": "done", "result": 1}),
        dumps({"task": 2, "input": 12, "status": "failed", "error": "boom"}),
        dumps({"task": 1, "input": 11, "status": "done", "result": 2}),
        '{"task": 3, "input": 13, "sta',  # cut short by a crash mid-write
    ])
    done, manifest = load_for_resume(folder, tasks)
    assert sorted(o.task for o in done) == [0, 1] and manifest["cluster_id"] == "c1"
    kept = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    assert [k["task"] for k in kept] == [0, 1]  # the failed one runs again


def test_resume_refuses_a_job_whose_tasks_changed(tmp_path):
    folder = tmp_path / "job-2"
    _earlier(folder, [1, 2], [dumps({"task": 0, "input": 1, "status": "done", "result": 1})])
    with pytest.raises(SpecError, match="had 2 tasks, this spec has 3"):
        load_for_resume(folder, [1, 2, 3])
    with pytest.raises(SpecError, match="task 0's input changed"):
        load_for_resume(folder, [5, 2])
    with pytest.raises(SpecError, match="no job at"):
        load_for_resume(tmp_path / "missing", [1])


@pytest.mark.parametrize("job_id", ["../etc", "a/b", "", ".hidden", "x" * 200, "a..b"])
def test_a_job_id_names_a_folder_under_the_outputs_and_nothing_else(tmp_path, job_id):
    with pytest.raises(SpecError, match="job id"):
        job_folder(tmp_path, job_id)
    assert job_folder(tmp_path, "pi-20261128-041650-2a42") == tmp_path / "pi-20261128-041650-2a42"


def test_the_time_limit_interrupts_python_code_and_leaves_nothing_pending():
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="timed out after 0.2s"), taskrun._time_limit(0.2):
        while True:
            time.sleep(0.01)
    assert time.monotonic() - started < 5
    with taskrun._time_limit(5):  # in time: no exception, now or later
        pass
    time.sleep(0.05)


def test_each_thread_s_output_goes_to_its_own_buffer(capsys):
    out = taskrun._router("stdout")
    try:
        assert taskrun._router("stdout") is out  # installed once
        buffers = {}

        def task(n):
            buffers[n] = taskrun._TailBuffer()
            out.buffers[threading.get_ident()] = buffers[n]
            for line in range(3):
                print(f"task {n} line {line}")
                time.sleep(0.01)
            out.buffers.pop(threading.get_ident())

        threads = [threading.Thread(target=task, args=(n,)) for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for n in range(2):
            assert taskrun.tail_of(buffers[n].text).splitlines() == [
                f"task {n} line {line}" for line in range(3)
            ]
        print("not a task's")
    finally:
        sys.stdout = out.stream
    assert capsys.readouterr().out == "not a task's\n"


def test_a_failing_function_s_traceback_points_at_the_user_s_file(tmp_path, monkeypatch):
    """Shipped by value as on the workers: cloudpickle names every code object's file
    <dynamic-code>; the error names the user's file and line again, with the line."""
    import cloudpickle

    (tmp_path / "user_job.py").write_text(
        "def helper(x):\n    return 1 / x\n\n\ndef task(x):\n    return helper(x - 1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import user_job

    cloudpickle.register_pickle_by_value(user_job)
    try:
        shipped = cloudpickle.loads(cloudpickle.dumps(taskrun.FunctionTask(user_job.task)))
    finally:
        cloudpickle.unregister_pickle_by_value(user_job)
        sys.modules.pop("user_job")
    assert shipped.function.__code__.co_filename == "<dynamic-code>"  # what cloudpickle does
    reply = shipped(1)
    assert reply["error"].splitlines() == [
        "ZeroDivisionError: division by zero",
        f'  File "{tmp_path / "user_job.py"}", line 6, in task',
        "    return helper(x - 1)",
        f'  File "{tmp_path / "user_job.py"}", line 2, in helper',
        "    return 1 / x",
    ]
    done = shipped(2)
    assert (done["value"], done["worker"], "error" in done) == (1.0, None, False)


def manifest_with(failures: list[dict], failed: int, status="failed", error=None) -> dict:
    return {
        "job_id": "j-1", "status": status, "error": error, "result": None,
        "tasks": {"total": 20, "done": 20 - failed, "failed": failed, "retried": 0},
        "failures": failures, "cores": {"requested": 4, "worker_vcpus": 4},
        "instances": [], "timings": {"run": 1.0},
        "cost": {"actual": "0.01", "cost_bound": "0.1", "price_source": "snapshot"},
        "teardown": {"verified": True, "leftovers": [], "errors": []},
    }


def rendered(manifest: dict) -> str:
    from rich.console import Console

    from burst.cli import summary

    console = Console(record=True, width=250)
    console.print(summary(manifest))
    return console.export_text()


def test_the_summary_says_why_and_lists_the_first_failures_then_how_many_more():
    failures = [
        {"task": n, "input": n, "attempts": 1,
         "error": f'ValueError: bad input {n}\n  File "/home/me/job/model.py", line 12, in '
                  'task\n    raise ValueError(f"bad input {x}")'}
        for n in range(7)
    ]
    text = rendered(manifest_with(failures, 7, error="7 of 20 tasks failed; reduce not run"))
    assert "7 of 20 tasks failed; reduce not run" in text
    for n in range(5):
        assert f"task {n}" in text and f"ValueError: bad input {n} (at model.py:12)" in text
    assert "task 5" not in text and "+2 more" in text
    command = {"task": 3, "input": {"seed": 3}, "error": "exit code 2", "exit_code": 2,
               "stderr_tail": "usage: simulate.py\nerror: [temp] must be positive"}
    text = rendered(manifest_with([command], 1))
    assert "exit code 2: error: [temp] must be positive" in text  # markup-like text kept
    assert "more" not in text
