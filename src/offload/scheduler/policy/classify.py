"""Each job's eligibility class, and the jobs no machine can build.

A job belongs to the class of its (system, required features) (``pool``). A class without a
machine means no machine can build the job: that is an error before anything starts
(``strict``), or the job fails at once and every job depending on it is skipped
(``JobGraph.mark_failed``), as ``--keep-going`` asks.
"""

from __future__ import annotations

from collections.abc import Sequence

from offload.errors import Unschedulable
from offload.scheduler.dag import JobGraph, JobState
from offload.scheduler.policy.matching import MachineSlotSpec, unschedulable_reason
from offload.scheduler.policy.pool import EligibilityClass, Pool

__all__ = ["classify"]


def classify(
    graph: JobGraph,
    pool: Pool,
    machines: Sequence[MachineSlotSpec],
    class_of: dict[str, EligibilityClass],
    *,
    strict: bool,
) -> tuple[dict[str, str], list[str]]:
    """Fill ``class_of``; returns the jobs no machine can build (with why) and the jobs
    skipped because of them. Raises for such a job when ``strict``."""
    unschedulable: dict[str, str] = {}
    needs: tuple[str, frozenset[str]] | None = None
    for job in graph.jobs():
        cls = pool.class_for(job)
        class_of[job.id] = cls
        if not cls.machines:
            unschedulable[job.id] = unschedulable_reason(job, machines)
            needs = needs or (job.system, frozenset(job.required_features))
    skipped: list[str] = []
    if not unschedulable:
        return unschedulable, skipped
    if strict:
        first, reason = next(iter(unschedulable.items()))
        more = len(unschedulable) - 1
        error = Unschedulable(
            f"no machine can build {first}: {reason}"
            + (f" (and {more} more {'job' if more == 1 else 'jobs'})" if more else ""),
            hint="add a builder with that system and features, or use --keep-going",
        )
        error.needs = needs
        raise error
    for job_id in unschedulable:
        if graph.state(job_id) is not JobState.SKIPPED:
            skipped.extend(graph.mark_failed(job_id))
    return unschedulable, skipped
