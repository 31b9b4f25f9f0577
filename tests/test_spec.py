"""Tests for the spec layer: durations, validation, job loading and `burst run` refusals."""

from __future__ import annotations

import json
import sys
import textwrap
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from burst.catalog import families
from burst.cli import EXIT_BAD_INPUT, app
from burst.job import Job, job_from_spec, load_job
from burst.spec import (
    JobSpec,
    RunSpec,
    SpecError,
    format_duration,
    parse_duration,
    parse_spec,
)

# --------------------------------------------------------------------------- helpers

VALID_RUN = {"function": "os:getcwd", "tasks": [1, 2, 3]}


def minimal(**fields: Any) -> dict[str, Any]:
    """A minimal valid spec, with some fields replaced or added."""
    return {"cores": 8, "run": dict(VALID_RUN), **fields}


def problems_of(data: Any) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    assert info.value.problems, "a SpecError must carry at least one problem line"
    assert str(info.value) == "; ".join(info.value.problems)
    return info.value.problems


def line_for(problems: list[str], field: str) -> str:
    """The one problem line about `field` (its dotted path, before the colon)."""
    lines = [p for p in problems if p.split(": ", 1)[0] == field]
    assert lines, f"no problem names {field!r}: {problems}"
    return lines[0]


def unique_module() -> str:
    # importlib caches modules in sys.modules: a fresh name per test keeps tests independent.
    return f"burst_test_mod_{uuid.uuid4().hex}"


