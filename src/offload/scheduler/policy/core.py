"""The policy: which ready job starts on which machine, and when.

The pool is a set of machines (``matching``), grouped by what they can build into eligibility
classes with one ready queue each (``pool``, ``queues``). The policy is synchronous and has no
clock: every call receives ``now`` (seconds on any monotonic scale). A driver (the simulator, or
the async executor) repeatedly

1. calls ``next_decisions(now)`` and carries out what it returns:
   ``Start(job, machine)`` and ``Speculate(job, machine)`` (a second copy of a running job), or
   ``Wait(until)``: nothing more can start now; call again at ``until`` unless an event comes
   first;
2. reports events: ``on_finished(job, machine, now, ok)`` (returns the copies to ``Cancel`` and
   the jobs skipped after a failure) and ``on_machine_failed(machine, now)``.

Builders shared with other clients (``full``): a copy that finds every slot on its builder held
by others is reported (``on_machine_full``); that machine's free slots are withheld, and the
waiting job is moved (``Move``) to a free slot elsewhere once waiting has cost as much as moving
would. A slot given out there again (``on_slot_taken``, ``on_slot_freed``) gives slots back.

The policy assumes its decisions are carried out at once: a ``Start`` occupies the slot at
``now`` and is expected to end at ``now + transfer + work / speed`` (``costs``).

A round of ``next_decisions`` takes the most critical head of the class queues while a slot is
free: a more critical *coming* job claims the slot it will want (``placement``), a ready job
goes where it finishes first (``placement``) or, with slack to spare, to a slower machine
(``slack``); one whose best slot is busy is held. When nothing is ready, idle slots copy running
jobs (``speculation``). Before the ready jobs, a guessed build running far past its estimate is
copied onto a much faster free slot if it has become the critical one (``overrun``).

Failures. A failed build is final and skips its dependents (``JobGraph.mark_failed``): paths
through them no longer count, and the jobs whose critical path that shortens are ordered anew.
A machine that fails (unreachable, connection lost) is backed off (``Backoff``); its running
jobs go back to the ready queues (or lose a copy when another copy runs elsewhere). A successful
build on the machine resets its count. The driver tracks where outputs are: when the only copy
of needed outputs goes with a machine, it reports those jobs (``on_outputs_lost``) and they run
again; a copy that cannot get its inputs because their holder went away is handed back with
``on_returned``.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Iterable, Mapping, Sequence

from offload.scheduler.dag import Job, JobGraph
from offload.scheduler.policy.classify import classify
from offload.scheduler.policy.costs import Backoff, TransferCost
from offload.scheduler.policy.decisions import (
    Cancel,
    Decision,
    Finished,
    MachineDown,
    Start,
    Wait,
)
from offload.scheduler.policy.matching import MachineSlotSpec
from offload.scheduler.policy.overrun import Overrun
from offload.scheduler.policy.placement import (
    MAX_HOLDS_PER_ROUND,
    clear_reservations,
    fastest_free,
    place,
    reserve,
)
from offload.scheduler.policy.pool import EligibilityClass, Machine, Pool, Run
from offload.scheduler.policy.queues import Coming, Queues
from offload.scheduler.policy.ranked import Ranked
from offload.scheduler.policy.round import Round
from offload.scheduler.policy.shared import SharedBuilders
from offload.scheduler.policy.slack import (
    SLACK_SHARE,
    ends_past_run,
    path_margin,
    remaining_path,
    slower_in_slack,
    work_left_now,
)
from offload.scheduler.policy.speculation import Speculation, SpeculationRule

__all__ = ["Policy"]


class Policy(SharedBuilders):
    """The scheduler's decisions over one job graph and one pool; see the module docstring."""

    def __init__(
        self,
        jobs: Iterable[Job] | JobGraph,
        machines: Sequence[MachineSlotSpec],
        *,
        transfer: TransferCost | None = None,
        speculation: SpeculationRule | None = None,
        backoff: Backoff | None = None,
        hold: bool = True,
        slack_share: float = SLACK_SHARE,
        guessed: Iterable[str] = (),
        strict: bool = True,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        """``weights`` weigh each job's critical path in the order of ready jobs (``queues``)."""
        self.graph = jobs if isinstance(jobs, JobGraph) else JobGraph(jobs)
        self._pool = Pool(machines)
        self._transfer = transfer
        self._backoff = backoff if backoff is not None else Backoff()
        self._hold = hold
        self._slack_share = slack_share
        # Jobs whose estimate is a guess, not history: any one of them may be the huge one.
        self._guessed = frozenset(guessed)
        self._speculation = Speculation(
            speculation if speculation is not None else SpeculationRule(),
            slack_share=slack_share,
            slack_margin=path_margin(self.graph) if slack_share > 0 else 0.0,
            guessed=self._guessed,
        )
        self._runs: dict[str, list[Run]] = {}
        # Copies waiting for a slot on a builder full of other clients' builds, by job.
        self._waiting: dict[str, Run] = {}
        self._round = 0
        # Each running job's first copy, most critical first, for the remaining critical path
        # (remaining_path).
        self._by_path = Ranked()
        self._queues = Queues(self.graph, weights)
        self._overrun = Overrun(
            self.graph, self._queues, self._speculation, transfer, self._by_path
        )
        # Jobs skipped later (``take_skipped``): when a copy came back, or outputs to be made
        # again were lost after a dependency failed.
        self._skipped_later: list[tuple[str, tuple[str, ...]]] = []
        # Jobs no machine can build (with why), and those skipped because of them.
        self.unschedulable, self.skipped_at_start = classify(
            self.graph, self._pool, machines, self._queues.class_of, strict=strict
        )
        if self.unschedulable:  # paths through them no longer count: every key anew, once
            self._queues.refresh_all()
        for job_id in self.graph.ready():
            self._queues.enqueue(job_id)

    # Queries

    @property
    def machine_names(self) -> list[str]:
        return list(self._pool.machines)

    def running(self, machine: str) -> list[str]:
        return [job for _, _, job, _ in self._pool.machines[machine].ends]

    def copies(self, job_id: str) -> list[str]:
        return [run.machine.spec.name for run in self._runs.get(job_id, ())]

    def is_up(self, machine: str, now: float) -> bool:
        m = self._pool.machines[machine]
        return m.up or m.down_until <= now

    def down_until(self, machine: str) -> float:
        return self._pool.machines[machine].down_until

    def failures(self, machine: str) -> int:
        return self._pool.machines[machine].failures

    @property
    def ready_count(self) -> int:
        return len(self._queues.queued)

    # Decisions

    def next_decisions(self, now: float) -> list[Decision]:
        pool = self._pool
        pool.bring_back(now)
        self._round += 1
        rnd = Round(self._round, MAX_HOLDS_PER_ROUND if self._hold else 0)
        if self._waiting:
            for job_id, run in list(self._waiting.items()):
                self._move_waiting(rnd, job_id, run, now)
        if self._guessed and pool.free_up_total > 0:  # before the ready jobs take the slots
            overrun_wake = self._overrun.copies(rnd.decisions, now, pool, self._runs)
            rnd.wake = min(rnd.wake, overrun_wake)  # a move waiting above may have set one
        classes = pool.class_list
        graph = self.graph
        work = graph.work
        while pool.free_up_total > 0:
            cls = self._queues.best_class(classes, rnd.full)
            if cls is None:
                break
            if rnd.coming is None:
                rnd.coming = self._queues.coming_jobs(rnd.hold_budget)
            coming = rnd.coming
            head = cls.heap[0]
            # A claim leaves the free slots and the ready queues as they were: the same class
            # and head stay best, so they need no new look.
            while coming and coming[0][0] < head:
                key = coming[0][0]
                # Slack to spare (more than its own work): it claims nothing. The paths are the
                # graph's, not the queue keys' (which ``weights`` may weigh).
                if (remaining := rnd.remaining) is None:  # found once per round
                    remaining = self._remaining(rnd, now, graph.critical_path(head[2]))
                if remaining - graph.critical_path(key[2]) > work(key[2]):
                    del coming[0]
                else:
                    self._claim_for_coming(rnd, coming, now)
            self._place_ready(rnd, coming, cls, now)
        return self._end_round(rnd, now)

    def _remaining(self, rnd: Round, now: float, ready: float) -> float:
        """The round's longest remaining path, found once (``ready``: the most critical
        ready job's path at the first need)."""
        if rnd.remaining is None:
            rnd.remaining = remaining_path(self._by_path, self._runs, now, ready)
        return rnd.remaining

    def _claim_for_coming(self, rnd: Round, coming: list[Coming], now: float) -> None:
        """A job more critical than every ready one, with no slack to spare, will be ready
        soon: it claims the slot it will want, so less critical ready work does not take
        that slot (unless done by then)."""
        graph = self.graph
        _, job_id, ready_at = coming.pop(0)
        if ready_at is None:
            ready_at = self._queues.ready_at(job_id, now, self._runs)
        rnd.hold_budget -= 1
        best, best_start, best_finish = place(
            self._queues.class_of[job_id],
            graph,
            self._transfer,
            job_id,
            now=now,
            ready_at=ready_at,
        )
        if best is not None:
            reserve(best, job_id, best_start, best_finish, now=now, reserved=rnd.reserved)

    def _place_ready(
        self, rnd: Round, coming: list[Coming], cls: EligibilityClass, now: float
    ) -> None:
        """Start the head of ``cls`` where it finishes first (or within its slack), or hold
        it for a busy slot while the round's hold budget lasts."""
        graph = self.graph
        transfer = self._transfer
        job_id = heapq.heappop(cls.heap)[2]
        self._queues.queued.discard(job_id)
        work = graph.work(job_id)
        best, best_start, best_finish = place(cls, graph, transfer, job_id, now=now, ready_at=now)
        assert best is not None  # cls.free_up > 0: some member is up with a free slot
        if self._slack_share > 0 and job_id not in self._guessed:
            slower = slower_in_slack(
                cls,
                graph,
                transfer,
                job_id,
                now,
                share=self._slack_share,
                remaining=self._remaining(rnd, now, graph.critical_path(job_id)),
                best=best,
                best_finish=best_finish,
                margin=self._speculation.slack_margin,
            )
            if slower is not None:
                best, best_finish = slower
                best_start = now
        if best_start > now:
            if rnd.hold_budget > 0:
                rnd.hold_budget -= 1
                reserve(best, job_id, best_start, best_finish, now=now, reserved=rnd.reserved)
                rnd.held.append(job_id)
                rnd.wake = min(rnd.wake, best_start)
                return
            fallback = fastest_free(cls)
            if fallback is None or (self._hold and self._ends_past_run(rnd, fallback, job_id, now)):
                rnd.held.append(job_id)  # for the next round
                if fallback is None:
                    rnd.full.add(cls)
                return
            best = fallback
            best_finish = now + work / best.speed
            if transfer is not None:
                best_finish += transfer.estimate(graph.job(job_id), best.spec.name)
        self._start(rnd, coming, job_id, best, finish=best_finish, now=now)

    def _ends_past_run(self, rnd: Round, m: Machine, job_id: str, now: float) -> bool:
        """Whether ``job_id`` on ``m`` would end after the run is expected to (``slack``): a
        wait for a busy slot, so only where holds are on."""
        pool = self._pool
        return ends_past_run(
            self.graph,
            job_id,
            m.speed,
            fastest=pool.by_speed[0].speed,
            remaining=self._remaining(rnd, now, self.graph.critical_path(job_id)),
            work_left=work_left_now(self.graph, self._runs, now),
            capacity=pool.capacity(),
        )

    def _start(
        self,
        rnd: Round,
        coming: list[Coming],
        job_id: str,
        m: Machine,
        *,
        finish: float,
        now: float,
    ) -> None:
        """``job_id`` starts on ``m`` now and is expected to end at ``finish``."""
        graph = self.graph
        graph.mark_started(job_id)
        for key in self._queues.count_started(job_id, -1):
            # Coming from now on: it may claim a slot ahead of the ready jobs left.
            bisect.insort(coming, (key, key[2], finish))
        run = self._pool.take_slot(m, job_id, now, finish)
        self._runs[job_id] = [run]
        self._by_path.add((-graph.critical_path(job_id), run.copy, job_id))
        self._speculation.track(job_id, run)
        rnd.decisions.append(Start(job_id, m.spec.name, finish))

    def _end_round(self, rnd: Round, now: float) -> list[Decision]:
        """Requeue the held jobs, copy running jobs onto idle slots when nothing is ready,
        and say when to call again."""
        pool = self._pool
        queued = self._queues.queued
        for job_id in rnd.held:
            self._queues.enqueue(job_id)
        decisions = rnd.decisions
        if not queued and pool.free_up_total > 0 and self._runs:
            decisions.extend(
                self._speculation.decide(
                    now,
                    pool,
                    self._runs,
                    class_of=self._queues.class_of,
                    graph=self.graph,
                    transfer=self._transfer,
                    remaining=lambda: self._remaining(rnd, now, 0.0),
                )
            )
        clear_reservations(rnd.reserved)
        wake = rnd.wake
        if queued and pool.down:
            wake = min(wake, *(m.down_until for m in pool.down))
        if wake < math.inf:
            decisions.append(Wait(wake))
        return decisions

    # Events

    def on_finished(self, job_id: str, machine: str, now: float, ok: bool) -> Finished:
        """A copy of ``job_id`` ended on ``machine``: ok=True built, ok=False build failed."""
        del now  # the policy keeps no timings; history learns durations elsewhere
        runs = self._runs.get(job_id)
        run = None
        for r in runs or ():  # a loop, not next() over a generator: this runs per build
            if r.machine.spec.name == machine:
                run = r
                break
        if runs is None or run is None:
            return Finished(accepted=False)
        del self._runs[job_id]
        self._waiting.pop(job_id, None)
        cancel: list[Cancel] = []
        for other in runs:
            self._release(other, job_id)
            if other is not run:
                cancel.append(Cancel(job_id, other.machine.spec.name))
        if not ok:
            skipped = self.graph.mark_failed(job_id)
            self._repath(self.graph.paths_changed)
            return Finished(True, tuple(cancel), (), tuple(skipped))
        run.machine.failures = run.machine.earlier_failures = 0
        if self._transfer is not None:
            self._transfer.record_output(job_id, machine)
        newly = self.graph.mark_done(job_id)
        for ready in newly:
            self._queues.enqueue(ready)
        return Finished(True, tuple(cancel), tuple(newly), ())

    def _repath(self, changed: list[str]) -> None:
        """A failure shortened these jobs' critical paths: order them by the new value."""
        for job_id in changed:
            self._queues.repath(job_id)
            for run in self._runs.get(job_id, ()):  # ``remaining_path`` reads them
                self._by_path.rerank(run.copy, -self.graph.critical_path(job_id))

    def on_machine_failed(self, machine: str, now: float) -> MachineDown:
        """The machine is unreachable or dropped mid-build: back it off, requeue its work."""
        m = self._pool.machines[machine]
        within = now - m.last_failure < self._backoff.coalesce and m.down_until > now
        if not within:
            m.failures = min(max(m.failures, m.earlier_failures) + 1, self._backoff.max_steps)
            m.earlier_failures = 0
            m.down_until = now + self._backoff.delay(m.failures)
        m.last_failure = now
        for _, _, job_id, _ in m.ends:
            if (waiting := self._waiting.get(job_id)) is not None and waiting.machine is m:
                del self._waiting[job_id]
                waiting.waiting_since = None
        self._pool.restore(m, m.withheld)  # its back-off decides when it is tried again
        m.cut_withheld = 0  # nor are the slots a load cut took from withheld: free when it ends
        self._pool.take_down(m)
        returned: list[str] = []
        for _, _, job_id, _ in list(m.ends):
            runs = self._runs[job_id]
            if self._drop_copy(job_id, runs, next(r for r in runs if r.machine is m)):
                returned.append(job_id)
        return MachineDown(machine, m.down_until, m.failures, tuple(returned), merged=within)

    def _drop_copy(self, job_id: str, runs: list[Run], run: Run) -> bool:
        """Free one copy's slot; True if it was the job's last, which then goes back."""
        if run.waiting_since is not None:
            del self._waiting[job_id]
        self._release(run, job_id)
        runs.remove(run)
        if runs:
            return False
        del self._runs[job_id]
        self._queues.count_started(job_id, +1)
        skipped = self.graph.mark_returned(job_id)
        if skipped is None:
            self._queues.enqueue(job_id)
        elif skipped:
            self._repath(self.graph.paths_changed)
            self._skipped_later.append((self.graph.failed_before(job_id), tuple(skipped)))
        return True

    def take_skipped(self) -> list[tuple[str, tuple[str, ...]]]:
        """The jobs skipped since the last call because a copy came back for one that can
        never run now (``JobGraph.mark_returned``), or one to be made again that cannot
        (``on_outputs_lost``): (the failed job that doomed them, them)."""
        taken, self._skipped_later = self._skipped_later, []
        return taken

    def _release(self, run: Run, job_id: str) -> None:
        """``run`` ended, was cancelled or lost: its slot is free and no round looks at it."""
        self._pool.release_slot(run, job_id)
        self._by_path.discard(run.copy)
        self._speculation.untrack(run)

    def on_returned(self, job_id: str, machine: str) -> bool:
        """The copy of ``job_id`` on ``machine`` gave up through no fault of that machine (an
        input's holder went away): free its slot and queue the job again if no copy is left.
        False if there was no such copy."""
        runs = self._runs.get(job_id)
        run = next((r for r in runs or () if r.machine.spec.name == machine), None)
        if runs is None or run is None:
            return False
        self._drop_copy(job_id, runs, run)
        return True

    def on_outputs_lost(self, job_ids: Iterable[str]) -> None:
        """These finished jobs' outputs are gone and still needed: they must run again
        (``JobGraph.mark_undone``: pass every such job, dependencies included), or, where a
        dependency failed since, are skipped (told by ``take_skipped``)."""
        skipped = self._queues.undo(list(job_ids))
        if skipped:
            self._repath(self.graph.paths_changed)
        causes: dict[str, list[str]] = {}
        for job_id in skipped:
            causes.setdefault(self.graph.failed_before(job_id), []).append(job_id)
        self._skipped_later += [(cause, tuple(jobs)) for cause, jobs in causes.items()]

    def hold(self, machine: str) -> None:
        """Keep ``machine`` out until it answers (``on_machine_up``) or fails
        (``on_machine_failed``): it is still connecting, which is not a failure."""
        m = self._pool.machines[machine]
        m.down_until = math.inf
        self._pool.take_down(m)

    def on_machine_up(self, machine: str, now: float) -> None:
        """A held machine answered: it takes work from the next decision on."""
        m = self._pool.machines[machine]
        if m.failures == 0:
            m.down_until = now

    def restore_down(self, machine: str, failures: int, until: float) -> None:
        """Start with ``machine`` backed off, as a previous run left it (before any decision)."""
        m = self._pool.machines[machine]
        m.failures = min(max(failures, 1), self._backoff.max_steps)
        m.down_until = until
        self._pool.take_down(m)

    def remember_failures(self, machine: str, failures: int) -> None:
        """``machine`` is up, but an earlier run backed it off ``failures`` times in a row and
        it has not built since: failing again backs it off longer (``offload.backoff``)."""
        self._pool.machines[machine].earlier_failures = max(0, failures)

    def retry_now(self, machine: str, now: float) -> None:
        """``machine``, backed off, is tried again from ``now`` on; its failures kept, so that
        failing again backs it off longer."""
        self._pool.machines[machine].down_until = now

    def on_estimate(self, job_id: str, work: float) -> None:
        """A better estimate arrived (history, hints): reorder the affected ready jobs."""
        self.on_estimates({job_id: work})

    def on_estimates(self, works: Mapping[str, float]) -> None:
        """Better estimates for many jobs at once (a run learning what guesses were worth)."""
        for changed in self.graph.update_estimates(works):
            self._queues.refresh(changed)
            if changed in self._queues.queued:
                self._queues.enqueue(changed)
