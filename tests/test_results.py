"""results.jsonl: JSON as a scientist expects, written as tasks finish, read back to resume;
and the worker-side capture and time limit of function tasks."""

from __future__ import annotations

import hashlib
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
from burst.results import (
    ResultsLog,
    TaskOutcome,
    dumps,
    job_folder,
    load_for_resume,
    output_folders,
    to_json,
    write_index,
    write_lines,
)
from burst.transfer import download_outputs


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
    log = ResultsLog(tmp_path / "job", flush_seconds=0)
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
    in_a_library = {"task": 0, "error": 'ValueError: x\n  File "/home/me/job/model.py", line 3, '
                    'in task\n  File "/v/lib/python3.11/site-packages/numpy/core.py", line 9, in f'}
    assert "ValueError: x (at model.py:3)" in rendered(manifest_with([in_a_library], 1))
    command = {"task": 3, "input": {"seed": 3}, "error": "exit code 2", "exit_code": 2,
               "stderr_tail": "usage: simulate.py\nerror: [temp] must be positive"}
    text = rendered(manifest_with([command], 1))
    assert "exit code 2: error: [temp] must be positive" in text  # markup-like text kept
    assert "more" not in text


def test_output_folders_are_named_by_parameters_or_fall_back_to_the_task_number():
    rows = [
        {"seed": 3, "temp": 0.5},
        {"seed": 3, "temp": 1.0},
        {"tag": "x; rm -rf /", "n": 1},  # made safe for a file name
        {"tag": "a b"}, {"tag": "a_b"},  # the same once made safe: both numbered
        {"seed": 3, "temp": 0.5},  # a duplicate row: so are both
        {"text": "y" * 200},  # over-long
        {},  # no parameters
        {".hidden": "..", "-x": "--"},
    ]
    assert output_folders(rows) == [
        "outputs/0",
        "outputs/seed=3,temp=1.0",
        "outputs/tag=x__rm_-rf__,n=1",
        "outputs/3",
        "outputs/4",
        "outputs/5",
        "outputs/6",
        "outputs/7",
        "outputs/_hidden=..,-x=--",
    ]
    assert output_folders([{"seed": s} for s in range(3)]) == [
        "outputs/seed=0", "outputs/seed=1", "outputs/seed=2"]


def test_the_results_folder_is_private(tmp_path):
    folder = tmp_path / "results" / "job-1"
    log = ResultsLog(folder)
    log.add(TaskOutcome(0, 0, "done", 1))
    log.close()
    assert (folder.stat().st_mode & 0o777, folder.parent.stat().st_mode & 0o777) == (
        0o700, 0o700)
    (tmp_path / "shared").mkdir(mode=0o755)
    write_lines(tmp_path / "shared" / "job-2" / "results.jsonl", [])
    assert (tmp_path / "shared" / "job-2").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "shared").stat().st_mode & 0o777 == 0o755  # not burst's to change


# ---------------------------------------------------------- outputs that cannot escape

@pytest.fixture
def bucket():
    import boto3
    from moto import mock_aws

    from burst.storage import Bucket

    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="burst-c1")
        yield Bucket(s3, "burst-c1", "us-east-1")


def wrote(bucket, task: int, files: dict[str, bytes], folder: str) -> TaskOutcome:
    """What a command task does on its worker: upload its files, report names and digests."""
    for name, body in files.items():
        bucket.put(f"jobs/j/outputs/{task}/{name}", body)
    digests = {name: hashlib.sha256(body).hexdigest() for name, body in files.items()}
    return TaskOutcome(task, {"n": task}, "done", {"argv": ["x"], "exit_code": 0,
                       "outputs": list(files), "sha256": digests}, folder=folder)


def test_outputs_go_to_their_task_s_named_folder_with_an_index(bucket, tmp_path):
    outcomes = [wrote(bucket, 0, {"a.csv": b"1\n", "sub/b.txt": b"b"}, "outputs/n=0"),
                wrote(bucket, 1, {"a.csv": b"2\n"}, "outputs/n=1"),
                TaskOutcome(2, {"n": 2}, "failed", error="exit code 1")]
    failed, ignored = download_outputs(bucket, "j", tmp_path / "job", outcomes)
    assert (failed, ignored) == ([], [])
    out = tmp_path / "job" / "outputs"
    assert (out / "n=0" / "a.csv").read_bytes() == b"1\n"
    assert (out / "n=0" / "sub" / "b.txt").read_bytes() == b"b"
    assert (out / "n=1" / "a.csv").read_bytes() == b"2\n"
    write_index(tmp_path / "job", outcomes)
    assert (out / "index.csv").read_text().splitlines() == [
        "task,folder,n", "0,outputs/n=0,0", "1,outputs/n=1,1"]


