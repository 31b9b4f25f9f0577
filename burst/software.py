"""The job's software on the workers: what can be checked before anything is launched.

Workers must run the client's Python minor version and its exact dask, distributed and
cloudpickle (the wire protocol and pickles depend on them); on AWS the bootstrap installs
`software.pip` next to those pins. Sandbox nodes run the client's own interpreter, so a
requirement it lacks would be missing on every node: that is caught here too.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

PINNED = ("dask", "distributed", "cloudpickle")


def client_python() -> str:
    return "{}.{}".format(*sys.version_info[:2])


def check_python(value: str) -> str:
    parts = value.split(".")
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts):
        raise ValueError(f"a Python version such as {client_python()!r} is accepted")
    if ".".join(parts[:2]) != client_python():
        raise ValueError(
            f"workers run the client's Python {client_python()} (Dask needs the same minor "
            f"version on both ends), not {value}; run burst from a Python {value} environment "
            "or drop software.python"
        )
    return value


def parse(requirement: str) -> Requirement:
    try:
        return Requirement(requirement)
    except InvalidRequirement as error:
        raise ValueError(f"{requirement!r} is not a pip requirement: {error}") from None


def check_requirements(requirements: list[str]) -> None:
    """A pin of dask, distributed or cloudpickle must admit the client's exact version."""
    for text in requirements:
        requirement = parse(text)
        name = canonicalize_name(requirement.name)
        if name in PINNED:
            have = version(name)
            if requirement.url or not requirement.specifier.contains(have, prereleases=True):
                raise ValueError(
                    f"{text!r} conflicts with the client's {name} {have}; workers get the "
                    f"client's exact {', '.join(PINNED)}, so leave them out of software.pip"
                )


def missing_locally(requirements: list[str]) -> list[str]:
    """Requirements this interpreter does not satisfy, as readable lines."""
    missing = []
    for text in requirements:
        requirement = parse(text)
        try:
            have = version(requirement.name)
        except PackageNotFoundError:
            missing.append(f"{text!r} (not installed)")
            continue
        if not requirement.specifier.contains(have, prereleases=True):
            missing.append(f"{text!r} (found {requirement.name} {have})")
    return missing
