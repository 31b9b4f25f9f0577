"""Command sweeps, inputs and software before launch: parameters, the template, the files that
ship, and every refusal (a SpecError naming the field, before any cloud call)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from burst import bootstrap
from burst.bootstrap import client_versions
from burst.job import load_job
from burst.spec import SpecError, parse_spec
from burst.sweep import check_template, job_files
from burst.taskrun import format_argv

PYTHON = client_versions()["python"]


def write_sweep(folder: Path, run: dict[str, Any], **fields: Any) -> Path:
    spec = {"name": "s", "cores": 2, "run": run, **fields}
    (folder / "sim").write_text("#!/bin/sh\n")  # the program the templates name
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def problems(folder: Path, run: dict[str, Any], **fields: Any) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_job(write_sweep(folder, run, **fields))
    return info.value.problems


def test_a_grid_is_the_product_of_its_lists_and_ranges(tmp_path: Path) -> None:
    run = {"command": "sim --seed {seed} --temp {temp}",
           "params": {"seed": {"range": [1, 4]}, "temp": [0.5, 2]}}
    job = load_job(write_sweep(tmp_path, run))
    assert job.function is None and job.command == ["sim", "--seed", "{seed}", "--temp", "{temp}"]
    assert job.tasks == [{"seed": s, "temp": t} for s in (1, 2, 3) for t in (0.5, 2)]


def test_params_from_csv_jsonl_and_rows(tmp_path: Path) -> None:
    (tmp_path / "grid.csv").write_text("seed,label\n1,a b\n2,c\n")
    (tmp_path / "grid.jsonl").write_text('{"seed": 1, "label": "x"}\n\n{"seed": 2, "label": "y"}\n')
    command = "sim {seed} {label}"
    assert load_job(write_sweep(tmp_path, {"command": command, "params": {"csv": "grid.csv"}})
                    ).tasks == [{"seed": 1, "label": "a b"}, {"seed": 2, "label": "c"}]
    assert load_job(write_sweep(tmp_path, {"command": command, "params": {"jsonl": "grid.jsonl"}})
                    ).tasks == [{"seed": 1, "label": "x"}, {"seed": 2, "label": "y"}]
    rows = [{"seed": 5, "label": "z"}]
    assert load_job(write_sweep(tmp_path, {"command": command, "params": rows})).tasks == rows


def test_csv_cells_that_read_as_numbers_are_numbers_and_format(tmp_path: Path) -> None:
    """{alpha:.2f} on a CSV value works: numbers are typed; '007' and 'nan' stay strings; a
    byte-order mark (Excel's UTF-8 CSV) is not part of the first header."""
    (tmp_path / "grid.csv").write_bytes(
        "\ufeffalpha,n,tag,big,odd\n0.5,3,007,1e3,nan\n-2,+4,x y,2.5E-1,1_000\n".encode()
    )
    run = {"command": "sim --alpha {alpha:.2f} --n {n:03d} --tag {tag}",
           "params": {"csv": "grid.csv"}}
    job = load_job(write_sweep(tmp_path, run))
    assert job.tasks == [
        {"alpha": 0.5, "n": 3, "tag": "007", "big": 1000.0, "odd": "nan"},
        {"alpha": -2, "n": 4, "tag": "x y", "big": 0.25, "odd": "1_000"},
    ]
    assert format_argv(job.command, job.tasks[0]) == [
        "sim", "--alpha", "0.50", "--n", "003", "--tag", "007"]


def test_function_tasks_from_a_csv_file_are_typed_rows(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text("def fit(row):\n    return row['alpha'] * 2\n")
    (tmp_path / "rows.csv").write_text("alpha,label\n0.25,a\n3,b\n")
    spec = {"name": "f", "cores": 2, "run": {"function": "model:fit", "tasks": {"csv": "rows.csv"}}}
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(spec))
    job = load_job(tmp_path / "f.yaml")
    assert job.tasks == [{"alpha": 0.25, "label": "a"}, {"alpha": 3, "label": "b"}]
    assert [job.function(t) for t in job.tasks] == [0.5, 6]


def test_a_value_stays_one_literal_argument() -> None:
    tokens = shlex.split("prog --tag={tag} '{tag}' {n:03d}")
    argv = format_argv(tokens, {"tag": "x; touch pwned", "n": 7})
    assert argv == ["prog", "--tag=x; touch pwned", "x; touch pwned", "007"]


@pytest.mark.parametrize(
    ("run", "field", "words"),
    [
        ({"command": "sim {seed} {tmp}", "params": {"seed": [1]}}, "run.command",
         ["unknown placeholder {tmp}", "seed"]),
        ({"command": "sim {}", "params": {"seed": [1]}}, "run.command", ["placeholder {}"]),
        ({"command": "sim {seed.real}", "params": {"seed": [1]}}, "run.command",
         ["{seed.real}"]),
        ({"command": "sim 'open", "params": {"seed": [1]}}, "run.command", ["cannot split"]),
        ({"command": "sim {seed:d}", "params": {"seed": ["a"]}}, "run.command",
         ["cannot format"]),
        ({"command": "sim", "function": "m:f", "params": {"a": [1]}}, "run", ["exactly one"]),
        ({"command": "sim"}, "run", ["'command' needs 'params'"]),
        ({"function": "m:f", "params": {"a": [1]}}, "run", ["'function' needs 'tasks'"]),
        ({"command": "sim", "params": {"a": [1]}, "tasks": [1]}, "run", ["not 'tasks'"]),
        ({"command": "sim", "params": {"a": [1]}, "timeout": "0s"}, "run.timeout", ["1s and 7d"]),
        ({"command": "sim", "params": {"a b": [1]}}, "run.params", ["identifiers"]),
        ({"command": "sim", "params": {"a": []}}, "run.params", ["a: a non-empty list"]),
        ({"command": "sim", "params": "seed"}, "run.params", ["accepted"]),
        ({"command": "sim", "params": {"csv": "absent.csv"}}, "run.params.csv",
         ["cannot read", "absent.csv"]),
    ],
)
def test_bad_sweeps_name_the_field(tmp_path: Path, run: dict, field: str, words: list[str]):
    found = problems(tmp_path, run)
    lines = [p for p in found if p.split(": ", 1)[0] == field]
    assert lines, found
    assert all(w in lines[0] for w in words), lines[0]


def test_a_jsonl_row_with_a_nested_value_is_refused(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text('{"seed": [1, 2]}\n')
    found = problems(tmp_path, {"command": "sim {seed}", "params": {"jsonl": "rows.jsonl"}})
    assert found[0].startswith("run.params.jsonl: row 1 of rows.jsonl")


def test_inputs_must_exist_and_be_inside_the_folder(tmp_path: Path) -> None:
    run = {"command": "sim {a}", "params": {"a": [1]}}
    found = problems(tmp_path, run, inputs=["absent.dat"])
    assert found == [f"inputs: 'absent.dat' does not exist in {tmp_path}"]
    for bad in (["/etc/passwd"], ["../x"], ["s3://bucket-only"], ["s3://b/folder/"]):
        assert problems(tmp_path, run, inputs=bad)[0].startswith("inputs: ")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "data").write_text("1")
    (tmp_path / "data").write_text("2")
    twice = problems(tmp_path, run, inputs=["data", "a/data"])
    assert "share the name ['data']" in twice[0]


def test_job_files_leave_out_results_environments_hidden_and_inputs(tmp_path: Path,
                                                                     monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("sim.py", "params.csv", "big/data.bin", "results/old/out.csv", ".git/HEAD",
                 "env/pyvenv.cfg", "env/lib/x.py", "__pycache__/sim.pyc", "lib/util.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    spec = parse_spec({"cores": 2, "inputs": ["big"],
                       "run": {"command": "python sim.py {a}", "params": {"a": [1]}}})
    files = job_files(tmp_path, spec)
    assert sorted(map(str, files)) == ["lib/util.py", "params.csv", "sim.py"]


def test_software_python_must_be_the_clients_minor_version() -> None:
    assert parse_spec({"cores": 2, "software": {"python": PYTHON}}).software.python == PYTHON
    with pytest.raises(SpecError) as info:
        parse_spec({"cores": 2, "software": {"python": "3.9"}})
    line = info.value.problems[0]
    assert line.startswith("software.python: ") and f"Python {PYTHON}" in line and "3.9" in line


@pytest.mark.parametrize("pin", ["dask==2020.1.0", "distributed<2000", "cloudpickle==1.0"])
def test_software_may_not_pin_the_dask_stack_elsewhere(pin: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({"cores": 2, "cloud": "aws", "software": {"pip": [pin]}})
    assert info.value.problems[0].startswith("software.pip: ")
    assert "conflicts with the client's" in info.value.problems[0]


def test_software_matching_pins_and_installed_packages_pass_on_the_sandbox() -> None:
    pins = [f"dask=={client_versions()['dask']}", "pyyaml>=5", "pydantic"]
    spec = parse_spec({"cores": 2, "software": {"pip": pins}})
    assert spec.software.pip == pins


def test_the_sandbox_refuses_a_package_this_python_lacks() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({"cores": 2, "software": {"pip": ["surely-not-installed-pkg>=1", "pyyaml<1"]}})
    line = info.value.problems[0]
    assert line.startswith("software: ") and "surely-not-installed-pkg" in line
    assert "'pyyaml<1' (found" in line and sys.prefix in line
    # On AWS the nodes install it at boot: no refusal.
    spec = parse_spec({"cores": 2, "cloud": "aws", "software": {"pip": ["surely-not-installed"]}})
    assert spec.software.pip == ["surely-not-installed"]


def test_a_bad_requirement_is_named() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({"cores": 2, "cloud": "aws", "software": {"pip": ["numpy>>1"]}})
    assert info.value.problems[0].startswith("software.pip: ") and "numpy>>1" in str(info.value)


def test_the_bootstrap_installs_the_software_with_the_exact_dask_stack() -> None:
    from datetime import UTC, datetime

    from burst import wheelhouse

    requirements = wheelhouse.requirements(("numpy>=1.26", "lab-tools; python_version>'3'"))
    script = bootstrap.render(bootstrap.NodeConfig(
        role="worker", cluster_id="c1", deadline=datetime.now(UTC),
        requirements=tuple(requirements)))
    install = next(line for line in script.splitlines() if "--find-links" in line)
    words = shlex.split(install)
    assert "numpy>=1.26" in words and "lab-tools; python_version>'3'" in words
    assert f"distributed=={client_versions()['distributed']}" in words


def test_command_task_code_unpickles_where_burst_is_not_installed(tmp_path: Path) -> None:
    """The nodes have no burst: the task callables, the attempt counter and a detached job's
    driver travel by value."""
    import cloudpickle
    from distributed.protocol.pickle import dumps

    from burst import drive, taskrun

    # Each as the runner hands it to distributed: the task (drive.ship), the scheduler
    # plugin and the function run on the scheduler; and the driver as submit stores it.
    cloudpickle.register_pickle_by_value(taskrun)
    cloudpickle.register_pickle_by_value(drive)
    try:
        task = cloudpickle.dumps(taskrun.CommandTask({"argv": ["echo", "{a}"]}))
        counter = dumps(taskrun.AttemptCounter())
        count = dumps(taskrun.attempts_on)
        function = cloudpickle.dumps(taskrun.FunctionTask(len, 5.0))
        driver = cloudpickle.dumps(drive.Driver(
            job_id="j", cluster_id="c", region="us-east-1", bucket="b", prefix="jobs/j",
            task=taskrun.FunctionTask(len), numbered=[(0, "ab")], command=False, retries=0,
            stop_at=0.0, reduce=sum, attempts_on=taskrun.attempts_on,
            attempt_counter=taskrun.AttemptCounter(), instance_ids=["i-1"]))
    finally:
        cloudpickle.unregister_pickle_by_value(taskrun)
        cloudpickle.unregister_pickle_by_value(drive)
    for name, payload in (("task", task), ("counter", counter), ("count", count),
                          ("function", function), ("driver", driver)):
        (tmp_path / name).write_bytes(payload)
    check = textwrap.dedent("""
        import pickle, sys, types
        sys.modules["burst"] = None  # importing burst now fails
        task, counter, count, function, driver = (
            pickle.load(open(n, "rb")) for n in ("task", "counter", "count", "function", "driver"))
        assert function.timeout == 5.0
        assert driver.numbered == [(0, "ab")] and driver.reduce([1, 2]) == 3
        counter.transition("k", "waiting", "processing")
        counter.transition("k", "processing", "waiting")
        counter.transition("k", "waiting", "processing")
        scheduler = types.SimpleNamespace(plugins={counter.name: counter})
        print(task.config["argv"], count(scheduler)["k"])
        """)
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ""}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["['echo',", "'{a}']", "2"]


def test_cli_refuses_a_missing_input_before_any_cloud_call(tmp_path: Path) -> None:
    from tests.conftest import BURST

    path = write_sweep(tmp_path, {"command": "sim {a}", "params": {"a": [1]}},
                       inputs=["absent.dat"])
    home = tmp_path / "home"
    done = subprocess.run([BURST, "run", str(path), "--json"], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "BURST_HOME": str(home)}, timeout=60)
    assert done.returncode == 2
    assert "inputs: 'absent.dat' does not exist" in done.stderr and done.stdout == ""
    assert not (tmp_path / "results").exists() and not home.exists()
    json.dumps(done.stderr)


