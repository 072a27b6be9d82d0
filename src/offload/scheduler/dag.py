"""The job graph: pure bookkeeping of what is waiting, ready, running, done, failed or skipped.

A ``Job`` is the scheduler's own minimal view of a derivation: an id, an estimated amount of
work (seconds on a machine of speed 1), the ids it depends on, and what it needs of a machine
(system and required features). Real derivations and DAG files are both turned into jobs.

``JobGraph`` holds the states and moves jobs between them::

    PENDING --(last dep done)--> READY --started--> RUNNING --done--> DONE
       ^                           ^                   |    --failed-> FAILED
       |                           +----returned-------+           (dependents -> SKIPPED)
       +--------------------- undone (its outputs were lost) ----------+

A failed job is final (Nix builds are deterministic, so it is not retried); every job that
transitively depends on it becomes SKIPPED, and the skipped ids are returned so the caller can
report them. Independent work stays unaffected. A job returned to READY is one whose machine
went away mid-build. A DONE job is *undone* when the only copy of its outputs was on a machine
that went away while something still needs them: it must run again, and its dependents wait for
it once more (a running dependent keeps running: it may have its inputs already).

Each job's *remaining critical path* is the longest sum of work estimates on a path from the job
(included) to a sink, over the jobs that can still run: a failed or skipped job counts 0. It is
computed once in reverse topological order; when an estimate changes, or a failure skips jobs,
only the ancestors whose value actually changes are revisited (after a failure, latest in
topological order first, so each is worked out once, from final values).

Everything is indexed by integers internally and is O(nodes + edges) overall.
"""

from __future__ import annotations

import enum
import heapq
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from offload.errors import SchedulerError

__all__ = ["Job", "JobGraph", "JobState"]


@dataclass(frozen=True, slots=True)
class Job:
    """One unit of work. ``system == "builtin"`` runs anywhere, as in Nix."""

    id: str
    work_estimate: float
    deps: tuple[str, ...] = ()
    system: str = "builtin"
    required_features: frozenset[str] = field(default_factory=frozenset)


class JobState(enum.Enum):
    PENDING = "pending"
    READY = "ready"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"

    # Members are singletons, so identity is their hash; Enum's own hashes the name in Python
    # on every lookup, and the state counts are looked up on every transition.
    __hash__ = object.__hash__


_PENDING = JobState.PENDING
_READY = JobState.READY
_RUNNING = JobState.RUNNING
_DONE = JobState.DONE
_FAILED = JobState.FAILED
_SKIPPED = JobState.SKIPPED


