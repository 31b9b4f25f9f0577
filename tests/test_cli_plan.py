"""`burst plan`, and the budget refusal of `burst plan` and `burst run` (exit 4)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from burst.cli import EXIT_BAD_INPUT, EXIT_BUDGET, app
from burst.plan import plan
from burst.spec import parse_spec
from tests.conftest import REPO, moto_in_process

PI = str(REPO / "jobs" / "pi.yaml")


@pytest.fixture()
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh BURST_HOME and working folder; any cloud call or sandbox start fails the test."""
    import botocore.client

    from burst.cloud import sandbox

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("BURST_HOME", str(home))
    monkeypatch.chdir(tmp_path)

    def forbidden(*args, **kwargs):
        raise AssertionError("no cloud call may happen before the budget check")

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", forbidden)
    monkeypatch.setattr(sandbox.Sandbox, "start", forbidden)
    monkeypatch.setattr(sandbox, "running_sandbox", forbidden)
    return tmp_path


def write_spec(folder: Path, **fields) -> Path:
    (folder / "tiny.py").write_text("def task(x):\n    return x\n")
    spec = {"name": "tiny", "cores": 1000, "max_runtime": "2h", "run": {"function": "tiny:task",
            "tasks": {"range": 3}}, **fields}  # fmt: skip
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def stderr_of(result) -> str:
    try:
        return result.stderr
    except (ValueError, AttributeError):
        return result.output


def test_plan_prints_a_table(work: Path) -> None:
    result = CliRunner().invoke(app, ["plan", PI])
    assert result.exit_code == 0, stderr_of(result)
    assert "Plan" in result.stdout and "c5.xlarge" in result.stdout
    assert "cost bound $" in result.stdout and "snapshot 2026-11-01" in result.stdout


def test_plan_json_is_the_plan_alone_for_10000_cores(work: Path) -> None:
    result = CliRunner().invoke(app, ["plan", PI, "--cores", "10000", "--json"])
    assert result.exit_code == 0, stderr_of(result)
    data = json.loads(result.stdout)
    assert data["cores"] == 10000 and data["worker_cores"] >= 10000
    workers = [line for line in data["lines"] if line["role"] == "worker"]
    assert len(workers) >= 3  # several pools, none over 40 % of the cores
    assert all(line["cores"] <= 4000 for line in workers)
    assert sum(line["cores"] for line in workers) == data["worker_cores"]
    expected = plan(parse_spec({**yaml.safe_load(Path(PI).read_text()), "cores": 10000}))
    assert data == expected.to_dict()
    assert Decimal(data["cost_bound"]) > 0


def test_plan_over_budget_exits_4_with_what_fits(work: Path) -> None:
    path = write_spec(work, max_cost=20)
    result = CliRunner().invoke(app, ["plan", str(path)])
    assert result.exit_code == EXIT_BUDGET == 4
    text = stderr_of(result)
    assert "over max_cost $20 by $" in text and "cores fit at this max_runtime" in text
    assert "Plan" in result.stdout
    as_json = CliRunner().invoke(app, ["plan", str(path), "--json"])
    assert as_json.exit_code == 4
    refusal = json.loads(as_json.stdout)
    assert refusal["status"] == "refused" and refusal["field"] == "max_cost"
    assert Decimal(refusal["over"]) == Decimal(refusal["value"]) - 20 > 0
    assert 0 < refusal["fits"]["cores"] < 1000 and refusal["fits"]["max_runtime"]


def test_plan_bad_spec_exits_2(work: Path) -> None:
    path = write_spec(work, architecture="arm64", instance_types=["c5"])
    result = CliRunner().invoke(app, ["plan", str(path)])
    assert result.exit_code == EXIT_BAD_INPUT
    assert "architecture: no type in instance_types ['c5'] is arm64" in stderr_of(result)
    assert result.stdout == ""


@pytest.mark.parametrize("as_json", [False, True])
def test_run_over_budget_exits_4_before_anything(work: Path, as_json: bool) -> None:
    path = write_spec(work, max_cost="5")
    args = ["run", str(path), *(["--json"] if as_json else [])]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == EXIT_BUDGET, stderr_of(result)
    assert "over max_cost $5 by $" in stderr_of(result)
    assert "nothing was launched" in stderr_of(result)
    if as_json:  # stdout stays JSON: the refusal
        assert json.loads(result.stdout)["status"] == "refused"
    else:
        assert result.stdout == ""
    assert not (work / "results").exists()
    assert list((work / "home").iterdir()) == []


def test_run_over_max_hourly_exits_4(work: Path) -> None:
    result = CliRunner().invoke(app, ["run", str(write_spec(work, max_hourly=1))])
    assert result.exit_code == EXIT_BUDGET
    assert "over max_hourly $1/h" in stderr_of(result)
    assert not (work / "results").exists()


def test_plan_uses_live_offers_on_aws_with_credentials(tmp_path, monkeypatch) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    path = write_spec(tmp_path, cloud="aws", region="us-west-2", cores=32)
    with moto_in_process():
        result = CliRunner().invoke(app, ["plan", str(path), "--json"])
        offline = CliRunner().invoke(app, ["plan", str(path), "--json", "--offline"])
    assert result.exit_code == 0, stderr_of(result)
    data = json.loads(result.stdout)
    assert "live spot price history" in data["price_source"]
    assert "live spot price" not in json.loads(offline.stdout)["price_source"]