def test_the_summary_shows_retries_and_each_failures_stderr() -> None:
    from rich.console import Console

    from burst.cli import summary

    manifest = {
        "job_id": "j", "status": "failed", "result": None,
        "tasks": {"total": 6, "done": 3, "failed": 3, "retried": 3},
        "cores": {"requested": 4, "worker_vcpus": 4}, "instances": [], "timings": {"run": 1.0},
        "teardown": {"verified": True, "leftovers": [], "errors": []},
        "cost": {"actual": "0.01", "cost_bound": "0.5", "price_source": "snapshot 2026-11-01"},
        "failures": [{"task": 1, "input": {"temp": 0}, "error": "exit code 2", "exit_code": 2,
                      "stderr_tail": "warming up\ntemperature must be positive, got 0.0"}],
    }
    console = Console(width=200, record=True)
    console.print(summary(manifest))
    text = console.export_text()
    assert "3 done, 3 failed, 3 retried of 6" in text
    assert "exit code 2: temperature must be positive, got 0.0" in text


def test_inputs_are_refused_for_a_function_job(tmp_path: Path) -> None:
    (tmp_path / "data.bin").write_text("x")
    with pytest.raises(SpecError) as info:
        parse_spec({"cores": 2, "inputs": ["data.bin"],
                    "run": {"function": "m:f", "tasks": [1]}})
    assert info.value.problems[0].startswith("inputs: inputs go with run.command")


