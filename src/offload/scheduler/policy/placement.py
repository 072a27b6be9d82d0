"""Where a job goes: the machine where it is expected to finish first, holds and claims.

Placement. Each job goes where it is expected to *finish* first: for each eligible machine that is
up, start = now if it has a free slot, else the expected end of its earliest-ending slot; finish =
start + transfer estimate (pluggable ``TransferCost``, zero by default) + work / speed. When the
best finish is on a busy machine, the job is *held*: it reserves that slot for this round (later
jobs see the slot as busy until the held job would finish there) and is offered again at the next
call. At most 4 jobs are held per round, however few slots are free (each reservation makes the
next job see the queue it would join, so holding more jobs than there are free slots is still
sound); past that a job takes the fastest free slot, unless its path would then end after the run
is expected to (``slack.ends_past_run``: it waits for the next call). Every hold is re-examined at
each call, so the cap is what keeps a call cheap on huge graphs (the later, less critical jobs are
the right ones for slow slots anyway). A running job that has overrun its estimate is assumed to
need another quarter of its elapsed time. Machines of one speed in a class form a tier whose
earliest start is kept (no transfer costs) until a slot of one of its machines is released, a hold
or claim touches it, or a start fills the machine it named; from one call to the next only while
that start does not depend on the time (a free slot, or busy slots none overdue and the first still
ahead). With a transfer model every eligible machine is scored, but for ``MissingInputs`` (what
``offload build`` plans with) a machine that holds none of a job's inputs pays for all of them, so
of those the tier's earliest start is the best (or, for a coming job, the tier's first machine free
by its ready time), and only those and the machines holding inputs are scored (the same machine as
scoring each: ties go to the earlier start, then to the machine first in the class's order). Either
way the scan stops at the first machine too slow to beat the best finish found.

Coming work. Each round, the most critical coming jobs (up to the hold budget, and only those with
less slack than their own work) are placed like held jobs before any ready job less critical than
they are: each reserves the slot where it would finish first from its expected ready time (the
slot that frees by then, or else a free one, which it *claims*). A ready job may still use a
claimed slot if it is done before the claim starts. A job started in the round makes its
dependents coming at once. Without this, a side job takes the fast slot the critical path needs a
moment later (a fork on the critical path wants both fast slots at once).
"""

from __future__ import annotations

import heapq
import math

from offload.scheduler.dag import Job, JobGraph
from offload.scheduler.policy.costs import (
    MIN_OVERDUE,
    OVERDUE_FRACTION,
    MissingInputs,
    TransferCost,
    slot_time,
)
from offload.scheduler.policy.pool import EligibilityClass, Machine, Tier, first_free

__all__ = [
    "MAX_HOLDS_PER_ROUND",
    "clear_reservations",
    "fastest_free",
    "place",
    "reserve",
    "slot_start",
]

# Jobs held for a busy slot per round; later ones take the fastest free slot. Each hold is
# re-examined every round, so this bounds the work per event.
MAX_HOLDS_PER_ROUND = 4

# Where a job would go: the machine (None if no member is up), its start and its finish.
Placement = tuple[Machine | None, float, float]


def place(
    cls: EligibilityClass,
    graph: JobGraph,
    transfer: TransferCost | None,
    job_id: str,
    *,
    now: float,
    ready_at: float,
) -> Placement:
    """Where ``job_id``, ready at ``ready_at``, finishes first: machine, start, finish."""
    work = graph.work(job_id)
    if transfer is None:
        return place_by_tier(cls, work, now, ready_at)
    if isinstance(transfer, MissingInputs):
        return place_by_holders(cls, graph.job(job_id), work, now, transfer, ready_at=ready_at)
    return place_by_machine(cls, graph.job(job_id), work, now, transfer, ready_at=ready_at)


def reserve(
    m: Machine,
    job_id: str,
    start: float,
    finish: float,
    *,
    now: float,
    reserved: list[Machine],
) -> None:
    """For the rest of this round a slot of ``m`` is ``job_id``'s until ``finish``: the
    busy slot that frees first if it frees by ``start``, else a free one (claimed from
    ``start``) if any is left, else the busy slot that frees first."""
    if m.reserved is None:
        m.reserved = list(m.ends)
        reserved.append(m)
    frees_in_time = bool(m.reserved) and m.reserved[0][0] <= start
    claim = m.free > m.claimed and not (frees_in_time and start > now)
    if claim:
        m.claimed += 1
        m.claimed_from = min(m.claimed_from, start)
        heapq.heappush(m.reserved, (finish, max(start, now), job_id, 0))
    else:
        heapq.heapreplace(m.reserved, (finish, start, job_id, 0))
    for tier in m.tiers:
        tier.fresh = False
        tier.claimed += claim


