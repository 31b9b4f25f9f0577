"""Fault drills: moto has no EC2 faults, so they are injected with botocore event hooks."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError
from typer.testing import CliRunner

from burst.cli import EXIT_CLOUD, app
from burst.cloud import sandbox as sandbox_module
from burst.cloud.base import CloudError
from burst.runner import run
from tests.conftest import settled_leftovers
from tests.test_pipeline import write_job


@pytest.fixture
def no_spot_capacity(monkeypatch):
    """Every spot launch fails as AWS says when a pool is empty; requests are recorded."""
    sent: list[dict] = []

    def refuse_spot(params, **kwargs):
        sent.append(dict(params))
        if params.get("InstanceMarketOptions", {}).get("MarketType") == "spot":
            raise ClientError({"Error": {"Code": "InsufficientInstanceCapacity",
                                         "Message": "no spot capacity in this pool"}},
                              "RunInstances")

    real_session = sandbox_module.session

    def session():
        faulty = real_session()
        faulty.events.register("before-parameter-build.ec2.RunInstances", refuse_spot)
        return faulty

    monkeypatch.setattr(sandbox_module, "session", session)
    return sent


def test_spot_shortage_falls_back_to_on_demand(sandbox, tmp_path, monkeypatch, no_spot_capacity):
    spec = write_job(tmp_path, "fallback_job", "def task(x):\n    return -x\n", tasks="[1, 2]")
    monkeypatch.chdir(tmp_path)
    result = run(spec)
    assert result.ok and result.results == [-1, -2]
    workers = [i for i in result.manifest["instances"] if i["role"] == "worker"]
    assert workers and {w["market"] for w in workers} == {"on-demand"}
    markets = [p.get("InstanceMarketOptions", {}).get("MarketType") for p in no_spot_capacity]
    assert "spot" in markets  # spot was asked for first
    assert settled_leftovers(sandbox, result.manifest["cluster_id"]) == []


def test_spot_only_shortage_is_a_cloud_error_and_tears_down(sandbox, tmp_path, monkeypatch,
                                                            no_spot_capacity):
    spec = write_job(tmp_path, "spot_only_job", "def task(x):\n    return x\n",
                     extra="spot: spot\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CloudError, match="InsufficientInstanceCapacity"):
        run(spec)
    manifest = json.loads(next((tmp_path / "results").glob("*/manifest.json")).read_text())
    assert manifest["status"] == "error" and manifest["teardown"]["verified"]
    assert settled_leftovers(sandbox, manifest["cluster_id"]) == []

    outcome = CliRunner().invoke(app, ["run", str(spec)])
    assert outcome.exit_code == EXIT_CLOUD
    assert "InsufficientInstanceCapacity" in outcome.output
    assert settled_leftovers(sandbox) == []
