"""burst: rent a supercomputer for an afternoon.

import burst
result = burst.run("jobs/pi.yaml")                 # a whole job, torn down after
with burst.BurstCluster(cores=8) as cluster: ...   # a Dask cluster for any code
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from burst.cluster import BurstCluster
    from burst.runner import JobResult, run

__all__ = ["BurstCluster", "JobResult", "run"]


def __getattr__(name: str):
    # Lazy, so that `burst --help` and spec checks do not pay for importing distributed.
    if name == "BurstCluster":
        from burst.cluster import BurstCluster

        return BurstCluster
    if name in ("run", "JobResult"):
        from burst import runner

        return getattr(runner, name)
    raise AttributeError(name)
