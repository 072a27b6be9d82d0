"""Overrun: a guessed build running past its estimate is evidence that it is long.

A first run guesses every build alike (``guesses``), so a huge build may start on a slow
machine while small ones take the fast slots. Idle-tail speculation (``speculation``) copies it
only once nothing is ready, which on a graph with a few huge builds early and many small ones
behind them is far too late. So before the ready jobs take the free slots of a round, each
guessed build that has run ``OVERRUN`` (4) times its estimate is taken as evidence: having
done ``d`` of work, it is assumed to need as much again (the doubling assumption, the one a
scheduler without any other information can defend), so its own copy would end after ``d / v``
more seconds on its speed-``v`` machine, and a fresh copy on a free speed-``t`` machine after
``2d / t``. The copy is made when

- it gains as much as the speculation rule asks of any copy (``min_gain`` seconds and
  ``min_ratio`` of the running copy's rest): a machine more than twice as fast, and a build
  long enough for the gain to count;
- and the build is critical: its path, the rest on its machine plus the work after it, is the
  longest left (``slack.remaining_path``, counting the most critical ready or coming job that
  the slot could take instead). A long side build that ends no path later than the rest stays
  where it is, so a chain's critical builds keep the fast slots.

Until a candidate's gain is large enough, the round asks to be woken when it will be (the gain
grows with the time it runs): on a graph blocked behind its huge builds nothing else would
call the policy. Builds known from history are left to the idle tail: their estimates are not
guesses. Simulated over 20-30 seeds of each shape at scales 1, 2 and 4 (``bench/seeds.py``
graphs, first runs against the same graph with exact history), this took the skewed shape's
p90 from 2.2-2.6x to 1.4-1.7x and left the other shapes about as they were
(docs/BENCHMARKS.md, "First runs").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from offload.scheduler.dag import JobGraph
from offload.scheduler.policy.costs import TransferCost
from offload.scheduler.policy.decisions import Decision, Speculate
from offload.scheduler.policy.placement import fastest_free
from offload.scheduler.policy.pool import Machine, Pool, Run
from offload.scheduler.policy.queues import Queues
from offload.scheduler.policy.ranked import Ranked
from offload.scheduler.policy.slack import remaining_path
from offload.scheduler.policy.speculation import Speculation

__all__ = ["OVERRUN", "Overrun"]

# How far past its estimate a guessed build must run to count as evidence. The gain test alone
# is in seconds, so it held back small builds only at the scale it was tried at: with builds
# four times longer, ones just past a learned guess were copied onto the fast slots (simulated
# first runs, scale 4: wide median 1.05 -> 1.21). Four times the guess leaves every shape but the
# skewed one as it was at scales 1, 2 and 4 (docs/BENCHMARKS.md).
OVERRUN = 4.0

_MARGIN = 1 + 1e-9


@dataclass(frozen=True, slots=True)
class Overrun:
    """The rule over one policy's graph, queues, speculation state and running paths."""

    graph: JobGraph
    queues: Queues
    speculation: Speculation
    transfer: TransferCost | None
    by_path: Ranked  # each running job's first copy, most critical first (``remaining_path``)

    def copies(
        self, decisions: list[Decision], now: float, pool: Pool, runs: dict[str, list[Run]]
    ) -> float:
        """Copy the critical overrunning guessed builds onto free faster machines (appended to
        ``decisions``, their slots taken); the time to look again (``math.inf``: no need)."""
        graph, queues, transfer = self.graph, self.queues, self.transfer
        rule = self.speculation.rule
        guessed, speculated = self.speculation.guessed, self.speculation.speculated
        wake = math.inf
        if rule.min_gain == math.inf:  # speculation switched off: no copies of any kind
            return wake
        for job_id, job_runs in runs.items():
            if pool.free_up_total <= 0:
                break
            if len(job_runs) != 1 or job_id not in guessed or job_id in speculated:
                continue
            if not graph.inputs_done(job_id):  # an input is being built again: none to copy
                continue
            run = job_runs[0]
            target = fastest_free(queues.class_of[job_id])
            v = run.machine.speed
            if run.waiting_since is not None or target is None or target.speed <= 2 * v:
                continue
            # The rest on its machine is d / v, a copy's 2d / t: the gain d (1/v - 2/t) must
            # reach min_gain, and min_ratio of the rest: d (1/v - 2/t) >= min_ratio d / v.
            factor = 1 / v - 2 / target.speed
            if factor <= rule.min_ratio / v:
                continue
            estimate = graph.work(job_id)
            # When it has run OVERRUN times its estimate and long enough for the gain to count
            # (a hair more, so that the look then finds it does); compared as a time, the same
            # sum each call, so a driver that calls again at exactly that time gets past it.
            due = run.start + max(OVERRUN * estimate, rule.min_gain / factor) * _MARGIN / v
            if now < due:
                wake = min(wake, due)
                continue
            done = (now - run.start) * v
            new_end = now + 2 * done / target.speed
            if transfer is not None:
                new_end += transfer.estimate(graph.job(job_id), target.spec.name)
            if now + done / v - new_end <= rule.min_gain:
                continue
            path = done / v * target.speed + graph.critical_path(job_id) - estimate
            rival = _most_critical_rival(pool, queues, target)
            if path < remaining_path(self.by_path, runs, now, rival):
                continue
            speculated.add(job_id)
            job_runs.append(pool.take_slot(target, job_id, now, new_end))
            decisions.append(Speculate(job_id, target.spec.name, new_end, run.machine.spec.name))
        return wake


def _most_critical_rival(pool: Pool, queues: Queues, target: Machine) -> float:
    """The longest path of a ready or coming job that could take ``target``'s slot instead."""
    best = 0.0
    for cls in pool.class_list:
        if target not in cls.machines:
            continue
        first = queues.head(cls)
        if first is not None and -first[0] > best:
            best = -first[0]
    for entry, job_id, _ in queues.coming_jobs(1):
        if target in queues.class_of[job_id].machines and -entry[0] > best:
            best = -entry[0]
    return best
