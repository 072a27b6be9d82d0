"""A shorter plan, searched for before a run whose every estimate comes from history.

The policy is list scheduling by critical path: a heuristic. On the seed sets with exact
estimates its plan was at p90 1.054x the best schedule known on chains and 1.075x on skewed
graphs (``make seeds``, docs/BENCHMARKS.md). What it misses there is rarely one bad decision: two
jobs whose paths are within a few percent start in the wrong order, or a side job takes a fast
slot that the spine wanted a moment later. So ``tune`` plans the graph again with the policy's
own simulator, a few times, each time with one knob turned:

- the share of its slack a job may spend on a slower machine (``SLACK_SHARES``, beside the
  policy's ``SLACK_SHARE``);
- each job's critical path weighed by a factor drawn near 1 (log-normal, sigma ``SPREAD``), in
  the order of ready jobs only (``policy.queues``): jobs whose paths are close change places.

The shortest plan is kept if it is at least ``MARGIN`` shorter than the plain one; otherwise the
plain policy runs. A run with any guessed estimate is not tuned: it would be tuned to the
guesses. With estimates off by 30% a tuned plan, carried out with the true durations, was
neither better nor worse than the plain one at the median (docs/BENCHMARKS.md, "Session 34");
the margin keeps the plain plan where the gain is within what such noise moves. Transfers are
left out of the plans, as from the ETA's (``run.remaining``).

Tries are fixed by the graph's size: ``TRIES``, fewer when that would plan more than
``JOB_PLANS`` jobs in all; a graph too big for the slack shares' four tries (more than a fifth
of ``JOB_PLANS`` jobs) is not tuned. Here that costs 55 ms for 100 jobs and 0.33 s for 1,000.
The draws come from a generator seeded by the jobs' ids, so one graph gets one plan, run after
run. A wall-clock ``budget`` (by default ``BUDGET_SHARE`` of the plain plan, at most
``MAX_SECONDS``) only guards a machine far slower than the planning figures of
docs/BENCHMARKS.md: past it, no try starts.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from offload.errors import SchedulerError
from offload.scheduler.dag import Job
from offload.scheduler.policy import MachineSlotSpec
from offload.scheduler.policy.slack import SLACK_SHARE
from offload.scheduler.simulate import SimResult, simulate

__all__ = ["JOB_PLANS", "MARGIN", "PLAIN", "TRIES", "Tuning", "simulate_tuned", "tune"]

TRIES = 16
SLACK_SHARES = (0.0, 0.3, 0.8, 1.0)
SPREAD = 0.1
MARGIN = 0.01
# About 0.3 s of planning on this project's 2-core machine (30 us per job planned).
JOB_PLANS = 10_000
BUDGET_SHARE = 0.02
MAX_SECONDS = 1.0


@dataclass(frozen=True)
class Tuning:
    """The policy's knobs for one run, and what the search found: ``plain`` and ``planned``
    are the plain and the kept plan's makespans (seconds; 0 when nothing was planned)."""

    slack_share: float = SLACK_SHARE
    weights: Mapping[str, float] = field(default_factory=dict)
    plain: float = 0.0
    planned: float = 0.0
    tries: int = 0

    @property
    def tuned(self) -> bool:
        return self.planned < self.plain


PLAIN = Tuning()


def tune(
    jobs: Sequence[Job],
    machines: Sequence[MachineSlotSpec],
    *,
    budget: float | None = None,
    margin: float = MARGIN,
    speculate: bool = True,
    clock: Callable[[], float] = time.perf_counter,
) -> Tuning:
    """The knobs whose plan of ``jobs`` (their estimates taken as exact) on ``machines`` is
    shortest, if shorter than the plain plan by ``margin`` (a share of it); ``PLAIN`` when no
    machine can build them all, or the graph is too big to tune (module docstring).
    ``budget``: wall seconds past which no try starts (module docstring for the default);
    ``speculate``: as ``simulate``'s."""
    began = clock()
    # The plain plan counts among the jobs planned; fewer tries than the slack shares are not
    # worth the plain plan they need.
    tries = min(TRIES, JOB_PLANS // max(len(jobs), 1) - 1)
    if tries < len(SLACK_SHARES):
        return PLAIN
    try:
        plain = _plan(jobs, machines, speculate, SLACK_SHARE, None)
    except SchedulerError:
        return PLAIN
    if budget is None:
        budget = min(MAX_SECONDS, BUDGET_SHARE * plain)
    kept: tuple[float, Mapping[str, float]] = (SLACK_SHARE, {})
    planned, tried = plain, 0
    for share, weights in _candidates(jobs, tries):
        if clock() - began >= budget:
            break
        tried += 1
        length = _plan(jobs, machines, speculate, share, weights)
        if length < planned:
            planned, kept = length, (share, weights or {})
    if planned > plain * (1.0 - margin):
        return Tuning(plain=plain, planned=plain, tries=tried)
    return Tuning(kept[0], kept[1], plain, planned, tried)


def simulate_tuned(
    jobs: Sequence[Job],
    machines: Sequence[MachineSlotSpec],
    *,
    search: bool = True,
    budget: float | None = None,
    actual: Mapping[str, float] | None = None,
    noise: float = 0.0,
    seed: int = 0,
    speculate: bool = True,
    strict: bool = True,
) -> SimResult:
    """What ``offload build`` runs when history gives every estimate: the plan ``tune`` keeps
    (the plain one without ``search``), simulated; the other options are ``simulate``'s."""
    tuning = tune(jobs, machines, budget=budget, speculate=speculate) if search else PLAIN
    return simulate(
        jobs, machines, actual=actual, noise=noise, seed=seed, speculate=speculate,
        strict=strict, slack_share=tuning.slack_share, weights=tuning.weights,
    )  # fmt: skip


def _plan(
    jobs: Sequence[Job],
    machines: Sequence[MachineSlotSpec],
    speculate: bool,
    share: float,
    weights: Mapping[str, float] | None,
) -> float:
    result = simulate(
        jobs, machines, speculate=speculate, strict=False, bound=False, slack_share=share,
        weights=weights,
    )  # fmt: skip
    if result.failed:  # a graph no machine can finish has no plan to shorten
        raise SchedulerError("no plan")
    return result.makespan


def _candidates(
    jobs: Sequence[Job], tries: int
) -> Iterator[tuple[float, Mapping[str, float] | None]]:
    """The slack shares first, then weights drawn from the jobs' own generator."""
    for share in SLACK_SHARES[:tries]:
        yield share, None
    ids = sorted(job.id for job in jobs)
    digest = hashlib.sha256("\n".join(ids).encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))  # noqa: S311 (a plan, not a secret)
    for _ in range(max(tries - len(SLACK_SHARES), 0)):
        yield SLACK_SHARE, {job_id: rng.lognormvariate(0.0, SPREAD) for job_id in ids}
