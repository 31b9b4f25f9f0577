"""Small CLI conventions, without a cloud: --version, and what gc says with nothing to do."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from importlib.metadata import version

import pytest
from typer.testing import CliRunner

from burst.cli import app
from burst.cloud import connect
from burst.cloud.base import Remnant


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
