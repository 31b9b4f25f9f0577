"""Small CLI conventions, without a cloud: --version, what gc says with nothing to do, and
AWS without credentials or network (never real AWS: no credentials, or a closed local port)."""

from __future__ import annotations

import json
import os
import socket
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from burst.cli import app
from burst.cloud import connect
from burst.cloud.base import Remnant
from tests.conftest import REPO


def test_version():
    done = CliRunner().invoke(app, ["--version"])
    assert done.exit_code == 0 and done.stdout == f"burst {version('burst')}\n"


class Surveyed:
    """A provider whose region holds the given remnants (gc only surveys without --yes)."""

    def __init__(self, remnants):
        self.remnants = remnants

    def survey(self):
        return self.remnants


@pytest.fixture
def region_holding(monkeypatch):
    def holding(*remnants):
        provider = Surveyed(list(remnants))
        monkeypatch.setattr(
            connect, "open_provider",
            lambda cloud, region, start_sandbox=True: connect.Connection(provider, "http://x"))
    return holding


def test_gc_with_nothing_to_clean_says_so(region_holding):
    region_holding()
    done = CliRunner().invoke(app, ["gc"])
    assert done.exit_code == 0
    assert done.stderr == "nothing left behind in sandbox us-east-1\n" and done.stdout == ""


def test_gc_lists_what_it_would_delete_and_how(region_holding):
    expired = (datetime.now(UTC) - timedelta(hours=1)).isoformat(timespec="seconds")
    region_holding(Remnant("security-group sg-1", {
        "burst:cluster": "c0ffee000001", "burst:job": "j-1", "burst:managed": "true",
        "burst:deadline": expired}))
    done = CliRunner().invoke(app, ["gc"])
    assert done.exit_code == 0
    assert "c0ffee000001" in done.stdout and "security-group sg-1" in done.stdout
    assert "nothing deleted: run `burst gc --yes` to delete these" in done.stderr


