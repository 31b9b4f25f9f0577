"""Preflight: what would make a launch fail, checked before anything is created.

A new AWS account often has a few hundred spot vCPUs. Without this check, every fleet past
the quota answers `MaxSpotInstanceCountExceeded`, part of the cluster launches and bills, and
the run fails after its re-plans. Here the plan is held against the account first: the
credentials, the zones, the instance types offered there, and each market's vCPU quota minus
what already runs (the scheduler included). `burst doctor` prints every check; a launch
(`burst run`, `submit`, `BurstCluster`) is refused at the first failed one, with exit 3.
The network check finds the spec's subnets (or the default VPC's) and holds the plan's zones
against theirs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from burst.cloud.base import Provider, VcpuQuota
from burst.errors import CloudError
from burst.plan import Plan


@dataclass(frozen=True)
class Check:
    """One preflight check: what it looked at, whether it passed, and the fix if not."""

    name: str
    ok: bool
    detail: str
    fix: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


# The Pythons Amazon Linux 2023 packages (python3.X), which a stock-image node installs to
# match the client: https://docs.aws.amazon.com/linux/al2023/ug/python.html
AL2023_PYTHONS = ("3.9", "3.11", "3.12", "3.13", "3.14")


def node_python(version: str) -> Check:
    """Can a stock Amazon Linux 2023 node run the client's Python (`major.minor`)?"""
    if version in AL2023_PYTHONS:
        return Check("node python", True, f"python{version} is packaged by Amazon Linux 2023")
    return Check(
        "node python",
        False,
        f"the client runs Python {version}, which Amazon Linux 2023 does not package "
        f"(it has {', '.join(AL2023_PYTHONS)}); nodes must run the client's Python",
        f"run burst from Python {AL2023_PYTHONS[-2]} or {AL2023_PYTHONS[-1]} (python -m venv)",
    )


def checks(
    provider: Provider,
    plan: Plan | None = None,
    python: str | None = None,
    subnets: Sequence[str] = (),
) -> list[Check]:
    """Every check, in order; once the credentials fail nothing else can be asked. `python`:
    the client's Python, checked when nodes boot a stock image (on AWS, not the sandbox);
    `subnets`: the spec's network.subnets (none: the default VPC).

    Examples
    --------
    >>> for check in checks(provider, plan):  # doctest: +SKIP
    ...     print(check.name, check.ok, check.detail)
    credentials True arn:aws:sts::123456789012:user/moto
    """
    try:
        who = provider.account()
    except CloudError as error:
        return [Check("credentials", False, str(error), error.fix or _CREDENTIALS_FIX)]
    found = [Check("credentials", True, who)]
    if python is not None:
        found.append(node_python(python))
    zones = set(provider.zones())
    found.append(Check("zones", bool(zones), f"{provider.region}: {', '.join(sorted(zones))}"))
    found.append(network(provider, subnets, plan))
    if plan is not None:
        found.append(_offerings(provider, plan, zones))
    found += [_quota(provider.region, quota, plan) for quota in provider.vcpu_quotas()]
    return found


def require(
    provider: Provider, plan: Plan, python: str | None = None, subnets: Sequence[str] = ()
) -> list[Check]:
    """The checks of a launch: a CloudError (exit 3) naming every one that failed."""
    done = checks(provider, plan, python, subnets)
    failed = [check for check in done if not check.ok]
    if failed:
        raise CloudError(
            "preflight: " + "; ".join(f"{c.name}: {c.detail}" for c in failed),
            " | ".join(c.fix for c in failed if c.fix) or None,
        )
    return done


_CREDENTIALS_FIX = "configure AWS credentials (aws configure, or aws sso login)"


def network(provider: Provider, subnets: Sequence[str], plan: Plan | None = None) -> Check:
    """The subnets exist and share one VPC (or the default VPC has subnets), and the plan puts
    capacity only in zones that have one of them."""
    try:
        found = provider.network(subnets)
    except CloudError as error:
        return Check("network", False, str(error), error.fix)
    where = ", ".join(f"{subnet} ({zone})" for zone, subnet in sorted(found.subnets.items()))
    kind = "" if subnets else "default VPC "
    detail = f"{kind}{found.vpc_id}: {where}"
    if plan is not None:
        outside = sorted({line.zone for line in plan.lines} - set(found.subnets))
        if outside and subnets:
            return Check(
                "network",
                False,
                f"the plan puts capacity in {', '.join(outside)}, where no subnet of "
                f"network.subnets is ({detail})",
                "plan within the subnets' zones (burst run does), or add a subnet there",
            )
        if outside:
            detail += f"; no subnet in {', '.join(outside)}: that capacity is planned elsewhere"
    return Check("network", True, detail)


def _offerings(provider: Provider, plan: Plan, zones: set[str]) -> Check:
    wanted = {(line.instance_type, line.zone) for line in plan.lines}
    missing_zones = sorted({zone for _, zone in wanted} - zones)
    if missing_zones:
        return Check(
            "instance types",
            False,
            f"zones {', '.join(missing_zones)} are not available in {provider.region}",
            f"plan again (burst plan) or name zones of {provider.region}",
        )
    offered = provider.offered({kind for kind, _ in wanted}, {zone for _, zone in wanted})
    missing = sorted(wanted - offered)
    if missing:
        pairs = ", ".join(f"{kind} in {zone}" for kind, zone in missing)
        return Check(
            "instance types",
            False,
            f"not offered: {pairs}",
            "plan with live offers (burst plan without --offline) or other instance_types",
        )
    return Check("instance types", True, f"{len(wanted)} planned pool(s) offered")


def _quota(region: str, quota: VcpuQuota, plan: Plan | None) -> Check:
    name = f"{quota.market} vCPU quota {quota.code}"
    if quota.limit is None:
        return Check(name, True, "not readable (servicequotas:GetServiceQuota): not checked")
    free = max(0, math.floor(quota.limit) - quota.in_use)
    state = f"{quota.limit:g} in {region}, {quota.in_use} in use, {free} free"
    if plan is None:
        return Check(name, True, state)
    needed = sum(line.count * line.vcpus for line in plan.lines if line.market == quota.market)
    if needed <= free:
        return Check(name, True, f"the plan needs {needed}: {state}")
    workers = sum(
        line.count * line.vcpus
        for line in plan.lines
        if line.market == quota.market and line.role == "worker"
    )
    fit = max(0, workers - (needed - free))
    return Check(
        name,
        False,
        f"the plan needs {needed} {quota.market} vCPUs, over the quota ({state})",
        f"aws service-quotas request-service-quota-increase --service-code ec2 "
        f"--quota-code {quota.code} --desired-value {quota.in_use + needed} --region {region}"
        f" (or ask for at most {fit} cores)",
    )
