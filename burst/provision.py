"""Getting the workers' cores: the plan's spot pools, then the pools that did not fail, then
on-demand for what spot could not fill (`spot-with-fallback`), never above the budget.

EC2 Fleet already moves between the pools of one request; the rounds here drop the pools that
reported errors (no capacity, price too low) and ask the others for the shortfall.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal

from burst.catalog import hourly_price
from burst.cloud.aws import AwsProvider, ClusterIdentity, NodeEnvironment
from burst.cloud.base import CloudError, Fulfilment
from burst.plan import Plan, PlanLine
from burst.spec import JobSpec

ROUNDS_PER_MARKET = 2


def acquire_workers(
    provider: AwsProvider,
    ident: ClusterIdentity,
    env: NodeEnvironment,
    template_id: str,
    capacity_plan: Plan,
    spec: JobSpec,
    on_launch: Callable[[Fulfilment], None] = lambda got: None,
) -> Fulfilment:
    """Launch the plan's workers; raise CloudError (after nothing is left to try) when fewer
    than the spec's minimum cores came up. The caller tears down what was launched."""
    got = Fulfilment()
    hourly_budget = _hourly_budget(capacity_plan, spec)
    for market, pools, cap in _markets(capacity_plan, spec, hourly_budget):
        for _ in range(ROUNDS_PER_MARKET):
            missing = spec.cores - got.cores
            if missing <= 0 or not pools:
                break
            spent = sum((r.hourly or Decimal(0) for r in got.records), Decimal(0))
            limit = None if cap is None else cap - spent
            if limit is not None and limit <= 0:
                break
            fleet = provider.launch_fleet(ident, env, template_id, pools, market, missing, limit)
            got.extend(fleet)
            on_launch(fleet)
            failed = {(e.instance_type, e.zone) for e in fleet.errors}
            pools = [p for p in pools if (p.instance_type, p.zone) not in failed]
            if not fleet.errors:
                break  # EC2 gave all it would without a pool failing (e.g. the price cap)
    minimum = min(getattr(spec, "min_cores", None) or spec.cores, spec.cores)
    if got.cores < minimum:
        reasons = "; ".join(str(e) for e in got.errors) or "EC2 stopped at the price cap"
        raise CloudError(
            f"only {got.cores} of the {minimum} cores needed came up ({reasons}); "
            "fix: allow more instance types or zones, use spot-with-fallback, or lower min_cores"
        )
    return got


def _hourly_budget(capacity_plan: Plan, spec: JobSpec) -> Decimal | None:
    """What the workers may cost per hour so the whole cluster stays within max_cost."""
    max_cost = getattr(spec, "max_cost", None)
    if max_cost is None:
        return None
    schedulers = sum(
        (line.total_hourly for line in capacity_plan.lines if line.role != "worker"), Decimal(0)
    )
    return Decimal(str(max_cost)) / capacity_plan.max_runtime_hours - schedulers


def _markets(
    capacity_plan: Plan, spec: JobSpec, hourly_budget: Decimal | None
) -> list[tuple[str, list[PlanLine], Decimal | None]]:
    """(market, pools, $/h cap for the workers) in the order to try them."""
    pools = sorted(capacity_plan.workers, key=lambda p: p.hourly / p.vcpus)
    market = pools[0].market
    planned = sum((p.total_hourly for p in pools), Decimal(0))
    first_cap = planned if hourly_budget is None else min(planned, hourly_budget)
    markets = [(market, pools, first_cap)]
    if spec.spot == "spot-with-fallback":
        od = "on-demand"
        on_demand = [
            replace(p, market=od, hourly=hourly_price(p.instance_type, p.zone, od)) for p in pools
        ]
        on_demand.sort(key=lambda p: p.hourly / p.vcpus)
        markets.append(("on-demand", on_demand, hourly_budget))
    return markets
