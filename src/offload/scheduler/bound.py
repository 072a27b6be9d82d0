"""The lower bound every simulation and benchmark is measured against: no schedule is shorter.

Two limits, the larger wins. The longest chain of dependencies, each job at the fastest machine
that can build it (its system and features, as Nix matches them). And for every set of machines
that some jobs can only run on, those jobs' work over that set's capacity (speed x slots); the
set of all machines gives total work over total capacity. Without features this is
max(critical path / fastest speed, total work / total capacity). Transfers are free and
estimates exact, so a real run stays above it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from offload.errors import SchedulerError
from offload.scheduler.dag import Job, JobGraph
from offload.scheduler.policy import MachineSlotSpec
from offload.scheduler.policy.matching import can_build

__all__ = ["lower_bound"]


def lower_bound(jobs: Iterable[Job] | JobGraph, machines: Sequence[MachineSlotSpec]) -> float:
    """No schedule is shorter: the longest chain of jobs, each at the fastest machine that can
    build it, and for every set of machines some jobs can only run on, those jobs' work over
    that set's capacity (with no features, max(critical path / fastest, work / capacity)).
    Jobs no machine can build are left out: they fail; so are the jobs after them, skipped."""
    graph = jobs if isinstance(jobs, JobGraph) else JobGraph(jobs)
    usable = [m for m in machines if m.slots > 0]
    if not usable:
        raise SchedulerError("no machine has a slot")
    # Per (system, features): the machines that can build it and the fastest one's speed,
    # found once per kind, not once per job.
    eligible: dict[tuple[str, frozenset[str]], tuple[frozenset[int], float]] = {}
    # Each job's time at the fastest machine that can build it, in the order of
    # ``graph.jobs()``; 0 for one no machine can build and for every job after it, which are
    # skipped, never built (a bound counting them would be longer than such a run).
    index = {job.id: i for i, job in enumerate(graph.jobs())}
    seconds = [0.0] * len(index)
    built = [False] * len(index)
    work_on: dict[frozenset[int], float] = {}
    for job_id in graph.topological_order():  # dependencies first
        i = index[job_id]
        job = graph.jobs()[i]
        kind = (job.system, job.required_features)
        if kind not in eligible:
            where = frozenset(
                k for k, m in enumerate(usable) if can_build(m, job.system, job.required_features)
            )
            eligible[kind] = (where, max((usable[k].speed for k in where), default=0.0))
        where, fastest = eligible[kind]
        if where and all(built[index[dep]] for dep in job.deps):
            built[i] = True
            seconds[i] = job.work_estimate / fastest
            work_on[where] = work_on.get(where, 0.0) + job.work_estimate
    chain = graph.longest_path(seconds)
    crowded = max(
        (
            math.fsum(w for s, w in work_on.items() if s <= where)
            / math.fsum(usable[i].speed * usable[i].slots for i in where)
            for where in {*work_on, frozenset(range(len(usable)))}
        ),
        default=0.0,
    )
    return max(chain, crowded)
