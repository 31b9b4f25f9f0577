"""Hostile specs (issue 12): each is refused with exit 2 before any work, quickly and with
bounded memory: YAML alias bombs and duplicate keys, huge task counts, grids, format widths
and arguments, file fields that leave the job's folder, markup in error values, and
functions from outside the job's folder."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from burst.cli import app
from burst.job import load_job
from burst.spec import SpecError, load_spec

PI = "import random\n\ndef sample(seed):\n    return seed\n"


def spec_file(folder: Path, text: str) -> Path:
    path = folder / "spec.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def refused(path: Path) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_job(path)
    return info.value.problems


# --------------------------------------------------------------------------- YAML


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True):
        levels.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
    path = spec_file(tmp_path, "\n".join(levels) + "\ncores: 4\nrun: {function: m:f, tasks: *i}\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)  # 9**9 values if expanded: it must not be
    assert info.value.problems[0].startswith("spec: its aliases (*name) expand it to more than")


def test_a_few_aliases_are_still_fine(tmp_path: Path) -> None:
    path = spec_file(tmp_path, """\
        cores: &n 4
        min_cores: *n
        run: {function: m:f, tasks: [1, 2]}
    """)
    assert load_spec(path).min_cores == 4


@pytest.mark.parametrize(("text", "key", "lines"), [
    ("cores: 4\nname: a\ncores: 8\nrun: {function: m:f, tasks: [1]}\n", "cores", (1, 3)),
    ("cores: 4\nrun:\n  function: m:f\n  tasks: [1]\n  retries: 1\n  retries: 3\n", "retries",
     (5, 6)),
])
def test_duplicate_keys_are_refused_with_the_key_and_lines(tmp_path, text, key, lines) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(spec_file(tmp_path, text))
    assert info.value.problems == [
        f"{key}: the key {key!r} appears twice in the same mapping (line {lines[0]} and line "
        f"{lines[1]}); accepted: each key once"
    ]


def test_deep_nesting_is_a_spec_error(tmp_path: Path) -> None:
    path = spec_file(tmp_path, "cores: 4\nx: " + "[" * 1200 + "]" * 1200 + "\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert "nested too deeply" in info.value.problems[0]


# --------------------------------------------------------------------------- paths


def sweep_spec(folder: Path, run: dict[str, Any], **fields: Any) -> Path:
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "cores": 2, "run": run, **fields}))
    return path


COMMAND = {"command": "cat {a}", "params": {"a": [1]}}


@pytest.mark.parametrize(("run", "fields", "field"), [
    ({"command": "cat {a}", "params": {"csv": "/etc/passwd"}}, {}, "run.params"),
    ({"command": "cat {a}", "params": {"jsonl": "../up.jsonl"}}, {}, "run.params"),
    ({"function": "m:f", "tasks": {"jsonl": "/etc/passwd"}}, {}, "run.tasks.jsonl"),
    ({"function": "m:f", "tasks": {"csv": "data/../../up.csv"}}, {}, "run.tasks.csv"),
    ({"function": "m:f", "tasks": {"csv": "~/rows.csv"}}, {}, "run.tasks.csv"),
    (COMMAND, {"inputs": ["/etc"]}, "inputs"),
    (COMMAND, {"inputs": ["data/../../x"]}, "inputs"),
    (COMMAND, {"outputs": "/tmp/results"}, "outputs"),
    (COMMAND, {"outputs": "../results"}, "outputs"),
])
def test_file_fields_are_relative_without_dotdot(tmp_path, run, fields, field) -> None:
    problems = refused(sweep_spec(tmp_path, run, **fields))
    assert len(problems) == 1 and problems[0].startswith(f"{field}: ")
    assert "relative and without '..', is accepted" in problems[0]


@pytest.mark.parametrize("item", ["s3://lab/ref/*.fa", "s3://lab/ref/genome?.fa",
                                  "s3://lab/${aws:username}/x", "s3://*/key"])
def test_s3_inputs_name_one_exact_object(tmp_path, item) -> None:
    problems = refused(sweep_spec(tmp_path, COMMAND, inputs=[item]))
    assert problems[0].startswith(f"inputs: {item!r}: ")
    assert "is not accepted in an s3:// input" in problems[0]


def test_symbolic_links_out_of_the_folder_are_refused_in_every_file_field(tmp_path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "rows.csv").write_text("a\n1\n")
    (outside / "rows.jsonl").write_text('{"a": 1}\n')
    job = tmp_path / "job"
    (job / "data").mkdir(parents=True)
    (job / "grid.csv").symlink_to(outside / "rows.csv")
    (job / "grid.jsonl").symlink_to(outside / "rows.jsonl")
    (job / "data" / "passwd-link").symlink_to(outside / "rows.csv")
    (job / "m.py").write_text("def f(x):\n    return x\n")
    cases = [
        ({"command": "cat {a}", "params": {"csv": "grid.csv"}}, {}, "run.params.csv"),
        ({"command": "cat {a}", "params": {"jsonl": "grid.jsonl"}}, {}, "run.params.jsonl"),
        ({"function": "m:f", "tasks": {"csv": "grid.csv"}}, {}, "run.tasks.csv"),
        ({"function": "m:f", "tasks": {"jsonl": "grid.jsonl"}}, {}, "run.tasks.jsonl"),
        (COMMAND, {"inputs": ["grid.csv"]}, "inputs"),
        (COMMAND, {"inputs": ["data"]}, "inputs"),
    ]
    for run, fields, field in cases:
        problems = refused(sweep_spec(job, run, **fields))
        assert problems[0].startswith(f"{field}: "), problems
        assert "symbolic link out of the spec's folder" in problems[0]
        assert str(outside / "rows.") in problems[0]


def test_a_link_out_of_the_folder_never_ships_with_a_command_job(tmp_path) -> None:
    (tmp_path / "sim.py").write_text("print(1)\n")
    (tmp_path / "passwd-link").symlink_to("/etc/passwd")
    problems = refused(sweep_spec(tmp_path, {"command": "python sim.py {a}",
                                             "params": {"a": [1]}}))
    assert problems == ["run.command: 'passwd-link' is a symbolic link out of the spec's folder "
                        "(to '/etc/passwd'); accepted: files inside the folder (copy the file in)"]


def test_links_that_stay_inside_the_folder_are_fine(tmp_path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rows.csv").write_text("a\n1\n2\n")
    (tmp_path / "grid.csv").symlink_to(tmp_path / "data" / "rows.csv")
    (tmp_path / "data" / "alias.csv").symlink_to("rows.csv")
    job = load_job(sweep_spec(tmp_path, {"command": "cat {a}", "params": {"csv": "grid.csv"}},
                              inputs=["data"]))
    assert job.tasks == [{"a": 1}, {"a": 2}]


# --------------------------------------------------------------------------- errors as text


def test_error_lines_print_values_literally_no_emoji_no_markup(tmp_path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"cores": 2, "name": ":x: [red]boom[/red] [bold]",
                                    "run": {"function": "m:f", "tasks": [1]}}))
    done = CliRunner().invoke(app, ["plan", str(path)])
    assert done.exit_code == 2
    line = next(x for x in done.stderr.splitlines() if x.startswith("error: name:"))
    assert "(got ':x: [red]boom[/red] [bold]')" in line
    assert "\u274c" not in done.stderr  # the emoji rich would have made of :x:


# --------------------------------------------------------------------------- sizes


def test_a_huge_range_of_tasks_is_refused_before_it_is_listed(tmp_path) -> None:
    (tmp_path / "m.py").write_text("def f(x):\n    return x\n")
    problems = refused(sweep_spec(tmp_path, {"function": "m:f", "tasks": {"range": 10**10}}))
    assert problems == ["run.tasks.range: these bounds make 10,000,000,000 tasks; accepted: at "
                        "most 1,000,000 tasks per job (got 10000000000)"]


def test_a_huge_grid_is_refused_before_its_product_is_made(tmp_path) -> None:
    run = {"command": "sim {a} {b}",
           "params": {"a": {"range": 200_000}, "b": {"range": [0, 400_000, 2]}}}
    problems = refused(sweep_spec(tmp_path, run))
    assert problems[0].startswith(
        "run.params: the grid's 200,000 x 200,000 values make 40,000,000,000 tasks; accepted: "
        "at most 1,000,000 tasks per job")


def test_the_task_cap_itself_is_accepted(tmp_path) -> None:
    from burst.spec import MAX_TASKS, parse_spec

    run = {"command": "sim {a} {b}", "params": {"a": {"range": 1000}, "b": {"range": 1000}}}
    assert parse_spec({"cores": 2, "run": run}).run.params["a"].range == 1000
    assert MAX_TASKS == 1000 * 1000


def test_a_file_with_too_many_rows_stops_at_the_cap(tmp_path, monkeypatch) -> None:
    from burst import sweep

    monkeypatch.setattr(sweep, "MAX_TASKS", 5)
    (tmp_path / "grid.csv").write_text("a\n" + "1\n" * 6)
    problems = refused(sweep_spec(tmp_path, {"command": "sim {a}", "params": {"csv": "grid.csv"}}))
    assert problems == ["run.params.csv: 'grid.csv' has more than 5 rows; accepted: at most 5 "
                        "tasks per job"]


@pytest.mark.parametrize(("command", "words"), [
    ("sim {a:>4000000000}", "the width or precision 4,000,000,000 in {a:>4000000000} is too big"),
    ("sim {a:.5000f}", "the width or precision 5,000 in {a:.5000f} is too big"),
    ("sim {a:{a}}", "the format of {a:{a}} holds a placeholder"),
])
def test_format_widths_are_bounded(tmp_path, command, words) -> None:
    problems = refused(sweep_spec(tmp_path, {"command": command, "params": {"a": [1]}}))
    assert words in problems[0] and problems[0].startswith("run.command: ")


def test_an_argument_too_long_for_the_kernel_is_refused(tmp_path) -> None:
    (tmp_path / "grid.jsonl").write_text('{"a": "x"}\n{"a": "' + "y" * 200_000 + '"}\n')
    problems = refused(sweep_spec(tmp_path, {"command": "sim {a}",
                                             "params": {"jsonl": "grid.jsonl"}}))
    assert problems == ["run.command: task 1's command line is 200,003 bytes, its longest "
                        "argument 200,000; accepted: arguments up to 131,072 bytes and "
                        "1,048,576 in all (pass large values in a file)"]


def test_a_format_with_an_alignment_is_not_shell_syntax(tmp_path) -> None:
    job = load_job(sweep_spec(tmp_path, {"command": "sim {a:>5} {b:<3}",
                                         "params": {"a": [1], "b": [2]}}))
    assert job.command == ["sim", "{a:>5}", "{b:<3}"]
