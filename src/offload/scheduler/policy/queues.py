"""Which job is next: the ready queue of each eligibility class, and the coming jobs.

Ordering. Ready jobs are taken by remaining critical path (the longest chain of work estimates
from the job to a sink), ties by more direct dependents, then by id, from one heap per class.
A job's path may be weighed (``weights``, 1 when not given): ``scheduler.search`` tries weights
near 1 and keeps those whose plan is shorter.
Nothing is re-sorted per decision (Hydra's per-step re-sort was O(N² log N), hydra PR #1301);
a changed estimate pushes a fresh heap entry and the stale one is dropped when it surfaces.

Coming jobs. A waiting job whose dependencies have all started is *coming*: it will be ready when
the running ones end. Each waiting job counts its dependencies not started yet; the ones whose
count reaches 0 go into a sorted list in the same order as the ready queues, so a round reads the
most critical coming jobs from its top without scanning the waiting ones (placement decides what
they claim). A job leaves it when it becomes ready; one that stops coming otherwise (a dependency
went back, or failed) is dropped when a round finds it at the top. A job is listed once.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Mapping

from offload.scheduler.dag import JobGraph, JobState
from offload.scheduler.policy.costs import slot_time
from offload.scheduler.policy.pool import EligibilityClass, Run

__all__ = ["Coming", "Queues"]

# A coming job as a round sees it: its queue key, its id and when it is expected to be ready
# (None: not worked out yet, see ``Queues.ready_at``).
Coming = tuple[tuple[float, int, str], str, float | None]


class Queues:
    """The ready jobs (``queued``, one heap per class) and the coming jobs of one graph."""

    def __init__(self, graph: JobGraph, weights: Mapping[str, float] | None = None) -> None:
        self.graph = graph
        self.weights = weights or {}
        self.class_of: dict[str, EligibilityClass] = {}
        self.queued: set[str] = set()
        # Each job's queue key, kept current (``refresh``) rather than worked out per push.
        self.key: dict[str, tuple[float, int, str]] = {}
        self.refresh_all()
        # Per waiting job, its dependencies not started yet; at 0 it is *coming*.
        if graph.count(JobState.DONE) or graph.count(JobState.RUNNING):
            self.unstarted = {job.id: self.count_unstarted(job.id) for job in graph.jobs()}
        else:  # nothing started yet (the usual start): no dependency needs a look
            self.unstarted = {job.id: len(job.deps) for job in graph.jobs()}
        # The coming jobs' queue keys as they were when each became coming, most critical
        # first, and each listed job's key there.
        self.coming: list[tuple[float, int, str]] = []
        self._coming_key: dict[str, tuple[float, int, str]] = {}

    def _key(self, job_id: str) -> tuple[float, int, str]:
        graph = self.graph
        path = graph.critical_path(job_id)
        if self.weights:
            path *= self.weights.get(job_id, 1.0)
        return (-path, -graph.dependents_count(job_id), job_id)

    def refresh(self, job_id: str) -> None:
        """``job_id``'s critical path changed: its key follows."""
        self.key[job_id] = self._key(job_id)

    def refresh_all(self) -> None:
        """Every job's key anew (before anything is queued)."""
        self.key = {job.id: self._key(job.id) for job in self.graph.jobs()}

    def repath(self, job_id: str) -> None:
        """``job_id``'s critical path changed after a failure: its key follows at once where
        it is queued or listed as coming (a changed estimate waits for them to surface)."""
        self.key[job_id] = key = self._key(job_id)
        if job_id in self.queued:
            heapq.heappush(self.class_of[job_id].heap, key)
        elif job_id in self._coming_key:
            self._drop_coming(job_id)
            self._add_coming(key)

    def enqueue(self, job_id: str) -> None:
        heapq.heappush(self.class_of[job_id].heap, self.key[job_id])
        self.queued.add(job_id)
        if job_id in self._coming_key:
            self._drop_coming(job_id)

    def _add_coming(self, key: tuple[float, int, str]) -> None:
        listed = self._coming_key.get(key[2])
        if listed is not None:
            if listed <= key:
                return
            self._drop_coming(key[2])
        bisect.insort(self.coming, key)
        self._coming_key[key[2]] = key

    def _drop_coming(self, job_id: str) -> None:
        key = self._coming_key.pop(job_id)
        del self.coming[bisect.bisect_left(self.coming, key)]

    def best_class(
        self, classes: list[EligibilityClass], full: set[EligibilityClass]
    ) -> EligibilityClass | None:
        """The class, with a free slot and not ``full`` this round, whose head is most critical."""
        best: EligibilityClass | None = None
        best_key: tuple[float, int, str] | None = None
        head = self.head
        for cls in classes:
            if cls.free_up <= 0 or cls in full:
                continue
            first = head(cls)
            if first is not None and (best_key is None or first < best_key):
                best, best_key = cls, first
        return best

    def head(self, cls: EligibilityClass) -> tuple[float, int, str] | None:
        """The most critical queued job's entry in ``cls``'s heap; None when none is queued."""
        heap, key, queued = cls.heap, self.key, self.queued
        # Drop stale entries: started, or superseded by a re-push with a new estimate.
        while heap and (heap[0][2] not in queued or heap[0][0] != key[heap[0][2]][0]):
            heapq.heappop(heap)
        return heap[0] if heap else None

    def count_unstarted(self, job_id: str) -> int:
        state = self.graph.state
        done, running = JobState.DONE, JobState.RUNNING
        return sum(
            1
            for dep in self.graph.job(job_id).deps
            if (s := state(dep)) is not done and s is not running
        )

    def count_started(self, job_id: str, delta: int) -> list[tuple[float, int, str]]:
        """``job_id`` started (-1) or went back (+1): each waiting dependent has one
        dependency fewer (more) to start. Returns the queue keys of those now coming."""
        graph = self.graph
        unstarted = self.unstarted
        coming: list[tuple[float, int, str]] = []
        for d in graph.dependents(job_id):
            left = unstarted[d] = unstarted[d] + delta
            if left == 0 and graph.state(d) is JobState.PENDING:
                key = self.key[d]
                self._add_coming(key)
                coming.append(key)
        return coming

    def undo(self, undone: list[str]) -> list[str]:
        """Finished jobs must run again (``JobGraph.mark_undone``, every such job named): they
        and their dependents are counted and queued afresh. Returns the jobs skipped instead
        (a dependency failed since: ``mark_undone``; ``paths_changed`` then as it left it)."""
        ready, waiting_again, skipped = self.graph.mark_undone(undone)
        for job_id in undone:
            self.count_started(job_id, +1)
        # Undone jobs count their own dependencies afresh (after the loop above touched them).
        for job_id in undone:
            self.unstarted[job_id] = self.count_unstarted(job_id)
        self.queued.difference_update(waiting_again)
        self.queued.difference_update(skipped)
        for job_id in ready:
            self.enqueue(job_id)
        return skipped

    def coming_jobs(self, limit: int) -> list[Coming]:
        """Up to ``limit`` coming jobs, most critical first: (queue key, job, None), as their
        expected ready time is found only for those that claim a slot (``ready_at``)."""
        state = self.graph.state
        unstarted = self.unstarted
        found: list[Coming] = []
        gone: list[str] = []
        if limit > 0:
            for entry in self.coming:
                job_id = entry[2]
                if state(job_id) is not JobState.PENDING or unstarted[job_id]:
                    gone.append(job_id)  # skipped since, or a dependency went back
                    continue
                found.append((self.key[job_id], job_id, None))
                if len(found) == limit:
                    break
        for job_id in gone:
            self._drop_coming(job_id)
        for key, job_id, _ in found:
            if key != self._coming_key[job_id]:  # its estimate changed: listed where it is now
                self._drop_coming(job_id)
                self._add_coming(key)
        return found

    def ready_at(self, job_id: str, now: float, runs: dict[str, list[Run]]) -> float:
        """When a coming job is expected to be ready: it waits only for dependencies that
        are running (``runs``), each until its first copy is expected to end."""
        ready = now
        for dep in self.graph.job(job_id).deps:
            dep_runs = runs.get(dep)
            if dep_runs:
                ends = (slot_time((r.end, r.start, dep, 0), now) for r in dep_runs)
                ready = max(ready, min(ends))
        return ready