@pytest.fixture
def no_aws(tmp_path, monkeypatch):
    """An environment with no AWS credentials anywhere (no env keys, no files, no instance
    metadata) and a job folder holding an aws spec."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "absent-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "absent-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("BURST_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pi.py").write_text((REPO / "jobs" / "pi.py").read_text())
    spec = {"name": "pi", "cores": 4, "cloud": "aws", "max_runtime": "10m",
            "run": {"function": "pi:sample", "tasks": {"range": 4}}}
    (tmp_path / "pi.yaml").write_text(yaml.safe_dump(spec))
    return monkeypatch


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("command", [["run", "pi.yaml"], ["submit", "pi.yaml"],
                                     ["gc", "--cloud", "aws"], ["ls", "--cloud", "aws"]])
def test_aws_without_credentials_is_a_cloud_error_with_the_fix(no_aws, command):
    done = CliRunner().invoke(app, command)
    assert done.exit_code == 3, done.output
    assert "error: no AWS credentials were found for cloud: aws" in done.stderr
    assert "fix: configure AWS credentials (aws configure" in done.stderr
    assert "a bug" not in done.output and "Traceback" not in done.output
    assert not Path("results").exists()  # refused before a results folder was made


def test_aws_with_a_missing_profile_is_a_cloud_error(no_aws):
    no_aws.setenv("AWS_PROFILE", "nope")
    for command in (["run", "pi.yaml"], ["gc", "--cloud", "aws"]):
        done = CliRunner().invoke(app, command)
        assert done.exit_code == 3, done.output
        assert "The config profile (nope) could not be found" in done.stderr
        assert "fix: create the profile" in done.stderr and "a bug" not in done.output
    planned = CliRunner().invoke(app, ["plan", "pi.yaml"])  # planning falls back to the snapshot
    assert planned.exit_code == 0 and "snapshot" in planned.stdout


def test_aws_with_no_network_is_a_cloud_error_with_the_fix(no_aws):
    no_aws.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    no_aws.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    no_aws.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    for command in (["run", "pi.yaml"], ["status", "pi-20261128-000000-abcd", "--cloud", "aws"]):
        done = CliRunner().invoke(app, command)
        assert done.exit_code == 3, done.output
        assert "error: cannot reach AWS from this machine (EndpointConnectionError" in done.stderr
        assert "fix: check this machine's network" in done.stderr
        assert "a bug" not in done.output


def test_the_price_source_on_aws_never_claims_the_sandbox(no_aws):
    done = CliRunner().invoke(app, ["plan", "pi.yaml", "--json"])
    assert done.exit_code == 0
    source = json.loads(done.stdout)["price_source"]
    assert "sandbox" not in source and "not a live price" in source


@pytest.mark.parametrize("command", ["run", "submit", "plan", "gc"])
def test_flags_have_no_type_label_in_help(command):
    done = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "100"}, color=False)
    assert done.exit_code == 0
    assert "<bool>" not in done.stdout and "BOOLEAN" not in done.stdout
    assert "--json" in done.stdout or "--yes" in done.stdout
    if command != "gc":
        assert "--set" in done.stdout and "FIELD=VALUE" in done.stdout
    else:
        assert "<str>" in done.stdout  # options that take a value keep their label


def described(state: str, cluster: str | None = None) -> dict:
    tags = [{"Key": "burst:cluster", "Value": cluster}] if cluster else []
    return {"State": {"Name": state}, "Tags": tags}


def test_sandbox_status_explains_each_count():
    from burst.cli import sandbox_counts

    lines = sandbox_counts([described("running", "c0ffee000001"),
                            described("running", "c0ffee000001"),
                            described("pending", "c0ffee000002"),
                            described("shutting-down", "c0ffee000001"),
                            *[described("terminated", "c0ffee000003")] * 4])
    assert lines[0].startswith("2 running: each is a process group on this machine")
    assert lines[1] == "1 starting (pending) and 1 stopping: on their way up or down"
    assert lines[2].startswith("4 terminated: ended instances the EC2 API keeps listing")
    assert lines[3] == "8 in all, over the regions us-east-1, us-west-2, eu-west-1"
    assert lines[4].startswith("live instances by cluster: c0ffee000001 (2), c0ffee000002 (1)")
    assert sandbox_counts([])[:1] == ["0 running: each is a process group on this machine (a "
                                      "Dask scheduler or worker, with its node agent) using its "
                                      "CPU and memory"]
    assert len(sandbox_counts([])) == 4  # no cluster line when nothing is live


def test_sandbox_status_counts_what_the_api_lists(sandbox):
    from tests.conftest import client

    done = CliRunner().invoke(app, ["sandbox", "status"])
    assert done.exit_code == 0, done.output
    listed = [i for region in ("us-east-1", "us-west-2", "eu-west-1")
              for r in client(sandbox, "ec2", region).describe_instances()["Reservations"]
              for i in r["Instances"]]
    assert f"sandbox running at {sandbox.endpoint}" in done.stdout
    assert f"  {len(listed)} in all, over the regions" in done.stdout
    terminated = sum(i["State"]["Name"] == "terminated" for i in listed)
    assert f"  {terminated} terminated: ended instances" in done.stdout


@pytest.mark.parametrize("setting, said", [
    ("BURST_SANDBOX_BOOT_SLOTS=0",
     "BURST_SANDBOX_BOOT_SLOTS: '0' is not accepted; accepted: a whole number >= 1"),
    ("BURST_SANDBOX_QUOTAS=lots", "BURST_SANDBOX_QUOTAS: 'lots' is not NAME=VALUE"),
    ("BURST_SANDBOX_IMAGE=golden",
     "BURST_SANDBOX_IMAGE: 'golden' is not an image; accepted: client, stock"),
])  # fmt: skip
def test_a_bad_sandbox_setting_is_refused_before_a_sandbox_starts(tmp_path, monkeypatch, setting,
                                                                  said):
    monkeypatch.setenv("BURST_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(*setting.split("=", 1))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pi.py").write_text((REPO / "jobs" / "pi.py").read_text())
    spec = {"name": "pi", "cores": 4, "max_runtime": "10m",
            "run": {"function": "pi:sample", "tasks": {"range": 4}}}
    (tmp_path / "pi.yaml").write_text(yaml.safe_dump(spec))
    for command in (["run", "pi.yaml"], ["sandbox", "up"]):
        done = CliRunner().invoke(app, command)
        assert done.exit_code == 2, done.output
        assert f"error: {said}" in done.stderr and "a bug" not in done.output
        assert "fix: correct or unset that variable" in done.stderr
        assert not (tmp_path / "home" / "sandbox.json").exists()  # no sandbox was started
