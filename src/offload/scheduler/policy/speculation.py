"""Idle tail: a second copy of a running job on a faster free machine.

When no job is ready or held and a machine has a free slot, a running job is copied onto the
fastest such machine if that copy is expected to finish earlier by more than both ``min_gain``
seconds and ``min_ratio`` of the running copy's expected remaining time; a running copy past
its expected end only onto a machine faster than its own (its estimate is disproved: one was
copied onto a machine ten times slower, and held the only slot a later job could use, until it
ended; a copy no faster may still gain where the inputs move faster to it). A build nothing
depends on, known from history (not ``guessed``) and expected to end within its share of slack
(``slack.ends_in_slack``, the bound that sent it to a slower machine), is not copied onto the
last free slot as fast as the copy's: ending it sooner ends no path sooner, and that slot is the
one the critical work about to be ready wants (on a chain with heavy side builds, the side builds
the slack rule sent to slow machines were copied back onto the fast one whenever it idled, and
the next critical side build waited for it). A job gets at most one extra copy, ever (a copy
waiting on a builder full of other clients' builds is moved instead, ``full``). The first copy
to finish wins; ``on_finished`` returns a ``Cancel`` for the other, whose slot is free at once.
Only a bounded set of running copies is examined per call (those with the latest planned end,
and the longest-overdue ones), not every running job.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from offload.scheduler.dag import JobGraph
from offload.scheduler.policy.costs import MIN_OVERDUE, OVERDUE_FRACTION, TransferCost
from offload.scheduler.policy.decisions import Decision, Speculate
from offload.scheduler.policy.placement import fastest_free
from offload.scheduler.policy.pool import EligibilityClass, Machine, Pool, Run, first_free
from offload.scheduler.policy.ranked import Ranked
from offload.scheduler.policy.slack import ends_in_slack

__all__ = ["Speculation", "SpeculationRule"]

# Running copies examined per round for idle-tail speculation, per ordering.
_SPECULATION_LOOKAHEAD = 8


@dataclass(frozen=True, slots=True)
class SpeculationRule:
    min_gain: float = 1.0
    min_ratio: float = 0.2


@dataclass(slots=True)
class Speculation:
    """The single-copy runs worth a look, and which jobs got a second copy."""

    rule: SpeculationRule
    # The slack rule's share (0: no slack rule), the part of a slack that may be the
    # estimates' error (``slack.path_margin``) and the jobs whose estimate is a guess.
    slack_share: float = 0.0
    slack_margin: float = 0.0
    guessed: frozenset[str] = frozenset()
    # Single-copy runs: latest planned end first, and earliest start first. A copy leaves
    # both when its slot is released (``untrack``), or when a round finds its job has a
    # second copy.
    by_end: Ranked = field(default_factory=Ranked)
    by_start: Ranked = field(default_factory=Ranked)
    speculated: set[str] = field(default_factory=set)

    def track(self, job_id: str, run: Run) -> None:
        """``run`` just started as the job's only copy (nothing to track when switched off)."""
        if self.rule.min_gain < math.inf:
            self.by_end.add((-run.end, run.copy, job_id))
            self.by_start.add((run.start, run.copy, job_id))

    def untrack(self, run: Run) -> None:
        """``run``'s slot was released: it is no candidate any more."""
        self.by_end.discard(run.copy)
        self.by_start.discard(run.copy)

    def retime(self, job_id: str, run: Run) -> None:
        """``run``'s start and end changed: if it was a candidate, it is one at its new place."""
        if run.copy in self.by_end or run.copy in self.by_start:
            self.untrack(run)
            self.track(job_id, run)

    def candidates(self, runs: dict[str, list[Run]], now: float) -> list[tuple[str, Run]]:
        """The single-copy runs expected to end last: by planned end, and the longest overdue.

        Looking at a bounded number per round keeps an idle pool from costing O(running jobs)
        per event; the runs that end last are the ones the tail waits for.
        """
        found: list[tuple[str, Run]] = []
        for ranked, overdue_only in ((self.by_end, False), (self.by_start, True)):
            looked = 0
            copied: list[int] = []
            for _, copy, job_id in ranked.entries:
                if looked == _SPECULATION_LOOKAHEAD:
                    break
                job_runs = runs[job_id]
                run = job_runs[0]
                if run.copy != copy or len(job_runs) != 1:
                    copied.append(copy)  # copied since: never looked at again
                    continue
                looked += 1
                if run.waiting_since is not None:
                    continue  # waiting on a full builder: moved, not copied (``full``)
                if overdue_only and run.end > now:
                    continue  # not overdue; the planned-end order covers it
                found.append((job_id, run))
            for copy in copied:
                ranked.discard(copy)
        return found

    def decide(
        self,
        now: float,
        pool: Pool,
        runs: dict[str, list[Run]],
        *,
        class_of: dict[str, EligibilityClass],
        graph: JobGraph,
        transfer: TransferCost | None,
        remaining: Callable[[], float],
    ) -> list[Decision]:
        """Copy the candidates that gain enough onto free machines; their slots are taken.
        ``remaining``: the longest remaining path (``slack.remaining_path``), asked if needed."""
        rule = self.rule
        decisions: list[Decision] = []
        seen: set[str] = set()
        # The fastest machine with a free slot, per class: found once, again after a copy.
        fastest: dict[EligibilityClass, Machine | None] = {}
        # No copy can run faster than on the fastest free slot of any class: a candidate
        # that would not gain enough even there needs no look at its class.
        top = _fastest_free_speed(pool)
        min_gain, min_ratio = rule.min_gain, rule.min_ratio
        work_of = graph.work
        for job_id, run in self.candidates(runs, now):
            if pool.free_up_total <= 0:
                break
            if job_id in seen:
                continue
            seen.add(job_id)
            if not graph.inputs_done(job_id):  # an input is being built again: none to copy
                continue
            old_end = run.end
            if old_end <= now:  # slot_time, inlined: overdue, it needs a share of its time again
                late = OVERDUE_FRACTION * (now - run.start)
                old_end = now + (late if late > MIN_OVERDUE else MIN_OVERDUE)  # noqa: FURB136
            work = work_of(job_id)
            gain = old_end - (now + work / top)  # as below, for the same rounding
            if gain <= min_gain or gain <= min_ratio * (old_end - now):
                continue
            cls = class_of[job_id]
            if cls not in fastest:
                fastest[cls] = fastest_free(cls)
            target = fastest[cls]
            if target is None or target is run.machine or _disproved(run, target, now):
                continue
            new_end = now + work / target.speed
            if transfer is not None:
                new_end += transfer.estimate(graph.job(job_id), target.spec.name)
            gain = old_end - new_end
            if gain <= rule.min_gain or gain <= rule.min_ratio * (old_end - now):
                continue
            if run.end > now and self._keeps_slot(
                job_id, old_end, now, target, cls, graph=graph, remaining=remaining
            ):
                continue
            self.speculated.add(job_id)
            runs[job_id].append(pool.take_slot(target, job_id, now, new_end))
            fastest.clear()
            decisions.append(Speculate(job_id, target.spec.name, new_end, run.machine.spec.name))
        return decisions

    def _keeps_slot(
        self,
        job_id: str,
        end: float,
        now: float,
        target: Machine,
        cls: EligibilityClass,
        *,
        graph: JobGraph,
        remaining: Callable[[], float],
    ) -> bool:
        """Whether copying ``job_id`` onto ``target`` would take the last free slot that fast
        for nothing: nothing depends on the job, it is known from history and expected to
        end within its share of slack (module docstring)."""
        if self.slack_share <= 0 or job_id in self.guessed or graph.dependents_count(job_id):
            return False
        as_fast = sum(m.free - m.claimed for m in cls.machines if m.up and m.speed >= target.speed)
        return as_fast <= 1 and ends_in_slack(
            cls,
            graph,
            job_id,
            end,
            now,
            share=self.slack_share,
            remaining=remaining(),
            margin=self.slack_margin,
        )


def _disproved(run: Run, target: Machine, now: float) -> bool:
    """Whether ``run`` is overdue and ``target`` no faster than its machine: the estimate
    the copy would be planned from is disproved, and a copy no faster cannot be trusted to
    end first."""
    return run.end <= now and target.speed <= run.machine.speed


def _fastest_free_speed(pool: Pool) -> float:
    """The speed of the fastest machine that is up with a slot free and not claimed."""
    m = first_free(pool.speeds)
    return math.inf if m is None else m.speed