def test_a_placeholder_inside_a_shell_script_is_refused() -> None:
    with pytest.raises(SpecError) as info:
        check_template("bash -c 'simulate --seed {seed}'", [{"seed": 1}])
    assert info.value.problems[0].startswith(
        "run.command: 'simulate --seed {seed}' would be read by bash as code")
    # As the script's arguments, values are never parsed by the shell.
    tokens = check_template("""sh -c 'simulate --seed "$1"' _ {seed}""", [{"seed": 1}])
    assert tokens[-1] == "{seed}"


# Each a way the security review found to hand a value to a shell or an interpreter as code.
@pytest.mark.parametrize("command", [
    'sh -ec "echo {v}"',
    'bash -lc "echo {v}"',
    'env sh -c "echo {v}"',
    'env FOO=1 sh -c "echo {v}"',
    '/usr/bin/env bash -c "echo {v}"',
    'sh -c -- "echo {v}"',
    "bash -o pipefail -c 'echo {v}'",
    "timeout 10 bash -c 'echo {v}'",
    'python -c "print({v})"',
    'python3.11 -c "print({v})"',
    "python -cprint({v})",
    "perl -e 'print {v}'",
    "awk '{{print {v}}}' data.txt",
    "sed s/a/{v}/ data.txt",
    "find . -exec sh -c 'echo {v}' ;",
    "{v} --seed 1",
])
def test_no_value_reaches_a_shell_or_an_interpreter_as_code(command) -> None:
    with pytest.raises(SpecError, match=r"^run\.command: ") as info:
        check_template(command, [{"v": "$(touch pwned)"}])
    assert "{v}" in info.value.problems[0]


