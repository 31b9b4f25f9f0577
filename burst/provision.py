"""Getting the workers' cores: the plan's pools first, then the next cheapest pools for what
they could not fill, then (`spot-with-fallback`) on-demand, never above the budget.

One EC2 Fleet request already moves between the pools it names; the later rounds re-plan the
shortfall without the pools that reported errors (no capacity, price too low, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal

from burst.catalog import Offer
from burst.cloud.aws import AwsProvider, ClusterIdentity, NodeEnvironment
from burst.cloud.base import CloudError, Fulfilment
from burst.plan import Plan, PlanError, PlanLine, fallback_plan
from burst.spec import JobSpec

# Requests per market: the plan's pools, then up to two re-plans without the failed pools.
ROUNDS_PER_MARKET = 3


def acquire_workers(
    provider: AwsProvider,
    ident: ClusterIdentity,
    env: NodeEnvironment,
    template_id: str,
    capacity_plan: Plan,
    spec: JobSpec,
    offers: Sequence[Offer] | None = None,
    on_launch: Callable[[Fulfilment], None] = lambda got: None,
) -> Fulfilment:
    """Launch the plan's workers; raise CloudError when fewer than `min_cores` came up once
    every round is spent. The caller tears down what was launched either way."""
    got = Fulfilment()
    budget = _hourly_budget(capacity_plan, spec)
    zones = sorted(env.subnets)
    first = capacity_plan.workers
    market = first[0].market
    markets = [market] + (["on-demand"] if spec.spot == "spot-with-fallback" else [])
    for market in markets:
        failed: set[tuple[str, str, str]] = set()
        for round_number in range(ROUNDS_PER_MARKET):
            missing = spec.cores - got.cores
            spent = sum((r.hourly or Decimal(0) for r in got.records), Decimal(0))
            if missing <= 0 or (budget is not None and budget - spent <= 0):
                break
            if round_number == 0 and market == first[0].market:
                # The plan's own pools, capped at the plan's $/h: EC2 may pick among them but
                # not spend more than the plan said.
                pools, cap = first, sum((p.total_hourly for p in first), Decimal(0))
                cap = cap if budget is None else min(cap, budget)
            else:
                try:
                    pools = fallback_plan(
                        spec, missing, failed, market=market, zones=zones, offers=offers
                    ).workers
                except PlanError:
                    break  # no pool left in this market
                cap = budget
            fleet = provider.launch_fleet(
                ident,
                env,
                template_id,
                _cheapest_first(pools),
                market,
                missing,
                None if cap is None else cap - spent,
            )
            got.extend(fleet)
            on_launch(fleet)
            if not fleet.errors:
                break  # EC2 gave what it would without a pool failing (e.g. the price cap)
            failed |= {(e.instance_type, e.zone, e.market) for e in fleet.errors}
    if got.cores < spec.min_cores:
        reasons = "; ".join(str(e) for e in got.errors) or "EC2 stopped at the price cap"
        raise CloudError(
            f"only {got.cores} of the {spec.min_cores} cores needed came up ({reasons}); "
            "fix: allow more instance types or zones, use spot-with-fallback, or lower min_cores"
        )
    return got


def _cheapest_first(pools: list[PlanLine]) -> list[PlanLine]:
    return sorted(pools, key=lambda p: (p.hourly / p.vcpus, p.instance_type, p.zone))


def _hourly_budget(capacity_plan: Plan, spec: JobSpec) -> Decimal | None:
    """What the workers may cost per hour so the whole cluster stays within the budget."""
    limits = []
    if spec.max_cost is not None:
        limits.append(Decimal(str(spec.max_cost)) / capacity_plan.max_runtime_hours)
    if spec.max_hourly is not None:
        limits.append(Decimal(str(spec.max_hourly)))
    if not limits:
        return None
    schedulers = sum(
        (line.total_hourly for line in capacity_plan.lines if line.role != "worker"), Decimal(0)
    )
    return min(limits) - schedulers