@pytest.fixture(autouse=True)
def _restore_import_state(monkeypatch: pytest.MonkeyPatch):
    """load_job puts the spec's folder on sys.path and imports modules: undo both after a test."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("burst_test_mod_"):
            del sys.modules[name]


def write_job(
    folder: Path,
    *,
    module_source: str | None = "def work(x):\n    return x * 2\n",
    function: str = "work",
    tasks: Any = (1, 2, 3),
    reduce: str | None = None,
    extra: dict[str, Any] | None = None,
    module: str | None = None,
) -> tuple[Path, str]:
    """Write spec.yaml and (unless module_source is None) its module next to it."""
    module = module or unique_module()
    if module_source is not None:
        (folder / f"{module}.py").write_text(textwrap.dedent(module_source))
    run: dict[str, Any] = {
        "function": f"{module}:{function}",
        "tasks": list(tasks) if isinstance(tasks, tuple) else tasks,
    }
    if reduce is not None:
        run["reduce"] = f"{module}:{reduce}"
    spec = {"name": "t", "cores": 4, "run": run, **(extra or {})}
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, module


# --------------------------------------------------------------------------- parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("2h", timedelta(hours=2)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d", timedelta(days=1)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        (" 2 h 5 m ", timedelta(hours=2, minutes=5)),
        ("0s", timedelta(0)),
        ("10s", timedelta(seconds=10)),
        ("PT5M", timedelta(minutes=5)),  # ISO 8601, as a manifest's spec writes durations
        ("P1DT2H", timedelta(days=1, hours=2)),
    ],
)
def test_parse_duration_strings(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        (90, timedelta(seconds=90)),
        (0, timedelta(0)),
        (3600, timedelta(hours=1)),
        (1.5, timedelta(seconds=1.5)),
        (86400.0, timedelta(days=1)),
    ],
)
def test_parse_duration_numbers_are_seconds(number: float, expected: timedelta) -> None:
    assert parse_duration(number) == expected


def test_parse_duration_passes_timedelta_through() -> None:
    value = timedelta(minutes=7)
    assert parse_duration(value) is value


@pytest.mark.parametrize(
    "bad",
    ["", "   ", "abc", "5x", "-3m", "1h1h", "m", "h30", "1.5h", "30m1h", None, True, False, [], {},
     "P", "PT-5M", "Pfoo"],
)
def test_parse_duration_rejects(bad: Any) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(bad)
    # The message says what is accepted.
    assert "'90s'" in str(info.value) and "'1h30m'" in str(info.value)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(hours=2), "2h"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(days=1, seconds=5), "24h5s"),
    ],
)
def test_format_duration(value: timedelta, text: str) -> None:
    assert format_duration(value) == text
    assert parse_duration(text) == value


# --------------------------------------------------------------------------- parse_spec: valid


def test_minimal_spec_gets_defaults() -> None:
    spec = parse_spec({"cores": 8})
    assert isinstance(spec, JobSpec)
    assert spec.cores == 8
    assert spec.name == "job"
    assert spec.max_runtime == timedelta(hours=1)
    assert spec.grace == timedelta(minutes=5)
    assert spec.cloud == "sandbox"
    assert spec.region == "us-east-1"
    assert spec.spot == "spot-with-fallback"
    assert spec.instance_types == ["c5", "c6i", "m5"]
    assert spec.scheduler_instance_type == "m5.large"
    assert spec.run is None
    assert spec.outputs == "results"
    assert spec.architecture == "x86_64"
    assert spec.min_memory_per_core is None
    assert spec.max_pool_share == 0.4
    assert spec.min_cores == 8  # defaults to the cores
    assert spec.max_hourly is None and spec.max_cost is None


def test_full_spec_is_parsed() -> None:
    spec = parse_spec(
        {
            "name": "pi-estimate_2",
            "cores": 100,
            "max_runtime": "1h30m",
            "grace": "90s",
            "cloud": "aws",
            "region": "eu-west-2",
            "spot": "on-demand",
            "instance_types": ["c5", "m5.xlarge"],
            "scheduler_instance_type": "c5.large",
            "run": {
                "function": "pi:sample",
                "tasks": {"range": [0, 10, 2]},
                "reduce": "pi:estimate",
                "retries": 3,
            },
            "outputs": "out",
        }
    )
    assert spec.max_runtime == timedelta(hours=1, minutes=30)
    assert spec.grace == timedelta(seconds=90)
    assert spec.region == "eu-west-2"
    assert spec.instance_types == ["c5", "m5.xlarge"]
    assert isinstance(spec.run, RunSpec)
    assert spec.run.retries == 3
    assert spec.run.tasks.values() == [0, 2, 4, 6, 8]


@pytest.mark.parametrize("policy", ["spot", "spot-with-fallback", "on-demand"])
def test_spot_policies_accepted(policy: str) -> None:
    assert parse_spec({"cores": 1, "spot": policy}).spot == policy


@pytest.mark.parametrize("cloud", ["sandbox", "aws"])
def test_clouds_accepted(cloud: str) -> None:
    assert parse_spec({"cores": 1, "cloud": cloud}).cloud == cloud


@pytest.mark.parametrize("cores", [1, 8, 100_000])
def test_cores_bounds_accepted(cores: int) -> None:
    assert parse_spec({"cores": cores}).cores == cores


@pytest.mark.parametrize("duration", ["10s", "7d", 10, "2h"])
def test_max_runtime_bounds_accepted(duration: Any) -> None:
    assert parse_spec({"cores": 1, "max_runtime": duration}).max_runtime == parse_duration(duration)


@pytest.mark.parametrize("types", [["c5"], ["c5.xlarge"], sorted(families()), ["m5", "c6i.large"]])
def test_known_instance_types_accepted(types: list[str]) -> None:
    assert parse_spec({"cores": 1, "instance_types": types}).instance_types == types


def test_spec_is_frozen() -> None:
    spec = parse_spec({"cores": 8})
    with pytest.raises(ValueError):
        spec.cores = 9  # type: ignore[misc]


# --------------------------------------------------------------------------- parse_spec: invalid


@pytest.mark.parametrize(
    ("fields", "field", "shown", "accepted"),
    [
        ({"cores": -4}, "cores", "-4", "greater than 0"),
        ({"cores": 0}, "cores", "0", "greater than 0"),
        ({"cores": "many"}, "cores", "'many'", "valid integer"),
        ({"cores": 8.5}, "cores", "8.5", "valid integer"),
        ({"cores": 100_001}, "cores", "100001", "less than or equal to 100000"),
        ({"max_runtime": "soon"}, "max_runtime", "'soon'", "'1h30m' is accepted"),
        ({"max_runtime": "5s"}, "max_runtime", "'5s'", "between 10s and 7d"),
        ({"max_runtime": "8d"}, "max_runtime", "'8d'", "between 10s and 7d"),
        ({"grace": "later"}, "grace", "'later'", "'1h30m' is accepted"),
        ({"cloud": "gcp"}, "cloud", "'gcp'", "'sandbox' or 'aws'"),
        ({"spot": "cheap"}, "spot", "'cheap'", "'spot', 'spot-with-fallback' or 'on-demand'"),
        ({"region": "mars"}, "region", "'mars'", "pattern"),
        ({"name": "bad name!"}, "name", "'bad name!'", "pattern"),
        ({"instance_types": ["z9.huge"]}, "instance_types", "['z9.huge']", "accepted: families"),
        ({"instance_types": []}, "instance_types", "[]", "at least 1 item"),
        (
            {"scheduler_instance_type": "c5"},
            "scheduler_instance_type",
            "'c5'",
            "exact instance type",
        ),
        (
            {"run": {"function": "pi_sample", "tasks": [1]}},
            "run.function",
            "'pi_sample'",
            "'module:callable'",
        ),
        (
            {"run": {"function": "pi:sample", "tasks": [1], "reduce": "estimate"}},
            "run.reduce",
            "'estimate'",
            "'module:callable'",
        ),
        (
            {"run": {"function": "pi:sample", "tasks": [1], "retries": 11}},
            "run.retries",
            "11",
            "less than or equal to 10",
        ),
        (
            {"run": {"function": "pi:sample", "tasks": {"range": [1, 5, 0]}}},
            "run.tasks.range",
            "[1, 5, 0]",
            "step != 0",
        ),
    ],
)
def test_bad_field_names_field_value_and_what_is_accepted(
    fields: dict[str, Any], field: str, shown: str, accepted: str
) -> None:
    line = line_for(problems_of(minimal(**fields)), field)
    assert f"(got {shown})" in line
    assert accepted in line


def test_instance_types_error_lists_families() -> None:
    line = line_for(problems_of(minimal(instance_types=["c5", "z9.huge"])), "instance_types")
    assert "['z9.huge']" in line.split(";")[0]  # only the unknown one is called unknown
    for family in families():
        assert repr(family) in line


def test_unknown_top_level_field_lists_accepted_fields() -> None:
    problems = problems_of(minimal(coress=8))
    line = line_for(problems, "coress")
    assert "unknown field" in line
    assert "(got 8)" in line
    accepted = line.split("accepted: ", 1)[1].split(" (got")[0].split(", ")
    assert accepted == sorted(JobSpec.model_fields)
    assert "cores" in accepted


def test_a_misspelt_field_gets_a_did_you_mean() -> None:
    line = line_for(problems_of(minimal(max_runtme="1h")), "max_runtme")
    assert line.startswith("max_runtme: unknown field (did you mean max_runtime?); accepted: ")
    run = {**VALID_RUN, "retires": 2}
    line = line_for(problems_of(minimal(run=run)), "run.retires")
    assert "(did you mean retries?)" in line
    line = line_for(problems_of(minimal(zzzz=1)), "zzzz")
    assert "did you mean" not in line and line.startswith("zzzz: unknown field; accepted: ")


def test_unknown_field_inside_run_lists_run_fields() -> None:
    run = {**VALID_RUN, "retry": 3}
    line = line_for(problems_of(minimal(run=run)), "run.retry")
    assert "unknown field" in line
    assert "(got 3)" in line
    accepted = line.split("accepted: ", 1)[1].split(" (got")[0].split(", ")
    assert accepted == sorted(RunSpec.model_fields)


def test_missing_cores_is_named() -> None:
    line = line_for(problems_of({"name": "x"}), "cores")
    assert "required" in line.lower()


def test_missing_function_in_run_is_named() -> None:
    line = line_for(problems_of(minimal(run={"tasks": [1]})), "run")
    assert "exactly one of 'function'" in line and "'command'" in line


def test_every_bad_field_is_reported_at_once() -> None:
    problems = problems_of(minimal(cores=-4, cloud="gcp", spot="cheap", region="mars"))
    for field in ("cores", "cloud", "spot", "region"):
        line_for(problems, field)


def test_grace_far_beyond_runtime_is_rejected() -> None:
    problems = problems_of(minimal(max_runtime="1h", grace="3h"))
    assert any("grace must not exceed max_runtime" in p for p in problems)


def test_negative_max_runtime_is_rejected() -> None:
    line = line_for(problems_of(minimal(max_runtime=-60)), "max_runtime")
    assert "(got -60)" in line and "is accepted" in line


@pytest.mark.parametrize("data", [None, [], ["cores", 8], "cores: 8", 8])
def test_non_mapping_spec(data: Any) -> None:
    problems = problems_of(data)
    assert problems == [f"spec: a mapping of fields is accepted (got {type(data).__name__})"]


@pytest.mark.parametrize(
    ("tasks", "values"),
    [
        ({"range": 5}, [0, 1, 2, 3, 4]),
        ({"range": [2, 10, 2]}, [2, 4, 6, 8]),
        ({"range": [3, 6]}, [3, 4, 5]),
        ({"range": [5, 0, -2]}, [5, 3, 1]),
    ],
)
def test_task_ranges(tasks: dict, values: list[int]) -> None:
    spec = parse_spec(minimal(run={"function": "m:f", "tasks": tasks}))
    assert spec.run is not None
    assert spec.run.tasks.values() == values


@pytest.mark.parametrize("bounds", [[1, 5, 0], [0, 0, 0], [], [1, 2, 3, 4]])
def test_bad_task_range_is_rejected(bounds: list[int]) -> None:
    problems = problems_of(minimal(run={"function": "m:f", "tasks": {"range": bounds}}))
    line = line_for(problems, "run.tasks.range")
    assert f"(got {bounds!r})" in line
    assert "[start, stop, step] with step != 0 is accepted" in line


# --------------------------------------------------------------------------- load_job: files


def test_load_job_valid(tmp_path: Path) -> None:
    path, module = write_job(tmp_path, tasks=(1, 2, 3))
    job = load_job(path)
    assert isinstance(job, Job)
    assert job.spec.cores == 4
    assert job.folder == tmp_path.resolve()
    assert job.tasks == [1, 2, 3]
    assert callable(job.function)
    assert [job.function(t) for t in job.tasks] == [2, 4, 6]
    assert job.function.__module__ == module
    assert job.reduce is None


def test_load_job_accepts_str_path(tmp_path: Path) -> None:
    path, _ = write_job(tmp_path)
    assert load_job(str(path)).tasks == [1, 2, 3]


def test_load_job_overrides(tmp_path: Path) -> None:
    path, _ = write_job(tmp_path)
    job = load_job(path, overrides={"cores": 64, "spot": "on-demand"})
    assert job.spec.cores == 64
    assert job.spec.spot == "on-demand"


def test_load_job_overrides_are_validated(tmp_path: Path) -> None:
    path, _ = write_job(tmp_path)
    with pytest.raises(SpecError) as info:
        load_job(path, overrides={"cores": -1})
    assert "(got -1)" in line_for(info.value.problems, "cores")


def test_load_job_with_reduce(tmp_path: Path) -> None:
    source = """
        def work(x):
            return x + 1

        def total(results):
            return sum(results)
    """
    path, _ = write_job(tmp_path, module_source=source, reduce="total", tasks=(1, 2, 3))
    job = load_job(path)
    assert job.reduce is not None
    assert job.reduce([job.function(t) for t in job.tasks]) == 9


def test_load_job_dotted_attribute(tmp_path: Path) -> None:
    source = """
        class Tools:
            @staticmethod
            def square(x):
                return x * x
    """
    path, _ = write_job(tmp_path, module_source=source, function="Tools.square")
    assert load_job(path).function(7) == 49


def test_load_job_spec_in_subfolder_imports_next_to_spec(tmp_path: Path) -> None:
    folder = tmp_path / "nested" / "job"
    folder.mkdir(parents=True)
    path, _ = write_job(folder)
    job = load_job(path)
    assert job.folder == folder.resolve()
    assert job.function(5) == 10


@pytest.mark.parametrize(
    ("tasks", "expected"),
    [
        ({"range": 5}, [0, 1, 2, 3, 4]),
        ({"range": [2, 10, 2]}, [2, 4, 6, 8]),
        (["a", {"k": 1}, [1, 2], None, 3.5], ["a", {"k": 1}, [1, 2], None, 3.5]),
    ],
)
def test_load_job_tasks(tmp_path: Path, tasks: Any, expected: list[Any]) -> None:
    path, _ = write_job(tmp_path, tasks=tasks)
    assert load_job(path).tasks == expected


def test_load_job_tasks_from_jsonl(tmp_path: Path) -> None:
    rows = [{"seed": 1}, {"seed": 2, "n": [1, 2]}, "text", 7]
    (tmp_path / "tasks.jsonl").write_text(
        "\n".join(json.dumps(r) for r in rows[:2])
        + "\n\n   \n"
        + "\n".join(json.dumps(r) for r in rows[2:])
        + "\n"
    )
    path, _ = write_job(tmp_path, tasks={"jsonl": "tasks.jsonl"})
    assert load_job(path).tasks == rows


def test_load_job_jsonl_missing_file(tmp_path: Path) -> None:
    path, _ = write_job(tmp_path, tasks={"jsonl": "absent.jsonl"})
    with pytest.raises(SpecError) as info:
        load_job(path)
    line = line_for(info.value.problems, "run.tasks.jsonl")
    assert "absent.jsonl" in line


def test_load_job_jsonl_bad_line(tmp_path: Path) -> None:
    (tmp_path / "tasks.jsonl").write_text('{"seed": 1}\n{not json\n')
    path, _ = write_job(tmp_path, tasks={"jsonl": "tasks.jsonl"})
    with pytest.raises(SpecError) as info:
        load_job(path)
    assert "tasks.jsonl" in line_for(info.value.problems, "run.tasks.jsonl")


@pytest.mark.parametrize("tasks", [[], {"range": 0}, {"range": [5, 2]}])
def test_load_job_empty_task_list(tmp_path: Path, tasks: Any) -> None:
    path, _ = write_job(tmp_path, tasks=tasks)
    with pytest.raises(SpecError) as info:
        load_job(path)
    assert info.value.problems == ["run.tasks: at least one task is needed (got none)"]


def test_load_job_empty_jsonl(tmp_path: Path) -> None:
    (tmp_path / "tasks.jsonl").write_text("\n  \n")
    path, _ = write_job(tmp_path, tasks={"jsonl": "tasks.jsonl"})
    with pytest.raises(SpecError) as info:
        load_job(path)
    assert info.value.problems == ["run.tasks: at least one task is needed (got none)"]


def test_load_job_without_run_section(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("cores: 8\n")
    with pytest.raises(SpecError) as info:
        load_job(path)
    assert line_for(info.value.problems, "run")


def test_job_from_spec_without_run(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        job_from_spec(parse_spec({"cores": 2}), tmp_path)
    assert "'function' and 'tasks'" in line_for(info.value.problems, "run")


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n", ""])
def test_load_job_non_mapping_yaml(tmp_path: Path, text: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_job(path)
    (line,) = info.value.problems
    assert line.startswith("spec: a mapping of fields is accepted (got ")


@pytest.mark.parametrize("text", ["cores: [1, 2\n", "cores: 8\n  bad: indent\n", "a: b: c\n"])
def test_load_job_invalid_yaml(tmp_path: Path, text: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_job(path)
    (line,) = info.value.problems
    assert line.startswith("spec: ")
    assert "is not valid YAML" in line
    assert str(path) in line


def test_load_job_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as info:
        load_job(path)
    (line,) = info.value.problems
    assert line.startswith("spec: cannot read ")
    assert str(path) in line
    assert "No such file" in line


def test_load_job_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_job(tmp_path)
    assert info.value.problems[0].startswith("spec: cannot read ")


def test_load_job_bad_field_in_file(tmp_path: Path) -> None:
    path, _ = write_job(tmp_path, extra={"cores": -4})
    with pytest.raises(SpecError) as info:
        load_job(path)
    assert "(got -4)" in line_for(info.value.problems, "cores")


# --------------------------------------------------------------------------- load_job: imports


def test_function_module_missing(tmp_path: Path) -> None:
    path, module = write_job(tmp_path, module_source=None)
    with pytest.raises(SpecError) as info:
        load_job(path)
    (line,) = info.value.problems
    assert line.startswith(f"run.function: '{module}:work' is not a module of the spec's folder")
    assert f"(no {module}.py there; its modules: none)" in line
    assert "accepted: a module next to the spec, or run.allow_any_module: true" in line


def test_function_module_raises_at_import(tmp_path: Path) -> None:
    source = """
        raise RuntimeError("boom at import")

        def work(x):
            return x
    """
    path, module = write_job(tmp_path, module_source=source)
    with pytest.raises(SpecError) as info:
        load_job(path)
    (line,) = info.value.problems
    assert line.startswith("run.function: cannot import ")
    assert "RuntimeError: boom at import" in line


def test_function_module_syntax_error(tmp_path: Path) -> None:
    path, _ = write_job(tmp_path, module_source="def work(x:\n")
    with pytest.raises(SpecError) as info:
        load_job(path)
    assert "SyntaxError" in line_for(info.value.problems, "run.function")


def test_function_attribute_missing(tmp_path: Path) -> None:
    path, module = write_job(tmp_path, function="absent")
    with pytest.raises(SpecError) as info:
        load_job(path)
    (line,) = info.value.problems
    assert line.startswith("run.function: cannot import ")
    assert f"'{module}:absent'" in line
    assert "AttributeError" in line


def test_function_not_callable(tmp_path: Path) -> None:
    path, module = write_job(tmp_path, module_source="work = 42\n")
    with pytest.raises(SpecError) as info:
        load_job(path)
    assert info.value.problems == [f"run.function: '{module}:work' is not callable"]


def test_reduce_module_missing(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    module, missing = unique_module(), unique_module()
    (tmp_path / f"{module}.py").write_text("def work(x):\n    return x\n")
    path.write_text(
        yaml.safe_dump(
            {
                "cores": 2,
                "run": {"function": f"{module}:work", "tasks": [1], "reduce": f"{missing}:r"},
            }
        )
    )
    with pytest.raises(SpecError) as info:
        load_job(path)
    (line,) = info.value.problems
    assert line.startswith(f"run.reduce: '{missing}:r' is not a module of the spec's folder")
    assert f"its modules: {module})" in line


def test_reduce_attribute_missing(tmp_path: Path) -> None:
    path, module = write_job(tmp_path, reduce="absent")
    with pytest.raises(SpecError) as info:
        load_job(path)
    (line,) = info.value.problems
    assert line.startswith("run.reduce: cannot import ")
    assert f"'{module}:absent'" in line
    assert "AttributeError" in line


def test_reduce_not_callable(tmp_path: Path) -> None:
    source = "def work(x):\n    return x\n\ntotal = 'not a function'\n"
    path, module = write_job(tmp_path, module_source=source, reduce="total")
    with pytest.raises(SpecError) as info:
        load_job(path)
    assert info.value.problems == [f"run.reduce: '{module}:total' is not callable"]


# --------------------------------------------------------------------------- CLI refusals


@pytest.fixture()
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[CliRunner, Path, Path]:
    home = tmp_path / "burst-home"
    home.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("BURST_HOME", str(home))
    monkeypatch.chdir(work)
    return CliRunner(env={"BURST_HOME": str(home)}), home, work


def all_output(result: Any) -> str:
    text = result.output
    try:
        stderr = result.stderr
    except (ValueError, AttributeError):  # older click: stderr not captured separately
        stderr = ""
    return text + (stderr if stderr not in text else "")


def assert_nothing_started(home: Path, work: Path) -> None:
    assert not (work / "results").exists()
    assert not (home / "sandbox.json").exists()
    assert list(home.iterdir()) == []


def test_cli_run_bad_cores_exits_2(cli_env: tuple[CliRunner, Path, Path]) -> None:
    runner, home, work = cli_env
    path, _ = write_job(work, extra={"cores": -4})
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == EXIT_BAD_INPUT == 2, all_output(result)
    text = all_output(result)
    assert "cores" in text
    assert "-4" in text
    assert "nothing was started" in text
    assert result.stdout == ""  # stdout carries results alone
    assert_nothing_started(home, work)


def test_cli_run_unimportable_function_exits_2(cli_env: tuple[CliRunner, Path, Path]) -> None:
    runner, home, work = cli_env
    path, module = write_job(work, module_source=None)
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2, all_output(result)
    text = all_output(result)
    assert "run.function" in text
    assert module in text
    assert "nothing was started" in text
    assert_nothing_started(home, work)


def test_cli_run_missing_spec_exits_2(cli_env: tuple[CliRunner, Path, Path]) -> None:
    runner, home, work = cli_env
    result = runner.invoke(app, ["run", "absent.yaml"])
    assert result.exit_code == 2, all_output(result)
    assert "absent.yaml" in all_output(result)
    assert_nothing_started(home, work)


def test_cli_run_unknown_field_exits_2(cli_env: tuple[CliRunner, Path, Path]) -> None:
    runner, home, work = cli_env
    path, _ = write_job(work, extra={"coress": 8})
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2, all_output(result)
    text = all_output(result)
    assert "coress" in text and "unknown field" in text
    assert_nothing_started(home, work)


# ------------------------------------------------------------- bugs found and fixed


@pytest.mark.parametrize("value", [float("inf"), "1000000000d", "99999999999999999999s"])
def test_huge_max_runtime_is_a_spec_error(value: Any) -> None:
    problems = problems_of(minimal(max_runtime=value))
    assert problems == [line_for(problems, "max_runtime")]
    assert f"up to 7d (got {value!r})" in problems[0]


def test_negative_grace_is_rejected() -> None:
    problems = problems_of(minimal(max_runtime="1h", grace=-7200))
    assert problems == [line_for(problems, "grace")] and "(got -7200)" in problems[0]


def test_boolean_cores_is_rejected() -> None:
    problems = problems_of(minimal(cores=True))
    assert problems == ["cores: Input should be a valid integer (got True)"]


def test_unknown_field_in_task_range_lists_range_fields() -> None:
    problems = problems_of(minimal(run={"function": "m:f", "tasks": {"range": 5, "step": 2}}))
    assert problems == [
        "run.tasks: accepted: {range: N}, {range: [start, stop, step]}, {jsonl: file}, "
        "{csv: file} or a list (got {'range': 5, 'step': 2})"
    ]


def test_sandbox_hosts_only_its_regions() -> None:
    line = line_for(problems_of(minimal(region="ap-south-1")), "region")
    assert "'ap-south-1'" in line and "us-east-1" in line
    assert parse_spec(minimal(region="ap-south-1", cloud="aws")).region == "ap-south-1"


# ------------------------------------------------------------- capacity and budget fields


def test_capacity_and_budget_fields_are_parsed() -> None:
    from decimal import Decimal

    spec = parse_spec(
        minimal(
            cores=64,
            min_cores=48,
            architecture="arm64",
            instance_types=["c7g", "m7g"],
            min_memory_per_core=3,
            max_pool_share=0.25,
            max_hourly=12.5,
            max_cost="40.10",
        )
    )
    assert spec.min_cores == 48 and spec.architecture == "arm64"
    assert spec.min_memory_per_core == 3.0 and spec.max_pool_share == 0.25
    assert spec.max_hourly == Decimal("12.5") and spec.max_cost == Decimal("40.10")
    assert isinstance(spec.max_cost, Decimal)
    assert parse_spec(minimal(cores=5, min_cores=5)).min_cores == 5


@pytest.mark.parametrize(
    ("fields", "field", "shown", "accepted"),
    [
        ({"min_cores": 9}, "min_cores", "9", "between 1 and cores (8)"),
        ({"min_cores": 0}, "min_cores", "0", "greater than 0"),
        ({"min_cores": True}, "min_cores", "True", "valid integer"),
        ({"architecture": "sparc"}, "architecture", "'sparc'", "'x86_64' or 'arm64'"),
        ({"min_memory_per_core": -1}, "min_memory_per_core", "-1", "greater than 0"),
        ({"min_memory_per_core": "lots"}, "min_memory_per_core", "'lots'", "valid number"),
        ({"max_pool_share": 0}, "max_pool_share", "0", "greater than 0"),
        ({"max_pool_share": 1.5}, "max_pool_share", "1.5", "less than or equal to 1"),
        ({"max_pool_share": True}, "max_pool_share", "True", "a number is accepted"),
        ({"max_hourly": 0}, "max_hourly", "0", "greater than 0"),
        ({"max_hourly": "cheap"}, "max_hourly", "'cheap'", "valid decimal"),
        ({"max_cost": -5}, "max_cost", "-5", "greater than 0"),
        ({"max_cost": False}, "max_cost", "False", "a number is accepted"),
        ({"max_cost": "nan"}, "max_cost", "'nan'", "finite number"),
    ],
)
def test_bad_capacity_field_names_field_value_and_what_is_accepted(
    fields: dict[str, Any], field: str, shown: str, accepted: str
) -> None:
    line = line_for(problems_of(minimal(**fields)), field)
    assert f"(got {shown})" in line and accepted in line, line


def test_architecture_no_type_offers_is_one_line() -> None:
    problems = problems_of(minimal(instance_types=["c5", "m5"], architecture="arm64"))
    assert problems == [
        "architecture: no type in instance_types ['c5', 'm5'] is arm64 (got 'arm64'); "
        "accepted: 'x86_64' with these types, or arm64 families such as c7g, m7g"
    ]


def test_memory_no_type_offers_is_one_line() -> None:
    problems = problems_of(minimal(instance_types=["c6i", "m6i"], min_memory_per_core=6))
    assert problems == [
        "min_memory_per_core: no x86_64 type in instance_types ['c6i', 'm6i'] has 6 GiB per "
        "vCPU (got 6.0); accepted: up to 4 with these types, or families such as r6i, r7i"
    ]


def test_disk_gb_is_a_whole_number_of_gib_within_ebs_limits() -> None:
    assert parse_spec(minimal(disk_gb=100)).disk_gb == 100
    assert parse_spec(minimal()).disk_gb is None  # the image's own root volume
    for bad in (4, 20_000, "lots", 12.5):
        line = line_for(problems_of(minimal(disk_gb=bad)), "disk_gb")
        assert repr(bad) in line or str(bad) in line
