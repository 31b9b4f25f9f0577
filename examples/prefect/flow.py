"""A Prefect flow whose tasks run on a burst cluster, rented for the flow run alone.

prefect-dask's DaskTaskRunner creates the cluster when the flow starts, with `cluster_kwargs`
as BurstCluster's keyword arguments (the job spec's fields), and closes it when the flow ends:
burst then tears every instance down and verifies that nothing is left.

    pip install 'burst[prefect]'     # prefect and prefect-dask
    python examples/prefect/flow.py  # sandbox cloud; set "cloud": "aws" for EC2

On AWS the workers need Prefect too (they run the task engine): this example has been run
on the sandbox only, whose workers share the client's Python and packages.

What a Prefect server needs: nothing from burst. Without one (as here), Prefect runs the flow
in a temporary local API. With one (`PREFECT_API_URL` set, e.g. `prefect server start`), the
flow and task states go there; the workers report task states to it as well, so they must
reach its URL (on AWS: allow the workers' security group out to it). The cluster lives as
long as the process running the flow: if that process dies, the cluster powers itself off
after `no_client_timeout` (a cluster field, default 2m). For a job that must outlive the
process that started it, use `burst submit` and `burst wait` (see examples/airflow).
"""

from __future__ import annotations

import json
import random

from prefect import flow, task
from prefect_dask import DaskTaskRunner

# BurstCluster(**CLUSTER): any field of a job spec except `run`.
CLUSTER = {"name": "prefect-pi", "cores": 4, "max_runtime": "30m", "instance_types": ["c5.large"]}


@task(retries=1)
def throw_darts(seed: int, darts: int = 20_000) -> int:
    """How many of `darts` random points of the unit square fall in the quarter circle."""
    rng = random.Random(seed)
    return sum(rng.random() ** 2 + rng.random() ** 2 <= 1 for _ in range(darts))


@task
def estimate(inside: list[int], darts: int = 20_000) -> float:
    return 4 * sum(inside) / (len(inside) * darts)


@task
def where() -> str:
    """The Dask worker running this task: on burst, an instance id."""
    from distributed import get_worker

    return get_worker().name


@flow(task_runner=DaskTaskRunner(cluster_class="burst.BurstCluster", cluster_kwargs=CLUSTER))
def monte_carlo_pi(tasks: int = 16) -> dict:
    counts = throw_darts.map(range(tasks))
    pi = estimate.submit(counts).result()
    return {"pi": pi, "tasks": tasks, "ran_on": where.submit().result()}


if __name__ == "__main__":
    print(json.dumps(monte_carlo_pi()))