def test_a_task_cannot_escape_its_folder_nor_write_into_another_s(bucket, tmp_path):
    good = wrote(bucket, 0, {"a.csv": b"mine"}, "outputs/n=0")
    victim = wrote(bucket, 1, {"a.csv": b"original"}, "outputs/n=1")
    liar = wrote(bucket, 2, {"ok.txt": b"ok"}, "outputs/n=2")
    liar.result["outputs"].append("../n=0/a.csv")  # claims a path out of its folder
    # What a task with the bucket's credentials could do behind the client's back:
    bucket.put("jobs/j/outputs/0/..", b"turns outputs into a file")
    bucket.put("jobs/j/outputs/0//x", b"an empty part")
    bucket.put("jobs/j/outputs/1/a.csv", b"overwritten by another task")
    bucket.put("jobs/j/outputs/0/planted.txt", b"put into task 0's folder")
    failed, ignored = download_outputs(bucket, "j", tmp_path / "job", [good, victim, liar])
    out = tmp_path / "job" / "outputs"
    assert (out / "n=0" / "a.csv").read_bytes() == b"mine"  # untouched
    assert sorted(p.name for p in (out / "n=0").iterdir()) == ["a.csv"]  # nothing planted
    assert [o.task for o in failed] == [1, 2] and {o.status for o in failed} == {"failed"}
    assert "not what task 1 wrote" in failed[0].error
    assert failed[1].error.startswith("outputs: refused the output name '../n=0/a.csv'")
    assert not (out / "n=1").exists() and not (out / "n=2").exists()  # failed: nothing kept
    assert sorted(ignored) == sorted(["jobs/j/outputs/0//x", "jobs/j/outputs/0/..",
                                      "jobs/j/outputs/0/planted.txt"])
    assert out.is_dir()


def read_lines(folder) -> list[int]:
    path = folder / "results.jsonl"
    return [json.loads(line)["task"] for line in path.open()] if path.exists() else []


def test_lines_are_written_in_batches_and_all_of_them_on_close(tmp_path):
    log = ResultsLog(tmp_path / "job", flush_seconds=3600)
    for task in range(100):
        log.add(TaskOutcome(task, task, "done", task))
    assert read_lines(tmp_path / "job") == [0]  # the first at once, the rest batched
    log.close()  # what the runner does on every path: end, deadline, Ctrl-C, lost cluster
    assert read_lines(tmp_path / "job") == list(range(100)) and log.flushes == 2


def test_a_pending_line_is_written_by_the_timer_without_another_task(tmp_path):
    log = ResultsLog(tmp_path / "job", flush_seconds=0.2)
    log.add(TaskOutcome(0, 0, "done", 0))
    log.add(TaskOutcome(1, 1, "done", 1))  # nothing else finishes after it
    give_up = time.monotonic() + 30
    while read_lines(tmp_path / "job") != [0, 1] and time.monotonic() < give_up:
        time.sleep(0.05)
    assert read_lines(tmp_path / "job") == [0, 1]
    log.close()


def test_the_results_log_benchmark_prints_json():
    import subprocess

    from tests.conftest import REPO

    done = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_results_log.py"),
                           "--tasks", "300"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [r["flush_seconds"] for r in report["runs"]] == [0, 0.5]
    each, batched = report["runs"]
    assert each["lines"] == batched["lines"] == 300 and each["writes"] == 300
    assert batched["writes"] < 300


def test_every_finished_line_is_on_disk_before_any_output_is_downloaded(bucket, tmp_path,
                                                                         monkeypatch):
    from burst.runner import collect_outputs

    log = ResultsLog(tmp_path / "job", flush_seconds=3600)
    log.add(wrote(bucket, 0, {"a.csv": b"0"}, "outputs/n=0"))
    log.add(wrote(bucket, 1, {"a.csv": b"1"}, "outputs/n=1"))  # pending: batched
    seen = []

    def download_file(*args):
        seen.append(read_lines(tmp_path / "job"))
        raise RuntimeError("the network went away")

    monkeypatch.setattr(bucket.s3, "download_file", download_file)
    with pytest.raises(RuntimeError, match="network"):
        collect_outputs(bucket, "j", tmp_path / "job", log)
    assert seen == [[0, 1]]
    log.close()


def test_the_failing_line_shows_on_a_worker_without_the_job_s_files(tmp_path, monkeypatch):
    import linecache

    import cloudpickle

    from burst.runner import job_sources

    path = tmp_path / "remote_job.py"
    path.write_text("def task(x):\n    return 1 / x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import remote_job

    cloudpickle.register_pickle_by_value(remote_job)
    try:
        sources = job_sources(tmp_path)
        assert sources == {str(path): path.read_text()}
        with_sources = cloudpickle.dumps(taskrun.FunctionTask(remote_job.task, sources=sources))
        without = cloudpickle.dumps(taskrun.FunctionTask(remote_job.task))
    finally:
        cloudpickle.unregister_pickle_by_value(remote_job)
        sys.modules.pop("remote_job")
    path.unlink()  # as on an AWS worker: the job's files are not there
    linecache.clearcache()
    assert cloudpickle.loads(with_sources)(0)["error"].splitlines() == [
        "ZeroDivisionError: division by zero",
        f'  File "{path}", line 2, in task',
        "    return 1 / x",
    ]
    assert cloudpickle.loads(without)(0)["error"].splitlines() == [
        "ZeroDivisionError: division by zero",
        f'  File "{path}", line 2, in task',
    ]
