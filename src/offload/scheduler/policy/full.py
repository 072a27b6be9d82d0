"""Builders full of other clients' builds: a job waiting there moves where it finishes sooner.

Other offload clients (other hosts) may hold every builder-side slot of a machine this client
placed a job on; that copy then waits for a slot there (``Policy.on_machine_full``), for as long
as the others' builds take, which this client cannot know. The rule is rent-or-buy: a waiting
job moves to a free slot elsewhere once it has waited as long as moving costs, that is once

    waited >= (work / speed there + transfer there) - (work / speed here + transfer here),

at once when the other machine is no slower. Whatever the others' builds take, the job then
finishes at most about twice as late as it would have with hindsight (the classic 2-competitive
break-even rule), and a short wait on a much faster machine is not thrown away for a slow one.
Only slots free now count elsewhere: moving to another wait gains nothing certain.

The same rule reads as an estimate: a builder full for ``w`` seconds is taken to stay full
``w`` seconds more (``full_wait``), and the job goes where it is then expected to finish
first. ``offload-hook``'s coordinator places derivations that way (``offload.hook.decide``);
``move_target`` solves it for the moment the move pays (``worth_moving_from``), to be woken
then.
"""

from __future__ import annotations

import math

from offload.scheduler.dag import JobGraph
from offload.scheduler.policy.costs import TransferCost
from offload.scheduler.policy.pool import EligibilityClass, Machine, Run

__all__ = ["full_wait", "move_target", "worth_moving_from"]


def full_wait(waiting_since: float, now: float) -> float:
    """How much longer a builder full since ``waiting_since`` is taken to stay full: as long
    as it has been (rent-or-buy: waiting and moving then cost the same)."""
    return max(0.0, now - waiting_since)


def worth_moving_from(waiting_since: float, cost_here: float, cost_there: float) -> float:
    """When a job waiting since ``waiting_since`` for a full builder where it costs
    ``cost_here`` is worth moving where it costs ``cost_there``: once ``full_wait`` makes
    staying cost as much as moving (at once when ``cost_there <= cost_here``)."""
    return waiting_since + (cost_there - cost_here)


def move_target(
    cls: EligibilityClass,
    graph: JobGraph,
    transfer: TransferCost | None,
    job_id: str,
    run: Run,
    *,
    now: float,
) -> tuple[Machine | None, float]:
    """Where the waiting ``run`` of ``job_id`` goes now: (machine, expected finish), or
    (None, when to look again: ``math.inf`` when no other machine has a free slot)."""
    assert run.waiting_since is not None
    work, job = graph.work(job_id), graph.job(job_id)

    def cost(m: Machine) -> float:
        extra = transfer.estimate(job, m.spec.name) if transfer is not None else 0.0
        return work / m.speed + extra

    best: Machine | None = None
    best_cost = math.inf
    for m in cls.machines:
        if m is run.machine or not m.up or m.free <= m.claimed:
            continue
        c = cost(m)
        if c < best_cost:
            best, best_cost = m, c
    if best is None:
        return None, math.inf
    worth_from = worth_moving_from(run.waiting_since, cost(run.machine), best_cost)
    if now >= worth_from:
        return best, now + best_cost
    return None, worth_from
