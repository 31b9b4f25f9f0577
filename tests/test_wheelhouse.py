"""The wheelhouse (issue 10): built once on the client for the instances' platform and Python,
content-hashed, cached under $BURST_HOME, and a requirement without a wheel there refused
before launch. Built for real by pip, from a local folder of wheels (no network)."""

from __future__ import annotations

import subprocess
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

from burst import wheelhouse
from burst.errors import EXIT_BAD_INPUT, SpecError
from burst.software import client_python


def _wheel(folder: Path, name: str, release: str, tag: str = "py3-none-any") -> None:
    """A minimal real wheel: pip reads its metadata (name, version, no dependencies)."""
    info = f"{name}-{release}.dist-info"
    with zipfile.ZipFile(folder / f"{name}-{release}-{tag}.whl", "w") as wheel:
        wheel.writestr(f"{name}/__init__.py", "")
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\n"
                                           f"Version: {release}\n")
        wheel.writestr(f"{info}/WHEEL", f"Wheel-Version: 1.0\nGenerator: test\n"
                                        f"Root-Is-Purelib: true\nTag: {tag}\n")
        wheel.writestr(f"{info}/RECORD", "")


@pytest.fixture
def source(tmp_path, monkeypatch) -> Path:
    """A find-links folder: the client's Dask stack, boto3, bokeh, a small job requirement, a
    Linux-only wheel for x86_64 alone, and a package published as a source archive only."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    for name in wheelhouse.PINNED:
        _wheel(folder, name, version(name))
    for name, release in (("boto3", "1.0"), ("bokeh", "3.0"), ("tiny", "0.1")):
        _wheel(folder, name, release)
    nodot = client_python().replace(".", "")
    _wheel(folder, "fastmath", "1.0", f"cp{nodot}-cp{nodot}-manylinux_2_28_x86_64")
    (folder / "onlysdist-1.0.tar.gz").write_bytes(b"not needed: pip never builds it")
    monkeypatch.setenv(wheelhouse.SOURCE_ENV, str(folder))
    monkeypatch.setenv("BURST_HOME", str(tmp_path / "home"))
    return folder


def test_the_wheelhouse_holds_the_client_stack_and_the_jobs_wheels(source):
    house = wheelhouse.build(["tiny", "fastmath"], client_python(), "x86_64")
    assert len(house.wheels) == 7 and all(name.endswith(".whl") for name in house.wheels)
    assert any(name.startswith(f"distributed-{version('distributed')}-") for name in house.wheels)
    assert house.sha256 == wheelhouse.content_hash(house.folder)[0]
    assert house.record() == {"provided": "wheelhouse", "sha256": house.sha256, "wheels": 7}
    assert house.machine == "x86_64" and house.folder.is_relative_to(source.parent / "home")
    assert f"dask=={version('dask')}" in house.requirements and "tiny" in house.requirements


def test_a_second_build_is_the_cached_one_and_the_hash_is_stable(source, tmp_path, monkeypatch):
    first = wheelhouse.build(["tiny"], client_python(), "x86_64")
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a) or 1 / 0)
    again = wheelhouse.build(["tiny"], client_python(), "x86_64")
    assert calls == [] and again == first  # no pip: nothing downloaded again
    monkeypatch.undo()
    monkeypatch.setenv(wheelhouse.SOURCE_ENV, str(source))
    elsewhere = wheelhouse.build(["tiny"], client_python(), "x86_64", cache=tmp_path / "other")
    assert elsewhere.folder != first.folder and elsewhere.sha256 == first.sha256
    # Another requirement list is another wheelhouse, with another hash.
    other = wheelhouse.build(["tiny", "fastmath"], client_python(), "x86_64")
    assert other.folder != first.folder and other.sha256 != first.sha256


@pytest.mark.parametrize("requirement", ["onlysdist", "no-such-package-anywhere"])
def test_a_requirement_without_a_wheel_for_the_platform_is_refused(source, requirement):
    with pytest.raises(SpecError) as refused:
        wheelhouse.build([requirement], client_python(), "x86_64")
    assert refused.value.exit_code == EXIT_BAD_INPUT
    message = str(refused.value)
    assert f"no wheel of {requirement!r}" in message and "x86_64" in message
    assert f"CPython {client_python()}" in message


def test_a_wheel_for_another_machine_does_not_count(source):
    """fastmath has an x86_64 wheel only: a Graviton (arm64) cluster cannot have it."""
    with pytest.raises(SpecError, match=r"no wheel of 'fastmath'.*aarch64"):
        wheelhouse.build(["fastmath"], client_python(), "arm64")
    assert wheelhouse.build(["tiny"], client_python(), "arm64").machine == "aarch64"


def test_platform_tags_cover_amazon_linux_2023_glibc():
    tags = wheelhouse.platforms("x86_64")
    assert tags[0] == "manylinux_2_34_x86_64" and "manylinux_2_28_x86_64" in tags
    assert "manylinux2014_x86_64" in tags and "manylinux_2_35_x86_64" not in tags
    assert wheelhouse.platforms("arm64")[0] == "manylinux_2_34_aarch64"
    with pytest.raises(SpecError, match="accepted: x86_64, arm64"):
        wheelhouse.platforms("sparc")


def test_a_missing_source_folder_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv(wheelhouse.SOURCE_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(SpecError, match="BURST_WHEEL_SOURCE"):
        wheelhouse.build([], client_python(), "x86_64")


def test_a_worker_may_fetch_the_wheelhouse_from_its_bucket():
    """`aws s3 cp --recursive` lists the prefix and gets each wheel: the worker's role and the
    node boundary allow both (the scheduler's role reads and writes the whole bucket)."""
    from datetime import UTC, datetime, timedelta

    from burst.cloud.aws import _worker_bucket_statements
    from burst.cloud.base import ClusterIdentity
    from tests.test_iam_policy import BOUNDARY, Request, allows, load

    ident = ClusterIdentity("abc123abc123", "job", datetime.now(UTC) + timedelta(hours=1))
    worker = {"Version": "2012-10-17", "Statement": _worker_bucket_statements(ident, [])}
    bucket = "arn:aws:s3:::burst-abc123abc123"
    wheel = f"{bucket}/wheelhouse/{'0' * 64}/dask-1-py3-none-any.whl"
    for request in (Request("s3:ListBucket", bucket), Request("s3:GetObject", wheel)):
        assert allows(worker, request) and allows(load(BOUNDARY), request), request