@pytest.mark.parametrize("command", [
    """sh -c 'simulate --seed "$1"' _ {v}""",
    "python simulate.py --seed {v}",
    "python3 -u simulate.py --seed {v}",
    "env OMP_NUM_THREADS=1 python sim.py {v}",
    "bash run.sh {v}",
    "./simulate --seed {v}",
    "awk -f prog.awk data-{v}.txt",
])
def test_values_as_arguments_after_the_code_are_accepted(command) -> None:
    tokens = check_template(command, [{"v": "$(touch pwned)"}])
    assert any("{v}" in t for t in tokens)


@pytest.mark.parametrize("command", [
    "simulate --seed {v} > log.txt",
    "simulate --seed {v} >log.txt",
    "simulate --seed {v} 2> errors.txt",
    "simulate --seed {v} | tee log.txt",
    "simulate --seed {v} && echo done",
    "simulate --seed {v};echo done",
    "simulate < input.txt --seed {v}",
])
def test_shell_syntax_is_refused_with_how_to_write_output(command) -> None:
    """There is no shell: `> log.txt` would reach the program as two arguments."""
    with pytest.raises(SpecError) as info:
        check_template(command, [{"v": 1}])
    problem = info.value.problems[0]
    assert problem.startswith("run.command: '") and "is shell syntax" in problem
    assert "$BURST_OUTPUT" in problem