def clear_reservations(reserved: list[Machine]) -> None:
    """End the round: forget the holds and claims made on ``reserved``."""
    for m in reserved:
        m.reserved = None
        m.claimed = 0
        m.claimed_from = math.inf
        for tier in m.tiers:
            tier.fresh = False
            tier.claimed = 0


def slot_start(m: Machine, now: float, duration: float) -> float:
    """When a job of ``duration`` could start on ``m`` this round: now on a free slot, or on
    a claimed one it would leave before the claim; else when the first slot frees."""
    if m.free > m.claimed or (m.free > 0 and now + duration <= m.claimed_from):
        return now
    busy = m.reserved or m.ends
    if len(busy) <= m.owed:
        # None of its slots is ours or free: all withheld for other clients or cut for the
        # builder's load (``pool``).
        return math.inf
    return slot_time(_past_owed(m, busy), now)


def _past_owed(
    m: Machine, busy: list[tuple[float, float, str, int]]
) -> tuple[float, float, str, int]:
    """The busy slot of ``m`` whose end frees one: the first to end, unless the load cut
    slots while they ran (``pool``): the ends of the ``owed`` first free none."""
    return busy[0] if not m.owed else heapq.nsmallest(m.owed + 1, busy)[-1]


def fastest_free(group: EligibilityClass) -> Machine | None:
    """The fastest machine of ``group`` with a slot free and not claimed this round."""
    return first_free(group.tiers)


def place_by_tier(group: EligibilityClass, work: float, now: float, ready_at: float) -> Placement:
    """Earliest finish without transfer costs: machines of one speed differ only in start.

    Each tier keeps its earliest start (``scan_tier``) until one of its machines changes
    (``Pool``: a slot taken that fills the machine it named, released or rescheduled, a hold or
    claim): a round rescans one tier per decision at most, not the whole class, and a tier
    all busy until later is not rescanned at every event.
    """
    best: Machine | None = None
    best_start = best_finish = math.inf
    earliest = max(now, ready_at)
    for tier in group.tiers:
        duration = work / tier.speed
        if earliest + duration > best_finish:
            break
        if not (  # _kept, inlined: without transfers this is the hottest loop of a round
            tier.fresh
            and not tier.claims
            and (tier.at == now or tier.free or (not tier.overdue and tier.start > now))
        ):
            scan_tier(tier, now, duration)
        if tier.machine is None:
            continue
        start = max(now if tier.free else tier.start, ready_at)
        finish = start + duration
        if finish < best_finish or (finish == best_finish and start < best_start):
            best, best_start, best_finish = tier.machine, start, finish
    return best, best_start, best_finish


def _kept(tier: Tier, now: float) -> bool:
    """Whether ``tier``'s kept earliest start holds at ``now`` (``scan_tier``)."""
    return (
        tier.fresh
        and not tier.claims
        and (tier.at == now or tier.free or (not tier.overdue and tier.start > now))
    )


def scan_tier(tier: Tier, now: float, duration: float) -> None:
    """Find ``tier``'s earliest start at ``now``: its first machine with a free slot, else its
    earliest-ending busy slot. Kept past ``now`` only if nothing in it depends on ``now``: a
    free slot (start now) or busy slots none of which is overdue; claims depend on the job's
    ``duration`` and are never kept."""
    start = math.inf
    found: Machine | None = None
    claims = overdue = False
    for m in tier.machines:
        if not m.up:
            continue
        if m.claimed:
            claims = True
            t = slot_start(m, now, duration)
        elif m.free > 0:
            start, found, claims = now, m, False
            break
        elif (busy := m.reserved or m.ends) and len(busy) > m.owed:
            # slot_time, inlined: this scan is the hottest loop of a round.
            entry = busy[0] if not m.owed else _past_owed(m, busy)
            t = entry[0]
            if t <= now:
                overdue = True
                late = OVERDUE_FRACTION * (now - entry[1])
                # Not max(): a call costs more than the test in this loop.
                t = now + (late if late > MIN_OVERDUE else MIN_OVERDUE)  # noqa: FURB136
        else:
            continue  # every slot withheld for other clients or cut for load (``pool``)
        if t < start:
            start, found = t, m
    tier.start, tier.machine, tier.claims, tier.overdue = start, found, claims, overdue
    tier.fresh, tier.at, tier.free = True, now, found is not None and start == now