class JobGraph:
    """The dependency graph of the jobs still to run, with their states."""

    def __init__(self, jobs: Iterable[Job]) -> None:
        self._jobs: list[Job] = list(jobs)
        index: dict[str, int] = {}
        for i, job in enumerate(self._jobs):
            if job.id in index:
                raise SchedulerError(f"job {job.id!r} appears twice in the graph")
            if not 0.0 <= job.work_estimate < math.inf:  # NaN too: no comparison holds for it
                raise SchedulerError(
                    f"job {job.id!r}: its work estimate must be a finite number >= 0, "
                    f"not {job.work_estimate}"
                )
            index[job.id] = i
        self._index = index
        n = len(self._jobs)
        deps: list[list[int]] = []
        dependents: list[list[int]] = [[] for _ in range(n)]
        for i, job in enumerate(self._jobs):
            try:
                mine = list(map(index.__getitem__, job.deps))  # no comprehension: 50k calls
            except KeyError:
                dep = next(dep for dep in job.deps if dep not in index)
                raise SchedulerError(
                    f"job {job.id!r} depends on {dep!r}, which is not in the graph",
                    hint="a dependency that is already built must be left out of deps",
                ) from None
            if len(mine) > 1 and len(set(mine)) < len(mine):  # one named twice counts once
                mine = list(dict.fromkeys(mine))
                # The job as the graph keeps it names each once too: its readers (the
                # policy's count of dependencies not started) count what the graph counts.
                self._jobs[i] = Job(job.id, job.work_estimate, tuple(dict.fromkeys(job.deps)),
                                    job.system, job.required_features)  # fmt: skip
            deps.append(mine)
            for j in mine:
                dependents[j].append(i)
        self._deps = deps
        self._dependents = dependents
        self._order = self._topological_order()
        self._work = [job.work_estimate for job in self._jobs]
        # The estimated work of the jobs not done, failed nor skipped (``work_left``), kept
        # through every transition rather than summed when asked.
        self._left: float = sum(self._work, 0.0)
        cp = self._cp = [0.0] * n
        for i in reversed(self._order):
            cp[i] = self._work[i] + max(map(cp.__getitem__, dependents[i]), default=0.0)
        self._waiting = [len(d) for d in deps]
        self._state = [_READY if not d else _PENDING for d in deps]
        self._counts = dict.fromkeys(JobState, 0)
        self._counts[_READY] = sum(1 for d in deps if not d)
        self._counts[_PENDING] = n - self._counts[_READY]
        # Each job's place in ``_order``, found on the first failure (most runs have none).
        self._position: list[int] | None = None
        # The jobs whose critical path the last ``mark_failed`` changed.
        self.paths_changed: list[str] = []

    def _topological_order(self) -> list[int]:
        waiting = [len(d) for d in self._deps]
        queue = deque(i for i, w in enumerate(waiting) if w == 0)
        order: list[int] = []
        while queue:
            i = queue.popleft()
            order.append(i)
            for d in self._dependents[i]:
                waiting[d] -= 1
                if waiting[d] == 0:
                    queue.append(d)
        if len(order) != len(self._jobs):
            raise SchedulerError(
                "dependency cycle: " + " -> ".join(self._find_cycle(waiting)),
                hint="a derivation graph is acyclic; check the DAG file's deps",
            )
        return order

    def _find_cycle(self, waiting: Sequence[int]) -> list[str]:
        # Every node left with waiting > 0 has a dep that is also left: walking deps must loop.
        start = next(i for i, w in enumerate(waiting) if w > 0)
        position: dict[int, int] = {}
        path: list[int] = []
        node = start
        while node not in position:
            position[node] = len(path)
            path.append(node)
            node = next(d for d in self._deps[node] if waiting[d] > 0)
        cycle = path[position[node] :]
        # Printed in build order: each job is followed by one that depends on it.
        names = [self._jobs[i].id for i in reversed(cycle)]
        return [*names, names[0]]

    # Queries

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._index

    def job(self, job_id: str) -> Job:
        return self._jobs[self._index[job_id]]

    def jobs(self) -> Sequence[Job]:
        return self._jobs

    def state(self, job_id: str) -> JobState:
        return self._state[self._index[job_id]]

    def count(self, state: JobState) -> int:
        return self._counts[state]

    @property
    def finished(self) -> bool:
        """True when nothing is pending, ready or running any more."""
        counts = self._counts
        return counts[_PENDING] + counts[_READY] + counts[_RUNNING] == 0

    def ready(self) -> list[str]:
        return [self._jobs[i].id for i, s in enumerate(self._state) if s is _READY]

    def topological_order(self) -> list[str]:
        return [self._jobs[i].id for i in self._order]

    def work(self, job_id: str) -> float:
        return self._work[self._index[job_id]]

    def critical_path(self, job_id: str) -> float:
        """Longest sum of work estimates from this job (included) to a sink."""
        return self._cp[self._index[job_id]]

    def graph_critical_path(self) -> float:
        return max(self._cp, default=0.0)

    def longest_path(self, weights: Sequence[float]) -> float:
        """The largest sum of ``weights`` (one per job, in the order of ``jobs()``) along a
        chain of dependencies; 0 for an empty graph."""
        deps = self._deps
        end = [0.0] * len(weights)
        get = end.__getitem__
        for i in self._order:  # dependencies first
            end[i] = max(map(get, deps[i]), default=0.0) + weights[i]
        return max(end, default=0.0)

    def total_work(self) -> float:
        # 0.0 for no jobs, not sum()'s int 0: compiled (mypyc) it is a float whatever it sums.
        return sum(self._work, 0.0)

    @property
    def work_left(self) -> float:
        """The estimated work of every job still to finish (pending, ready or running; a
        running job counted whole)."""
        return max(self._left, 0.0)  # float sums drift: never below nothing

    def dependents(self, job_id: str) -> list[str]:
        jobs = self._jobs
        return [jobs[d].id for d in self._dependents[self._index[job_id]]]

    def dependents_count(self, job_id: str) -> int:
        return len(self._dependents[self._index[job_id]])

    # Transitions

    def _move(self, i: int, new: JobState) -> None:
        counts = self._counts
        counts[self._state[i]] -= 1
        counts[new] += 1
        self._state[i] = new

    def _expect(self, job_id: str, allowed: tuple[JobState, ...], action: str) -> int:
        i = self._index.get(job_id)
        if i is None:
            raise SchedulerError(f"cannot {action} {job_id!r}: no such job")
        if self._state[i] not in allowed:
            raise SchedulerError(f"cannot {action} {job_id!r}: it is {self._state[i].value}")
        return i

    def mark_started(self, job_id: str) -> None:
        i = self._index.get(job_id)
        if i is None or self._state[i] is not _READY:  # the usual case without a call
            i = self._expect(job_id, (_READY,), "start")  # raises, saying why
        self._state[i] = _RUNNING  # _move, inlined
        counts = self._counts
        counts[_READY] -= 1
        counts[_RUNNING] += 1

    def mark_returned(self, job_id: str) -> list[str] | None:
        """A running job goes back because its machine went away: None if it is READY again;
        else the jobs now SKIPPED because of it, the job itself first, when a dependency was
        undone meanwhile and then failed (or was skipped) while it ran, so it never can run;
        else [] (a dependency undone meanwhile: it is PENDING until that is built again). The
        critical paths that ran through skipped jobs are shortened (``paths_changed``)."""
        i = self._expect(job_id, (_RUNNING,), "return")
        if self._waiting[i] == 0:
            self._move(i, _READY)
            return None
        if not self._doomed(i):
            self._move(i, _PENDING)
            return []
        self._move(i, _SKIPPED)
        return self._skip_after(i)

    def _doomed(self, i: int) -> bool:
        """Whether job ``i`` depends on one that failed or was skipped: it never can run."""
        state = self._state
        return any(state[d] is _FAILED or state[d] is _SKIPPED for d in self._deps[i])

    def failed_before(self, job_id: str) -> str:
        """A FAILED job ``job_id`` depends on, nearest first ("" if none)."""
        seen: set[int] = set()
        queue = deque(self._deps[self._index[job_id]])
        while queue:
            d = queue.popleft()
            if self._state[d] is _FAILED:
                return self._jobs[d].id
            if d not in seen:
                seen.add(d)
                queue.extend(self._deps[d])
        return ""

    def inputs_done(self, job_id: str) -> bool:
        """Every dependency of ``job_id`` is built (none undone since): a copy may start."""
        return self._waiting[self._index[job_id]] == 0

    def mark_done(self, job_id: str) -> list[str]:
        """Record success; returns the jobs that became ready."""
        i = self._expect(job_id, (_RUNNING, _READY), "finish")
        self._move(i, _DONE)
        self._left -= self._work[i]
        newly: list[str] = []
        waiting = self._waiting
        state = self._state
        for d in self._dependents[i]:
            left = waiting[d] = waiting[d] - 1
            if left == 0 and state[d] is _PENDING:
                state[d] = _READY  # _move, inlined: counted below
                newly.append(self._jobs[d].id)
        if newly:
            counts = self._counts
            counts[_PENDING] -= len(newly)
            counts[_READY] += len(newly)
        return newly

    def mark_undone(self, job_ids: Iterable[str]) -> tuple[list[str], list[str], list[str]]:
        """DONE jobs must run again; returns (those now READY, READY dependents now PENDING,
        those now SKIPPED).

        The caller undoes together every job whose outputs are gone and still needed,
        dependencies included, so each one's wait count is its deps that are not DONE. One
        whose dependency was undone before and has failed (or been skipped) since can never
        run: it is SKIPPED, with the dependents that wait on it, each undone job first
        (``paths_changed`` as ``mark_failed`` leaves it)."""
        undone = [self._expect(job_id, (_DONE,), "undo") for job_id in job_ids]
        for i in undone:
            self._move(i, _PENDING)
            self._left += self._work[i]
        waiting = self._waiting
        state = self._state
        demoted: list[str] = []
        for i in undone:
            # Every dependent is counted, done or not, as mark_done will count each one down.
            for d in self._dependents[i]:
                waiting[d] += 1
                if state[d] is _READY:
                    self._move(d, _PENDING)
                    demoted.append(self._jobs[d].id)
        ready: list[str] = []
        doomed: list[int] = []
        for i in undone:
            waiting[i] = sum(1 for dep in self._deps[i] if state[dep] is not _DONE)
            if self._doomed(i):
                doomed.append(i)
            elif waiting[i] == 0:
                self._move(i, _READY)
                ready.append(self._jobs[i].id)
        skipped: list[str] = []
        changed: list[str] = []
        for i in doomed:
            if state[i] is _PENDING:  # not skipped already, through another of them
                self._move(i, _SKIPPED)
                skipped += self._skip_after(i)
                changed += self.paths_changed
        self.paths_changed = changed
        return ready, demoted, skipped

    def mark_failed(self, job_id: str) -> list[str]:
        """Record failure; returns every transitive dependent, now SKIPPED, in BFS order.

        The critical paths that ran through them are shortened (``paths_changed`` lists the
        jobs whose value changed)."""
        i = self._expect(job_id, (_RUNNING, _READY, _PENDING), "fail")
        self._move(i, _FAILED)
        return self._skip_after(i)[1:]

    def _skip_after(self, i: int) -> list[str]:
        """Job ``i`` failed or was skipped: every PENDING job after it is SKIPPED. Returns
        ``i`` and those, in BFS order. (A RUNNING one is left: its copy may hold its inputs
        already; if it comes back, ``mark_returned`` skips it then.)"""
        gone = [i]
        queue = deque(self._dependents[i])
        state = self._state
        while queue:
            d = queue.popleft()
            if state[d] is not _PENDING:
                # Already skipped through another failed dep; its dependents are too.
                continue
            self._move(d, _SKIPPED)
            gone.append(d)
            queue.extend(self._dependents[d])
        self._left -= sum(map(self._work.__getitem__, gone), 0.0)
        self.paths_changed = self._drop_paths(gone)
        jobs = self._jobs
        return [jobs[d].id for d in gone]

    def _drop_paths(self, gone: list[int]) -> list[str]:
        """``gone`` can no longer run: their paths count 0, and their ancestors' are worked
        out again (``_repath``)."""
        for g in gone:
            self._cp[g] = 0.0
        deps = self._deps
        return self._repath([p for g in gone for p in deps[g]])

    def _repath(self, starts: list[int]) -> list[str]:
        """The critical paths of ``starts``, and of their ancestors where one changes, worked
        out again, latest in topological order first, each job at most once (one ancestor
        of many changed jobs, a wide graph's root, was worked out once per job: quadratic).
        Failed and skipped jobs are never taken: their paths stay 0. Returns the jobs whose
        path changed."""
        position = self._position
        if position is None:
            position = self._position = [0] * len(self._jobs)
            for place, j in enumerate(self._order):
                position[j] = place
        cp, deps, state = self._cp, self._deps, self._state
        # A job's dependencies come before it in ``_order``, so once popped it is not pushed
        # again: ``pushed`` is every job ever queued.
        pushed: set[int] = set()
        heap: list[int] = []
        for p in starts:
            if p not in pushed and state[p] is not _FAILED and state[p] is not _SKIPPED:
                pushed.add(p)
                heapq.heappush(heap, -position[p])
        order, work, dependents, jobs = self._order, self._work, self._dependents, self._jobs
        changed: list[str] = []
        while heap:
            j = order[-heapq.heappop(heap)]
            value = work[j] + max(map(cp.__getitem__, dependents[j]), default=0.0)
            if value == cp[j]:
                continue
            cp[j] = value
            changed.append(jobs[j].id)
            for p in deps[j]:
                # A live job's dependency may have failed: undone, then failed when made again.
                if p not in pushed and state[p] is not _FAILED and state[p] is not _SKIPPED:
                    pushed.add(p)
                    heapq.heappush(heap, -position[p])
        return changed

    def update_estimate(self, job_id: str, work: float) -> list[str]:
        """Change a job's estimate; returns the jobs whose critical path changed."""
        return self.update_estimates({job_id: work})

    def update_estimates(self, works: Mapping[str, float]) -> list[str]:
        """Change jobs' estimates at once; returns the jobs whose critical path changed."""
        changed: list[int] = []
        for job_id, work in works.items():
            if not 0.0 <= work < math.inf:
                raise SchedulerError(
                    f"job {job_id!r}: its work estimate must be a finite number >= 0, not {work}"
                )
            i = self._index[job_id]
            state = self._state[i]
            if state is not _DONE and state is not _FAILED and state is not _SKIPPED:
                self._left += work - self._work[i]
            self._work[i] = work
            changed.append(i)  # a failed or skipped one's path counts 0 however long
        return self._repath(changed)