def test_quoted_shell_characters_are_plain_arguments() -> None:
    tokens = check_template("simulate --threshold '>5' --label 'a|b' --seed {v}", [{"v": 1}])
    assert tokens == ["simulate", "--threshold", ">5", "--label", "a|b", "--seed", "{v}"]


def program_problems(folder: Path, command: str, cloud: str = "sandbox") -> list[str]:
    path = folder / "p.yaml"
    fields = {"cloud": cloud} if cloud == "aws" else {}
    path.write_text(yaml.safe_dump({"name": "p", "cores": 2, **fields,
                                    "run": {"command": command, "params": {"seed": [1]}}}))
    with pytest.raises(SpecError) as info:
        load_job(path)
    return info.value.problems


@pytest.mark.parametrize("cloud", ["sandbox", "aws"])
def test_a_misspelt_program_is_refused_with_a_did_you_mean(tmp_path: Path, cloud: str) -> None:
    (tmp_path / "model.py").write_text("print(1)\n")
    assert program_problems(tmp_path, "pyhton model.py --seed {seed}", cloud) == [
        "run.command: the program 'pyhton' is neither a file of the spec's folder nor on the "
        "PATH (did you mean python?); accepted: a file next to the spec or a program on the "
        "PATH (checked on this machine, for the sandbox and AWS alike)"]


def test_a_missing_script_in_the_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    (tmp_path / "model.py").write_text("print(1)\n")
    (line,) = program_problems(tmp_path, "./run2.sh {seed}")
    assert line.startswith("run.command: the program './run2.sh' is not in the spec's folder")
    assert "(did you mean run.sh?)" in line
    (line,) = program_problems(tmp_path, "python modl.py --seed {seed}")
    assert line.startswith(f"run.command: python would run 'modl.py', which is not in the "
                           f"spec's folder {tmp_path.resolve()} (did you mean model.py?)")
    (line,) = program_problems(tmp_path, "env OMP_NUM_THREADS=1 python3 -u lib/modl.py {seed}")
    assert "python3 would run 'lib/modl.py'" in line
    (line,) = program_problems(tmp_path, "bash -e run1.sh {seed}")
    assert "bash would run 'run1.sh'" in line and "did you mean run.sh?" in line


