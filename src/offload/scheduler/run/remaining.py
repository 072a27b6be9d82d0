"""How long a run still needs by the scheduler's own plan: the ETA the live view shows.

At any moment of a run, the jobs left (waiting, ready, running) are planned again by the
simulator (``scheduler.simulate``: the policy itself, on exact estimates) over the machines that
are up. A running job counts with the work its build has left: its estimate less what its
machine has done since the build began, never below zero (an overdue build may end at any
moment). The simulated makespan is the answer. Transfers are not in it (the plan has no sizes),
and a running job may be planned again on a faster machine than its own, so the figure leans
optimistic; the view smooths it (``ui.eta``).

Planning again costs about as much as the run's own scheduling of what is left, so above
``SIMULATE_LIMIT`` jobs left the lower bound (critical path over the fastest machine, total work
over capacity) stands in for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from offload.errors import SchedulerError
from offload.scheduler.dag import Job, JobGraph, JobState
from offload.scheduler.policy import MachineSlotSpec
from offload.scheduler.simulate import lower_bound, simulate

__all__ = ["SIMULATE_LIMIT", "remaining_seconds"]

SIMULATE_LIMIT = 200
_LEFT = frozenset({JobState.PENDING, JobState.READY, JobState.RUNNING})


def remaining_seconds(
    graph: JobGraph, done: Mapping[str, float], machines: Sequence[MachineSlotSpec]
) -> float | None:
    """Seconds until the last job left ends, by the plan; None when no machine is up.

    ``done`` is, per running job, the work its build has done so far (seconds on its machine
    times that machine's speed).
    """
    left = [job for job in graph.jobs() if graph.state(job.id) in _LEFT]
    if not left:
        return 0.0
    usable = [m for m in machines if m.slots > 0]
    if not usable:
        return None
    ids = {job.id for job in left}
    # The graph's estimate, not the job's own: a first run's guesses learn within the run.
    work = graph.work
    jobs = [
        Job(
            job.id,
            max(work(job.id) - done.get(job.id, 0.0), 0.0),
            tuple(dep for dep in job.deps if dep in ids),
            job.system,
            job.required_features,
        )
        for job in left
    ]
    try:
        if len(jobs) > SIMULATE_LIMIT:
            return lower_bound(jobs, usable)
        return simulate(jobs, usable, speculate=False, strict=False).makespan
    except SchedulerError:  # nothing up can build what is left: the plan has no answer
        return None
