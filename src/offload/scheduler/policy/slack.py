"""Slack: a job off the critical path leaves the fast machines to the jobs on it.

A job off the critical path need not take the machine where it would finish first. The run is
expected to end when the longest remaining path does (the most critical ready job's, or a running
job's less what its machine has done), on the fastest machine; a job's latest end is that, less
its own path after it. A job takes the slowest free machine where it still ends within half of
that slack (``slack_share``), so fast slots stay free for the critical work that becomes ready
soon; half, because estimates are wrong and a late side job becomes critical. Jobs whose estimate
is a guess (``guessed``: no history) keep the earliest finish: sending an unknown job to a slow
machine because it looks short is how a huge one ends up there. A job that ends within that
bound (``ends_in_slack``) gets no second copy on an idle fast slot either (``speculation``).
"""

from __future__ import annotations

import math

from offload.scheduler.dag import JobGraph
from offload.scheduler.policy.costs import TransferCost
from offload.scheduler.policy.pool import EligibilityClass, Machine, Run
from offload.scheduler.policy.ranked import Ranked

__all__ = ["SLACK_SHARE", "ends_in_slack", "remaining_path", "slower_in_slack"]

# The share of its slack a job may spend on a slower machine to leave faster ones free.
SLACK_SHARE = 0.5
# Running jobs examined per round for the longest remaining path.
_PATH_LOOKAHEAD = 8


def remaining_path(by_path: Ranked, runs: dict[str, list[Run]], now: float, ready: float) -> float:
    """The longest critical path left, in work: ``ready``'s (the most critical ready job)
    or a running job's (``by_path``: each job's first copy, most critical first) less the work
    its machine has done on it since it started."""
    longest = ready
    # Most critical first: once a job's whole path is no longer, no later one's rest is.
    # A bounded look keeps a round cheap; too short an answer only leaves less slack.
    for neg_path, _, job_id in by_path.entries[:_PATH_LOOKAHEAD]:
        if -neg_path <= longest:
            break
        done = -math.inf
        for r in runs[job_id]:  # mostly one: a loop, not a generator (nor max: a call)
            if (d := (now - r.start) * r.machine.speed) > done:
                done = d
        if (rest := -neg_path - done) > longest:
            longest = rest
    return longest


def ends_in_slack(
    cls: EligibilityClass,
    graph: JobGraph,
    job_id: str,
    end: float,
    now: float,
    *,
    share: float,
    remaining: float,
) -> bool:
    """Whether a running ``job_id`` expected to end at ``end`` ends within its share of slack
    (the bound ``slower_in_slack`` places by): a second copy would end sooner for nothing."""
    return end <= _room(cls, graph, job_id, now, share=share, remaining=remaining)


def _room(
    cls: EligibilityClass,
    graph: JobGraph,
    job_id: str,
    now: float,
    *,
    share: float,
    remaining: float,
) -> float:
    """The latest end within ``job_id``'s share of slack."""
    fastest = cls.machines[0].speed
    return now + share * (remaining - graph.critical_path(job_id) + graph.work(job_id)) / fastest


def slower_in_slack(
    cls: EligibilityClass,
    graph: JobGraph,
    transfer: TransferCost | None,
    job_id: str,
    now: float,
    *,
    share: float,
    remaining: float,
    best: Machine,
    best_finish: float,
) -> tuple[Machine, float] | None:
    """A slower free machine on which ``job_id`` still ends within its share of slack.

    The run is expected to end when the longest ``remaining`` path does, run on the fastest
    machine; a job's latest end leaves room for its own path after it. The slowest machine
    that meets ``now`` + share x (latest end - now) gets the job, so the faster ones stay free
    for critical work; None if the earliest finish is the only one that does.
    """
    work = graph.work(job_id)
    room = _room(cls, graph, job_id, now, share=share, remaining=remaining)
    if best_finish >= room:
        return None
    best_speed = best.speed
    for tier in reversed(cls.tiers):
        if tier.speed >= best_speed:
            return None
        finish = now + work / tier.speed
        if finish > room or tier.free_up <= 0:
            continue
        for m in tier.machines:
            if not m.up or m.free <= m.claimed:
                continue
            end = finish + (transfer.estimate(graph.job(job_id), m.spec.name) if transfer else 0)
            if end <= room:
                return m, end
    return None
