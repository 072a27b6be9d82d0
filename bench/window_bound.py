"""A tighter lower bound for the optimum's solver: work that waits for a job, or comes before it.

``offload.scheduler.bound`` takes the longest chain and the total work apart. A graph with a long
serial spine (the bootstrap shape) is bounded by neither: the spine is short at the fastest
speed and the work is small over the whole pool, yet what hangs off the spine's far end cannot
start before the spine gets there. So, for each job ``k``:

- everything that depends on ``k`` starts after ``k``'s earliest end (the longest chain up to and
  through it): the makespan is at least that end plus their work over the pool's capacity; or,
  counting ``k``'s own work with theirs, ``k``'s earliest start plus all of it over the capacity;
- everything ``k`` depends on ends before ``k`` starts, and ``k`` then needs its longest chain to
  a sink: the makespan is at least their work over the capacity plus that chain; or, with ``k``'s
  work among theirs, plus the chain after ``k``.

And over time rather than jobs (energetic reasoning): the jobs whose head is at least ``t`` and
whose chain after them is at least ``a`` all run between ``t`` and the makespan less ``a``. On the
layered and wide shapes, whose work is spread over layers rather than hung off one job, this is
the tighter of the two.

Each chain counts each job at the fastest machine that can build it; capacity is every machine's
(speed x slots), whatever can build what, so both hold with features too. With ``cost`` (seconds
added to every build) a job takes that much more on a chain, and at least ``cost`` times the
slowest speed of the pool's capacity while it holds a slot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from offload.scheduler.dag import Job, JobGraph
from offload.scheduler.policy import MachineSlotSpec, can_build

__all__ = ["window_bound"]


def window_bound(
    jobs: Sequence[Job], machines: Sequence[MachineSlotSpec], cost: float = 0.0
) -> float:
    """No schedule of ``jobs`` on ``machines`` is shorter (module docstring); 0 when some job no
    machine builds (the plain bound leaves those out, and so does this one, by not trying)."""
    usable = [m for m in machines if m.slots > 0]
    if not jobs or not usable:
        return 0.0
    seconds: dict[str, float] = {}
    for job in jobs:
        speeds = [m.speed for m in usable if can_build(m, job.system, job.required_features)]
        if not speeds:
            return 0.0
        seconds[job.id] = job.work_estimate / max(speeds) + cost
    capacity = sum(m.speed * m.slots for m in usable)
    slot_work = cost * min(m.speed for m in usable)  # a build's cost, as work it keeps out
    chains = _Chains(jobs, seconds, {job.id: job.work_estimate + slot_work for job in jobs})
    return max(chains.job_windows(capacity), chains.time_windows(capacity))


class _Chains:
    """Each job's time (``seconds``, at its fastest), its share of capacity (``energy``), its
    head (the longest chain before it) and its tail (the longest from it, itself included)."""

    def __init__(
        self, jobs: Sequence[Job], seconds: Mapping[str, float], energy: Mapping[str, float]
    ) -> None:
        self.seconds, self.energy = seconds, energy
        self.order = JobGraph(jobs).topological_order()
        self.deps = {job.id: job.deps for job in jobs}
        self.dependents: dict[str, list[str]] = {job.id: [] for job in jobs}
        for job in jobs:
            for dep in job.deps:
                self.dependents[dep].append(job.id)
        self.head: dict[str, float] = {}
        for job_id in self.order:
            self.head[job_id] = max(
                (self.head[d] + seconds[d] for d in self.deps[job_id]), default=0.0
            )
        self.tail: dict[str, float] = {}
        for job_id in reversed(self.order):
            self.tail[job_id] = seconds[job_id] + max(
                (self.tail[d] for d in self.dependents[job_id]), default=0.0
            )

    def job_windows(self, capacity: float) -> float:
        """The windows each job opens (module docstring)."""
        before, after = _closures(self.order, self.deps, self.dependents)
        weight = [self.energy[job_id] for job_id in self.order]
        best = 0.0
        for job_id in self.order:
            first, last = self.head[job_id], self.tail[job_id]
            own, held = self.energy[job_id], self.seconds[job_id]
            waiting, needed = _sum(after[job_id], weight), _sum(before[job_id], weight)
            best = max(
                best,
                first + held + waiting / capacity,  # what depends on it starts once it ends
                first + (own + waiting) / capacity,  # ... or, with it, once it can start
                needed / capacity + last,  # what it depends on ends before it starts
                (needed + own) / capacity + last - held,  # ... or, with it, before dependents
            )
        return best

    def time_windows(self, capacity: float) -> float:
        """The jobs that start no sooner than ``t`` and leave at least ``a`` to go after they
        end all run between ``t`` and the makespan less ``a``, for every such ``t`` and ``a``."""
        after_end = {job_id: self.tail[job_id] - self.seconds[job_id] for job_id in self.order}
        best = 0.0
        for t in set(self.head.values()):
            late = sorted(
                ((after_end[j], self.energy[j]) for j in self.order if self.head[j] >= t),
                reverse=True,
            )
            work = 0.0
            for to_go, energy in late:
                work += energy
                best = max(best, t + work / capacity + to_go)
        return best


def _closures(
    order: Sequence[str], deps: Mapping[str, Sequence[str]], dependents: Mapping[str, list[str]]
) -> tuple[dict[str, int], dict[str, int]]:
    """Each job's ancestors and descendants (itself left out), as bit sets over ``order``."""
    bit = {job_id: 1 << i for i, job_id in enumerate(order)}
    before: dict[str, int] = {}
    for job_id in order:
        before[job_id] = 0
        for dep in deps[job_id]:
            before[job_id] |= before[dep] | bit[dep]
    after: dict[str, int] = {}
    for job_id in reversed(order):
        after[job_id] = 0
        for later in dependents[job_id]:
            after[job_id] |= after[later] | bit[later]
    return before, after


def _sum(members: int, weight: list[float]) -> float:
    total, i = 0.0, 0
    while members:
        if members & 1:
            total += weight[i]
        members >>= 1
        i += 1
    return total
