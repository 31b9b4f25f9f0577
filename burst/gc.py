"""Finding and deleting what burst left behind in a region.

Tags are the source of truth: every resource burst creates carries `burst:managed=true`, its
cluster and its deadline. A cluster is garbage when its deadline has passed, or when none of
its instances is running and it is older than a provisioning could take. Deleting reuses the
cluster teardown, which finds everything of a cluster by tag and verifies it is gone.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from burst.cloud.base import (
    TAG_CLUSTER,
    TAG_DEADLINE,
    TAG_JOB,
    TAG_MANAGED,
    ClusterIdentity,
    Provider,
    TeardownReport,
)

# A cluster with no running instance may just be starting: spare it this long.
STARTING_GRACE = timedelta(minutes=15)


@dataclass
class ClusterRemains:
    cluster_id: str
    job_id: str = "?"
    deadline: datetime | None = None
    created: datetime | None = None  # the earliest creation time any resource shows
    running: int = 0  # instances pending or running
    resources: list[str] = field(default_factory=list)
    reason: str = ""
    teardown: TeardownReport | None = None

    def saw(self, resource: str, tags: dict[str, str], created: datetime | None = None) -> None:
        self.resources.append(resource)
        self.job_id = tags.get(TAG_JOB, self.job_id)
        if TAG_DEADLINE in tags and self.deadline is None:
            with contextlib.suppress(ValueError):  # a hand-edited tag must not stop the sweep
                self.deadline = datetime.fromisoformat(tags[TAG_DEADLINE])
        if created is not None and (self.created is None or created < self.created):
            self.created = created

    def to_dict(self) -> dict:
        return {
            "cluster_id": self.cluster_id,
            "job_id": self.job_id,
            "deadline": self.deadline.isoformat() if self.deadline else None,
            "reason": self.reason,
            "resources": self.resources,
            "teardown": self.teardown.to_dict() if self.teardown else None,
        }


def survey(provider: Provider) -> dict[str, ClusterRemains]:
    """Every burst cluster with anything left in the provider's region, by cluster id."""
    found: dict[str, ClusterRemains] = {}
    for remnant in provider.survey():
        tags = remnant.tags
        if tags.get(TAG_MANAGED) != "true" or TAG_CLUSTER not in tags:
            continue
        cluster = found.setdefault(tags[TAG_CLUSTER], ClusterRemains(tags[TAG_CLUSTER]))
        cluster.saw(remnant.resource, tags, remnant.created)
        cluster.running += remnant.running
    return found


def garbage(provider: Provider, now: datetime | None = None) -> list[ClusterRemains]:
    """The clusters to delete, each with why."""
    now = now or datetime.now(UTC)
    chosen = []
    for cluster in survey(provider).values():
        if cluster.deadline is not None and cluster.deadline <= now:
            cluster.reason = f"deadline {cluster.deadline.isoformat()} has passed"
        elif cluster.running == 0 and (
            # A security group (created first, with no creation time) alone may be a cluster
            # being set up: only its deadline condemns it. Untagged remains have neither.
            now - cluster.created > STARTING_GRACE
            if cluster.created is not None
            else cluster.deadline is None
        ):
            cluster.reason = "no instance running"
        else:
            continue
        chosen.append(cluster)
    return chosen


def collect_garbage(
    provider: Provider, delete: bool = False, now: datetime | None = None
) -> list[ClusterRemains]:
    """List the garbage; with `delete`, tear each cluster down and verify (see `teardown`)."""
    clusters = garbage(provider, now)
    if delete:
        delete_clusters(provider, clusters)
    return clusters


def cancel_job(provider: Provider, job_id: str) -> list[ClusterRemains]:
    """Tear down every cluster of one job, running or not: `burst cancel`, for a run whose
    client is gone (killed, or on another machine). Found by the job's tag alone."""
    clusters = [c for c in survey(provider).values() if c.job_id == job_id]
    for cluster in clusters:
        cluster.reason = f"job {job_id} cancelled"
    delete_clusters(provider, clusters)
    return clusters


def delete_clusters(provider: Provider, clusters: list[ClusterRemains]) -> None:
    for cluster in clusters:
        deadline = cluster.deadline or datetime.now(UTC)
        ident = ClusterIdentity(cluster.cluster_id, cluster.job_id, deadline)
        cluster.teardown = provider.teardown(ident, wait=300)
