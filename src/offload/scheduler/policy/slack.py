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

Slack is the difference of two estimated paths, and a path is about as far off as its heaviest
build is: the errors of many small builds partly cancel, one huge build's does not. So the
slack counted is the estimate less ``PATH_NOISE`` (0.3) times the heaviest build on the graph's
critical path (``path_margin``, found once, from the estimates at the start). On a graph whose
few huge builds decide the critical path, a huge build off by 30% turns the small jobs that led
to it from side work into critical work: sent to slow machines, they made it start late
(simulated skewed graphs with 30% estimate noise, docs/BENCHMARKS.md "seeds-ideas"). On graphs
of many small builds the margin is small and the rule acts as before.

The other way round, a job does not take a slot so slow that its path would end after the run
is expected to (``ends_past_run``): when the longest remaining path does on the fastest
machine, or the work left spread over the whole pool, whichever is later. The work left counts
a running job less what its machine has done on it, as the path does (``work_left_now``):
counted whole, half-done long builds near a run's end put that end seconds too late, and a
short build took a slow slot and ended after the fast ones had gone idle. It is asked where a
job would otherwise take the fastest free slot for want of holds (``placement``): a long build
sent there because the round's holds were spent made the whole run wait for it (simulated: a
first run's every estimate is the same guess, so which build is long is learnt late).
"""

from __future__ import annotations

import math

from offload.scheduler.dag import JobGraph
from offload.scheduler.policy.costs import TransferCost
from offload.scheduler.policy.pool import EligibilityClass, Machine, Run
from offload.scheduler.policy.ranked import Ranked

__all__ = [
    "PATH_NOISE",
    "SLACK_SHARE",
    "ends_in_slack",
    "ends_past_run",
    "latest_end",
    "path_margin",
    "remaining_path",
    "slower_in_slack",
    "work_left_now",
]

# The share of its slack a job may spend on a slower machine to leave faster ones free.
SLACK_SHARE = 0.5
# How far off an estimated path is taken to be, as a share of its heaviest build (estimates
# from history were off by about this much in the measurements the rule was tuned on).
PATH_NOISE = 0.3
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
    margin: float = 0.0,
) -> bool:
    """Whether a running ``job_id`` expected to end at ``end`` ends within its share of slack
    (the bound ``slower_in_slack`` places by): a second copy would end sooner for nothing."""
    return end <= _room(cls, graph, job_id, now, share=share, remaining=remaining, margin=margin)


def _room(
    cls: EligibilityClass,
    graph: JobGraph,
    job_id: str,
    now: float,
    *,
    share: float,
    remaining: float,
    margin: float,
) -> float:
    """The latest end within ``job_id``'s share of slack, ``margin`` (``path_margin``) less."""
    slack = remaining - margin - graph.critical_path(job_id)
    return latest_end(now, slack, graph.work(job_id), cls.machines[0].speed, share)


def latest_end(now: float, slack: float, work: float, fastest: float, share: float) -> float:
    """The latest end a job of ``work`` with ``slack`` (both in work at speed 1) may take on a
    slower machine, ``fastest`` the speed of the fastest: ``share`` of both on that one, from
    ``now``. offload-hook places by the same rule (``hook.slack``)."""
    return now + share * (slack + work) / fastest


def ends_past_run(
    graph: JobGraph,
    job_id: str,
    speed: float,
    *,
    fastest: float,
    remaining: float,
    work_left: float,
    capacity: float,
) -> bool:
    """Whether ``job_id`` started now on a machine of ``speed`` would end its path (its work
    there, the rest of its critical path at speed ``fastest``) after the run is expected to
    end: the longest ``remaining`` path at that speed, or ``work_left`` (``work_left_now``)
    over the pool's ``capacity``, whichever is later (module docstring)."""
    path, work = graph.critical_path(job_id), graph.work(job_id)
    ends = work / speed + (path - work) / fastest
    # A tie is no later: equal guesses make ties common, and ``work_left``'s float sum must
    # not decide them by its rounding.
    return ends > max(remaining / fastest, work_left / capacity) * (1 + 1e-9)


def work_left_now(graph: JobGraph, runs: dict[str, list[Run]], now: float) -> float:
    """The work of every job not done yet, a running one's less what its furthest copy has
    done on it (``runs``: each running job's copies), at most its estimate."""
    done = 0.0
    for job_id, copies in runs.items():
        furthest = 0.0
        for r in copies:
            if (d := (now - r.start) * r.machine.speed) > furthest:
                furthest = d
        done += min(furthest, graph.work(job_id))
    return max(graph.work_left - done, 0.0)


def path_margin(graph: JobGraph) -> float:
    """``PATH_NOISE`` times the heaviest build on ``graph``'s critical path: how much of an
    estimated slack may be the estimates' error (module docstring)."""
    if not len(graph):
        return 0.0
    work, critical, after = graph.work, graph.critical_path, graph.dependents
    job: str | None = max(graph.topological_order(), key=critical)
    heaviest = 0.0
    while job is not None:
        heaviest = max(heaviest, work(job))
        job = max(after(job), key=critical, default=None)
    return PATH_NOISE * heaviest


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
    margin: float = 0.0,
) -> tuple[Machine, float] | None:
    """A slower free machine on which ``job_id`` still ends within its share of slack.

    The run is expected to end when the longest ``remaining`` path does, run on the fastest
    machine; a job's latest end leaves room for its own path after it. The slowest machine
    that meets ``now`` + share x (latest end - now) gets the job, so the faster ones stay free
    for critical work; None if the earliest finish is the only one that does. ``margin``: the
    part of the slack that may be the estimates' error (``path_margin``).
    """
    work = graph.work(job_id)
    room = _room(cls, graph, job_id, now, share=share, remaining=remaining, margin=margin)
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
