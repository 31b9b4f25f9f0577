"""The nodes' environment, built once on the client: a wheelhouse.

Every wheel the nodes need (the client's exact dask, distributed and cloudpickle, boto3,
bokeh, the job's `software.pip`, and their dependencies) is resolved here for the instances'
platform and Python with `pip download --only-binary=:all: --platform ...`, content-hashed,
cached under $BURST_HOME, and uploaded to the cluster's bucket; each node installs it with
`pip install --no-index`: no node talks to a package index, and a requirement with no wheel
for the instances' platform is refused before anything is launched.

`BURST_WHEEL_SOURCE=<dir>` builds from that folder of wheels alone (offline: CI, tests, an
air-gapped mirror) instead of pip's configured index.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from burst.errors import SpecError
from burst.home import burst_home
from burst.software import PINNED

SOURCE_ENV = "BURST_WHEEL_SOURCE"
RECORD = "wheelhouse.json"
# Amazon Linux 2023 has glibc 2.34: every manylinux tag up to it runs there
# (https://docs.aws.amazon.com/linux/al2023/ug/compare-with-al2.html; PEP 600 for the tags).
GLIBC = (2, 34)
LEGACY = ("manylinux2014", "manylinux2010", "manylinux1")  # PEP 599/571/513 aliases
UNAME = {"x86_64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64"}


@dataclass(frozen=True)
class Wheelhouse:
    """A folder of wheels and its content hash (sha256 over the sorted names and hashes)."""

    folder: Path
    sha256: str
    wheels: tuple[str, ...]
    requirements: tuple[str, ...]
    machine: str  # uname -m of the instances it is for: x86_64 or aarch64

    def record(self) -> dict:
        return {"provided": "wheelhouse", "sha256": self.sha256, "wheels": len(self.wheels)}


def requirements(pip: tuple[str, ...] | list[str] = ()) -> list[str]:
    """What every node installs: the client's exact Dask stack, the agent's needs, the job's."""
    return [*pip, *(f"{name}=={version(name)}" for name in PINNED), "boto3", "bokeh"]


def platforms(architecture: str) -> list[str]:
    machine = machine_of(architecture)
    modern = [f"manylinux_2_{minor}_{machine}" for minor in range(GLIBC[1], 4, -1)]
    return [*modern, *(f"{tag}_{machine}" for tag in LEGACY)]


def machine_of(architecture: str) -> str:
    try:
        return UNAME[architecture]
    except KeyError:
        raise SpecError(
            [f"architecture: {architecture!r} has no wheels; accepted: x86_64, arm64"]
        ) from None


def content_hash(folder: Path) -> tuple[str, tuple[str, ...]]:
    wheels = tuple(sorted(p.name for p in folder.glob("*.whl")))
    digest = hashlib.sha256()
    for name in wheels:
        digest.update(
            f"{name} {hashlib.sha256((folder / name).read_bytes()).hexdigest()}\n".encode()
        )
    return digest.hexdigest(), wheels


def _source() -> Path | None:
    value = os.environ.get(SOURCE_ENV)
    if not value:
        return None
    source = Path(value).expanduser()
    if not source.is_dir():
        raise SpecError([f"{SOURCE_ENV}: {value!r} is not a folder of wheels"])
    return source.resolve()


def _cache_key(reqs: list[str], python: str, machine: str, source: Path | None) -> str:
    key = json.dumps([sorted(reqs), python, machine, str(source or "")])
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def build(
    pip: tuple[str, ...] | list[str],
    python: str,
    architecture: str,
    *,
    cache: Path | None = None,
) -> Wheelhouse:
    """The wheelhouse for Python `python` (3.12) on `architecture` (EC2's: x86_64, arm64),
    from the cache when this exact one was built before. A requirement with no wheel for that
    platform is a SpecError (exit 2) naming it."""
    reqs = requirements(pip)
    machine = machine_of(architecture)
    source = _source()
    root = (cache or burst_home() / "wheelhouses") / _cache_key(reqs, python, machine, source)
    record = root / RECORD
    if record.is_file():
        try:
            saved = json.loads(record.read_text())
            return Wheelhouse(root, saved["sha256"], tuple(saved["wheels"]), tuple(reqs), machine)
        except (ValueError, KeyError):
            pass  # torn: built again
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=root.parent))
    try:
        _download(reqs, python, machine, source, staging)
        sha256, wheels = content_hash(staging)
        (staging / RECORD).write_text(json.dumps({"sha256": sha256, "wheels": wheels}))
        shutil.rmtree(root, ignore_errors=True)
        staging.rename(root)  # whole or absent: a second build never sees half a wheelhouse
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Wheelhouse(root, sha256, wheels, tuple(reqs), machine)


def _download(reqs: list[str], python: str, machine: str, source: Path | None, dest: Path):
    command = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-input"]
    command += [f"--platform={tag}" for tag in platforms(machine)]
    nodot = python.replace(".", "")
    command += [f"--python-version={python}", "--implementation=cp"]
    command += [f"--abi=cp{nodot}", "--abi=abi3", "--abi=none", "--dest", str(dest)]
    env = dict(os.environ)
    if source is not None:  # that folder alone: no index, no pip configuration
        env = {k: v for k, v in env.items() if not k.startswith("PIP_")}
        env["PIP_CONFIG_FILE"] = os.devnull
        command += ["--no-index", "--find-links", str(source)]
    done = subprocess.run([*command, *reqs], capture_output=True, text=True, env=env, check=False)
    if done.returncode == 0:
        return
    where = f"manylinux (glibc <= 2.{GLIBC[1]}) {machine}, CPython {python}"
    missing = re.findall(r"No matching distribution found for (\S+)", done.stderr)
    if missing:
        raise SpecError(
            [
                f"software.pip: no wheel of {m!r} for the instances' platform ({where})"
                + (f" in {SOURCE_ENV}={source}" if source else "")
                + "; nodes install wheels only: pick a version with such a wheel, or build one"
                for m in missing
            ]
        )
    tail = done.stderr.strip().splitlines()[-3:]
    raise SpecError([f"software.pip: pip could not resolve the wheelhouse ({where}): {tail}"])


def fill(dest: Path, pip: list[str], python: str, architecture: str) -> None:
    """Download what `build` needs into `dest` with pip's configured index: the offline
    source (BURST_WHEEL_SOURCE) that CI fills once while it may reach PyPI."""
    dest.mkdir(parents=True, exist_ok=True)
    _download(requirements(pip), python, machine_of(architecture), None, dest)


if __name__ == "__main__":
    import argparse

    from burst.software import client_python

    parser = argparse.ArgumentParser(
        prog="python -m burst.wheelhouse",
        description="Fill a folder of wheels for BURST_WHEEL_SOURCE (the nodes' Dask stack).",
    )
    parser.add_argument("dest", type=Path)
    parser.add_argument("pip", nargs="*", help="the job's software.pip requirements")
    parser.add_argument("--python", default=client_python())
    parser.add_argument("--architecture", default="x86_64")
    options = parser.parse_args()
    try:
        fill(options.dest, options.pip, options.python, options.architecture)
    except SpecError as error:
        sys.exit(str(error))