def place_by_machine(
    group: EligibilityClass,
    job: Job,
    work: float,
    now: float,
    transfer: TransferCost,
    *,
    ready_at: float,
) -> Placement:
    """Earliest finish with transfer costs; ``work`` is the job's current estimate."""
    best: Machine | None = None
    best_start = best_finish = math.inf
    earliest = max(now, ready_at)
    for m in group.machines:
        duration = work / m.speed
        if earliest + duration > best_finish:
            break
        if not m.up:
            continue
        if m.free > m.claimed:
            start = now
        elif m.claimed or m.owed or not (busy := m.reserved or m.ends):
            start = slot_start(m, now, duration)
        else:  # slot_start, inlined for a machine whose every slot is busy (the usual one)
            start = busy[0][0]
            if start <= now:
                late = OVERDUE_FRACTION * (now - busy[0][1])
                start = now + (late if late > MIN_OVERDUE else MIN_OVERDUE)  # noqa: FURB136
        if start < ready_at:  # noqa: PLR1730 -- max() is a call, in a loop per machine
            start = ready_at
        # A transfer costs no less than nothing: a machine that cannot beat the best finish
        # without one is not asked for its estimate (the costliest call of this loop).
        if (lower := start + duration) > best_finish or (
            lower == best_finish and start >= best_start
        ):
            continue
        finish = lower + transfer.estimate(job, m.spec.name)
        if finish < best_finish or (finish == best_finish and start < best_start):
            best, best_start, best_finish = m, start, finish
    return best, best_start, best_finish


def place_by_holders(
    group: EligibilityClass,
    job: Job,
    work: float,
    now: float,
    moves: MissingInputs,
    *,
    ready_at: float,
) -> Placement:
    """Earliest finish with ``MissingInputs``: ``place_by_machine``'s answer, from each tier's
    earliest start (kept as ``place_by_tier`` keeps it; if that is before ``ready_at``, the
    tier's first machine free by then) and the machines holding some of the job's inputs
    (module docstring)."""
    held = moves.held(job)
    seconds, inputs = moves.seconds, len(job.deps)
    by_name = group.by_name
    # Scored one by one: the holders, and the machines of tiers with claims this round (their
    # starts depend on the job's duration, ``slot_start``).
    each = [by_name[name] for name in held if name in by_name]
    best: Machine | None = None
    best_start = best_finish = math.inf
    earliest = max(now, ready_at)
    for tier in group.tiers:
        duration = work / tier.speed
        if earliest + duration > best_finish:
            break
        if tier.claimed:
            each.extend(tier.machines)
            continue
        if not _kept(tier, now):
            scan_tier(tier, now, duration)
        if (m := tier.machine) is None:
            continue
        start = now if tier.free else tier.start
        if start < ready_at:  # every machine free by then starts then: the first of them
            m, start = _first_by(tier, now, ready_at) or m, ready_at
        # As place_by_machine adds them, for the same rounding.
        finish = start + duration + seconds * (inputs - held.get(m.spec.name, 0))
        if best is None or _before((finish, start, m), (best_finish, best_start, best)):
            best, best_start, best_finish = m, start, finish
    for m in each:
        if not m.up:
            continue
        duration = work / m.speed
        cost = seconds * (inputs - held.get(m.spec.name, 0))
        if earliest + duration + cost > best_finish:
            continue  # it cannot start before ``earliest``
        start = now if m.free > m.claimed else slot_start(m, now, duration)
        if start < ready_at:  # noqa: PLR1730 -- max() is a call, in a loop per machine
            start = ready_at
        if start == math.inf:
            continue  # no slot of its own at all (``slot_start``)
        finish = start + duration + cost
        if best is None or _before((finish, start, m), (best_finish, best_start, best)):
            best, best_start, best_finish = m, start, finish
    return best, best_start, best_finish


def _first_by(tier: Tier, now: float, ready_at: float) -> Machine | None:
    """The first machine of ``tier`` (none of it claimed) that can start by ``ready_at``."""
    for m in tier.machines:
        if m.up and (m.free > 0 or slot_start(m, now, 0.0) <= ready_at):
            return m
    return None


def _before(one: tuple[float, float, Machine], other: tuple[float, float, Machine]) -> bool:
    """Whether placement ``one`` (finish, start, machine) beats ``other`` as
    ``place_by_machine``'s scan in the class's order would: an earlier finish, then an
    earlier start, then first in that order."""
    if one[0] != other[0]:
        return one[0] < other[0]
    if one[1] != other[1]:
        return one[1] < other[1]
    return one[2].order < other[2].order