def test_a_wrapped_program_is_checked_too(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text("print(1)\n")
    (tmp_path / "sim").write_text("#!/bin/sh\n")
    for command in ("env OMP_NUM_THREADS=1 pyhton model.py {seed}",
                    "timeout -s KILL 10m nice -n 5 pyhton model.py {seed}"):
        (line,) = program_problems(tmp_path, command)
        assert line.startswith("run.command: the program 'pyhton' is neither a file")
        assert "did you mean python?" in line
    (line,) = program_problems(tmp_path, "env X=1 sim {seed}")
    assert line == ("run.command: 'sim' is a file of the spec's folder, which a wrapper looks "
                    "for on the PATH; accepted: ./sim")


@pytest.mark.parametrize("command", [
    "timeout 10m ./run.sh {seed}",            # wrapped, a program of the folder
    "env A=1 B=2 python3 model.py {seed}",    # wrapped, on the PATH
    "python model.py --seed {seed}",          # a script of the folder
    "python -c 'import sys; print(sys.argv)' {seed}",   # code, not a file
    "python -m json.tool {seed}",              # a module
    "./run.sh {seed}",                         # a program of the folder
    "run.sh {seed}",                           # ... named as a file of the folder
    "sh -c 'echo \"$1\"' _ {seed}",            # a shell's code
    "python model.py data.csv {seed}",         # the script's arguments are data
    "echo {seed}",                             # on the PATH
])
def test_programs_that_exist_pass(tmp_path: Path, command: str) -> None:
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    (tmp_path / "model.py").write_text("print(1)\n")
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "cores": 2,
                                    "run": {"command": command, "params": {"seed": [1]}}}))
    assert load_job(path).command


def test_an_absolute_program_is_checked_here_on_the_sandbox_only(tmp_path: Path) -> None:
    (line,) = program_problems(tmp_path, "/opt/absent/tool {seed}")
    assert line == "run.command: the program '/opt/absent/tool' does not exist here"
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "cores": 2, "cloud": "aws", "run": {
        "command": "/opt/absent/tool {seed}", "params": {"seed": [1]}}}))
    assert load_job(path).command[0] == "/opt/absent/tool"  # the image may hold it


def test_the_csv_sweep_example_validates_plans_and_its_first_row_runs(tmp_path: Path) -> None:
    """jobs/csv_sweep.yaml: one task per row of points.csv, numbers typed so {temp:.2f}
    formats; it plans without a cloud; its first task's command, run here as a node would
    (cwd = the job's folder, $BURST_OUTPUT an empty folder), writes ising.csv."""
    from typer.testing import CliRunner

    from burst.cli import app

    example = Path(__file__).resolve().parents[1] / "jobs" / "csv_sweep.yaml"
    job = load_job(example)
    assert job.tasks[0] == {"seed": 1, "temp": 0.25, "sweeps": 200}
    assert job.tasks[4] == {"seed": 5, "temp": 2.269, "sweeps": 300} and len(job.tasks) == 6
    argv = format_argv(job.command, job.tasks[4])
    assert argv == ["python", "simulate.py", "--seed", "5", "--temp", "2.27", "--sweeps", "300"]
    planned = CliRunner().invoke(app, ["plan", str(example), "--json"])
    assert planned.exit_code == 0 and json.loads(planned.stdout)["worker_cores"] >= 4
    output = tmp_path / "output"
    output.mkdir()
    first = format_argv(job.command, job.tasks[0])
    done = subprocess.run([sys.executable, *first[1:]], cwd=job.folder, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "BURST_OUTPUT": str(output)})
    assert done.returncode == 0, done.stderr
    rows = (output / "ising.csv").read_text().splitlines()
    assert rows[0] == "sweep,energy_per_spin,magnetisation" and len(rows) == 201
