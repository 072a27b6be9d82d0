"""Which job is next: the ready queue of each eligibility class, and the coming jobs.

Ordering. Ready jobs are taken by remaining critical path (the longest chain of work estimates
from the job to a sink), ties by more direct dependents, then by id, from one heap per class.
Nothing is re-sorted per decision (Hydra's per-step re-sort was O(N² log N), hydra PR #1301);
a changed estimate pushes a fresh heap entry and the stale one is dropped when it surfaces.

Coming jobs. A waiting job whose dependencies have all started is *coming*: it will be ready when
the running ones end. Each waiting job counts its dependencies not started yet; the ones whose
count reaches 0 go on a heap in the same order as the ready queues, so a round can look at the
most critical coming jobs without scanning the waiting ones (placement decides what they claim).
"""

from __future__ import annotations

import heapq

from offload.scheduler.dag import JobGraph, JobState
from offload.scheduler.policy.costs import slot_time
from offload.scheduler.policy.pool import EligibilityClass, Run

__all__ = ["Coming", "Queues"]

# A coming job as a round sees it: its queue key, its id and when it is expected to be ready.
Coming = tuple[tuple[float, int, str], str, float]


class Queues:
    """The ready jobs (``queued``, one heap per class) and the coming jobs of one graph."""

    def __init__(self, graph: JobGraph) -> None:
        self.graph = graph
        self.class_of: dict[str, EligibilityClass] = {}
        self.queued: set[str] = set()
        # Per waiting job, its dependencies not started yet; at 0 it is *coming*.
        self.unstarted = {job.id: self.count_unstarted(job.id) for job in graph.jobs()}
        self.coming: list[tuple[float, int, str]] = []

    def enqueue(self, job_id: str) -> None:
        cls = self.class_of[job_id]
        graph = self.graph
        heapq.heappush(
            cls.heap, (-graph.critical_path(job_id), -graph.dependents_count(job_id), job_id)
        )
        self.queued.add(job_id)

    def best_class(
        self, classes: list[EligibilityClass], full: set[EligibilityClass]
    ) -> EligibilityClass | None:
        """The class, with a free slot and not ``full`` this round, whose head is most critical."""
        best: EligibilityClass | None = None
        best_key: tuple[float, int, str] | None = None
        graph = self.graph
        queued = self.queued
        for cls in classes:
            if cls.free_up <= 0 or cls in full:
                continue
            heap = cls.heap
            # Drop stale entries: started, or superseded by a re-push with a new estimate.
            while heap and (
                heap[0][2] not in queued or -heap[0][0] != graph.critical_path(heap[0][2])
            ):
                heapq.heappop(heap)
            if heap and (best_key is None or heap[0] < best_key):
                best, best_key = cls, heap[0]
        return best

    def count_unstarted(self, job_id: str) -> int:
        graph = self.graph
        return sum(
            1
            for dep in graph.job(job_id).deps
            if graph.state(dep) not in {JobState.DONE, JobState.RUNNING}
        )

    def count_started(self, job_id: str, delta: int) -> list[tuple[float, int, str]]:
        """``job_id`` started (-1) or went back (+1): each waiting dependent has one
        dependency fewer (more) to start. Returns the queue keys of those now coming."""
        graph = self.graph
        unstarted = self.unstarted
        coming: list[tuple[float, int, str]] = []
        for d in graph.dependents(job_id):
            unstarted[d] += delta
            if unstarted[d] == 0 and graph.state(d) is JobState.PENDING:
                key = (-graph.critical_path(d), -graph.dependents_count(d), d)
                heapq.heappush(self.coming, key)
                coming.append(key)
        return coming

    def coming_jobs(self, now: float, limit: int, runs: dict[str, list[Run]]) -> list[Coming]:
        """Up to ``limit`` coming jobs, most critical first: (queue key, job, expected ready
        time). A coming job waits only for dependencies that are running (``runs``)."""
        graph = self.graph
        heap = self.coming
        found: list[Coming] = []
        while heap and len(found) < limit:
            job_id = heapq.heappop(heap)[2]
            if graph.state(job_id) is not JobState.PENDING or self.unstarted[job_id]:
                continue  # ready, started or skipped since, or a dependency went back: dead
            ready_at = now
            for dep in graph.job(job_id).deps:
                dep_runs = runs.get(dep)
                if dep_runs:
                    ends = (slot_time((r.end, r.start, dep, 0), now) for r in dep_runs)
                    ready_at = max(ready_at, min(ends))
            key = (-graph.critical_path(job_id), -graph.dependents_count(job_id), job_id)
            found.append((key, job_id, ready_at))
        for key, _, _ in found:
            heapq.heappush(heap, key)
        return found
