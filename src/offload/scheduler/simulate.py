"""Discrete-event simulation of the policy on a fake clock.

The simulator is a driver of ``Policy`` like the real executor, with machines that do exactly
what they are told: a job started at ``t`` on a machine of speed ``s`` ends at
``t + transfer + actual_work / s``, where ``actual_work`` is the job's estimate times a per-job
noise factor (log-normal with sigma ``noise`` from a seeded RNG, 1 when ``noise`` is 0). Noise
makes estimates wrong, which is what speculation is for. Alternatively ``actual`` gives each
job's true work outright (the policy plans with the jobs' estimates): a first run, whose
estimates are guesses (``guessed``), learns from its own builds as the executor does when
``guesses`` is given (``offload.scheduler.policy.guesses``). Builds listed in ``failing`` fail when
they end; ``machine_failures`` take machines down at given times (their running copies are
lost and the policy requeues them).

Events at the same instant are all applied before the policy is asked again, so the run is
deterministic for a given input and seed. An instant whose only events are the planned ends of
copies cancelled earlier does not ask the policy: the executor stops such a copy at once and
never hears of it again. ``lower_bound`` is the bound every benchmark compares
against: max(critical path / fastest speed, total work / total capacity); no schedule can beat it
when estimates are exact. Generated inputs and the planning cost are in ``generated``.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import math
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypedDict

from offload.errors import SchedulerError
from offload.scheduler.bound import lower_bound
from offload.scheduler.dag import Job, JobGraph, JobState
from offload.scheduler.policy import (
    Decision,
    MachineSlotSpec,
    Policy,
    Speculate,
    SpeculationRule,
    TransferCost,
    Wait,
)
from offload.scheduler.policy.guesses import Guesses
from offload.scheduler.policy.slack import SLACK_SHARE

__all__ = [
    "MachineSummary",
    "RunRecord",
    "SimResult",
    "lower_bound",
    "machine_summaries",
    "noise_factors",
    "simulate",
]

Outcome = Literal["built", "failed", "cancelled", "lost"]


@dataclass(slots=True, init=False, unsafe_hash=True)
class RunRecord:
    """One copy of a job on one machine. ``built`` and ``failed`` end the job. Made once per
    copy, by an ``__init__`` mypyc compiles (``policy.decisions`` says why); never changed."""

    job: str
    machine: str
    start: float
    end: float
    outcome: Outcome
    speculative: bool

    def __init__(
        self,
        job: str,
        machine: str,
        start: float,
        end: float,
        outcome: Outcome,
        *,
        speculative: bool = False,
    ) -> None:
        self.job = job
        self.machine = machine
        self.start = start
        self.end = end
        self.outcome = outcome
        self.speculative = speculative


class MachineSummaryDict(TypedDict):
    name: str
    speed: float
    slots: int
    busy: float
    utilisation: float
    built: int
    cancelled: int


@dataclass(frozen=True, slots=True)
class MachineSummary:
    name: str
    speed: float
    slots: int
    busy: float  # slot-seconds spent on any copy, cancelled ones included
    built: int
    cancelled: int

    def as_dict(self, makespan: float) -> MachineSummaryDict:
        capacity = makespan * self.slots
        return {
            "name": self.name,
            "speed": self.speed,
            "slots": self.slots,
            "busy": round(self.busy, 6),
            "utilisation": round(self.busy / capacity, 6) if capacity > 0 else 0.0,
            "built": self.built,
            "cancelled": self.cancelled,
        }


class SimResultDict(TypedDict):
    makespan: float
    lower_bound: float
    ratio: float | None
    critical_path: float
    total_work: float
    jobs: int
    built: int
    failed: list[str]
    skipped: list[str]
    speculations: int
    cancelled: int
    machines: list[MachineSummaryDict]


@dataclass(frozen=True, slots=True)
class SimResult:
    makespan: float
    lower_bound: float
    critical_path: float
    total_work: float
    machines: tuple[MachineSummary, ...]
    schedule: tuple[RunRecord, ...]
    failed: tuple[str, ...]
    skipped: tuple[str, ...]
    speculations: int
    cancelled: int
    # (job, why) for each of ``failed`` no machine could take (``classify``): pairs, so that
    # a result stays a value (hashable).
    unbuildable: tuple[tuple[str, str], ...] = ()

    @property
    def ratio(self) -> float | None:
        return self.makespan / self.lower_bound if self.lower_bound > 0 else None

    def placement(self) -> dict[str, RunRecord]:
        """The winning copy of each job that built or failed."""
        return {r.job: r for r in self.schedule if r.outcome in {"built", "failed"}}

    def as_dict(self) -> SimResultDict:
        built = sum(1 for r in self.schedule if r.outcome == "built")
        return {
            "makespan": round(self.makespan, 6),
            "lower_bound": round(self.lower_bound, 6),
            "ratio": round(r, 6) if (r := self.ratio) is not None else None,
            "critical_path": round(self.critical_path, 6),
            "total_work": round(self.total_work, 6),
            "jobs": built + len(self.failed) + len(self.skipped),
            "built": built,
            "failed": list(self.failed),
            "skipped": list(self.skipped),
            "speculations": self.speculations,
            "cancelled": self.cancelled,
            "machines": [m.as_dict(self.makespan) for m in self.machines],
        }


# Event kinds, ordered so that at one instant finishes are seen before machine failures.
_FINISH = 0
_MACHINE_FAILS = 1
_WAKE = 2


def simulate(
    jobs: Iterable[Job] | JobGraph,
    machines: Sequence[MachineSlotSpec],
    *,
    noise: float = 0.0,
    seed: int = 0,
    speculation: SpeculationRule | None = None,
    speculate: bool = True,
    hold: bool = True,
    transfer: TransferCost | None = None,
    failing: Iterable[str] = (),
    machine_failures: Iterable[tuple[float, str]] = (),
    strict: bool = True,
    actual: Mapping[str, float] | None = None,
    guessed: Iterable[str] = (),
    guesses: Guesses | None = None,
    bound: bool = True,
    slack_share: float = SLACK_SHARE,
    weights: Mapping[str, float] | None = None,
) -> SimResult:
    """``bound=False`` leaves the lower bound out (0 in the result): a real run plans
    without one, and ``plan_cost`` times what it plans. ``slack_share`` and ``weights`` are
    the policy's (``scheduler.search`` tries others)."""
    graph = jobs if isinstance(jobs, JobGraph) else JobGraph(jobs)
    bound_at = lower_bound(graph, machines) if bound else 0.0
    critical, total = graph.graph_critical_path(), graph.total_work()
    if not speculate:
        # A threshold nothing can meet turns speculation off without a second code path.
        speculation = SpeculationRule(min_gain=math.inf)
    policy = Policy(
        graph,
        machines,
        transfer=transfer,
        speculation=speculation,
        hold=hold,
        strict=strict,
        guessed=guessed,
        slack_share=slack_share,
        weights=weights,
    )
    sim = _Sim(
        policy,
        factor=noise_factors(graph, noise, seed) if actual is None else {},
        actual=dict(actual) if actual is not None else None,
        guesses=guesses,
        transfer=transfer,
        failing=frozenset(failing),
        speeds={m.name: m.speed for m in machines},
        failed=list(policy.unschedulable),
        skipped=list(policy.skipped_at_start),
        unbuildable=tuple(policy.unschedulable.items()),
    )
    for at, name in machine_failures:
        sim.schedule_failure(at, name)
    with _collector_paused():
        sim.run()
    return sim.result(machines, lower_bound=bound_at, critical_path=critical, total_work=total)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector held off while a plan runs: a plan makes a few
    short-lived objects per build, and every full collection meanwhile walked the whole graph
    (7-9% of planning 50,000 builds). What a plan leaves in cycles is collected after."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def noise_factors(graph: JobGraph, noise: float, seed: int) -> dict[str, float]:
    """Each job's actual work over its estimate; empty (all exact) without noise."""
    # Seeded, reproducible noise for a simulation; nothing here is security-relevant.
    rng = random.Random(seed)  # noqa: S311
    if noise > 0:
        return {job.id: rng.lognormvariate(0.0, noise) for job in graph.jobs()}
    return {}


@dataclass(slots=True, eq=False)
class _Sim:
    """A simulated run in progress: the fake clock, the pending events, and what happened."""

    policy: Policy
    factor: dict[str, float]
    actual: dict[str, float] | None
    guesses: Guesses | None
    transfer: TransferCost | None
    failing: frozenset[str]
    speeds: dict[str, float]
    failed: list[str]
    skipped: list[str]
    unbuildable: tuple[tuple[str, str], ...]
    # (time, kind, sequence number, job, machine); the sequence keeps the order deterministic.
    events: list[tuple[float, int, int, str, str]] = field(default_factory=list)
    seq: int = 0
    # (job, machine) -> (start, event seq, speculative); a missing key means the copy is gone.
    active: dict[tuple[str, str], tuple[float, int, bool]] = field(default_factory=dict)
    schedule: list[RunRecord] = field(default_factory=list)
    speculations: int = 0
    cancelled: int = 0
    next_wake: float = math.inf
    now: float = 0.0
    makespan: float = 0.0

    def result(
        self,
        machines: Sequence[MachineSlotSpec],
        *,
        lower_bound: float,
        critical_path: float,
        total_work: float,
    ) -> SimResult:
        """What the run came to, once it is over."""
        return SimResult(
            makespan=self.makespan,
            lower_bound=lower_bound,
            critical_path=critical_path,
            total_work=total_work,
            machines=machine_summaries(machines, self.schedule),
            schedule=tuple(self.schedule),
            failed=tuple(self.failed),
            skipped=tuple(self.skipped),
            speculations=self.speculations,
            cancelled=self.cancelled,
            unbuildable=self.unbuildable,
        )

    def _push(self, at: float, kind: int, job: str, machine: str) -> int:
        self.seq += 1
        heapq.heappush(self.events, (at, kind, self.seq, job, machine))
        return self.seq

    def schedule_failure(self, at: float, machine: str) -> None:
        if machine not in self.speeds:
            raise SchedulerError(f"machine failure for unknown machine {machine!r}")
        if not 0.0 <= at < math.inf:  # an event at NaN is never the next instant: no end
            raise SchedulerError(f"machine failure of {machine!r} at {at}: not a time")
        self._push(at, _MACHINE_FAILS, "", machine)

    def run(self) -> None:
        """Ask the policy, then apply every event of the next instant, until none is left."""
        policy = self.policy
        events = self.events
        while True:
            self._carry_out(policy.next_decisions(self.now))
            told = False
            while events and not told:
                # An instant of copies cancelled before they ended only: the policy is not asked.
                told = self._next_instant()
            if not told:
                break
        if not policy.graph.finished:
            raise SchedulerError(
                f"simulation stalled at t={self.now:.1f}s with {policy.ready_count} jobs ready"
            )

    def _next_instant(self) -> bool:
        """Apply every event of the next instant; False if none told the policy anything
        (each was the end of a copy cancelled earlier, which the executor never sees)."""
        events = self.events
        now = self.now = events[0][0]
        if self.next_wake <= now:
            self.next_wake = math.inf
        told = False
        while events and events[0][0] == now:
            _, kind, event_seq, job, machine = heapq.heappop(events)
            if kind == _FINISH:
                told = self._finish(job, machine, event_seq) or told
            else:
                told = True
                if kind == _MACHINE_FAILS:
                    self._machine_fails(machine)
        return told

    def _carry_out(self, decisions: list[Decision]) -> None:
        """Start the copies the policy asked for (ending as their noisy work says) and
        remember the earliest wake-up asked for."""
        work = self.policy.graph.work
        actual, factor, speeds, events = self.actual, self.factor, self.speeds, self.events
        for decision in decisions:
            if isinstance(decision, Wait):
                if decision.until < self.next_wake:
                    self.next_wake = decision.until
                    self._push(decision.until, _WAKE, "", "")
                continue
            job, machine = decision.job, decision.machine
            speculative = isinstance(decision, Speculate)
            if speculative:
                # A copy starts from nothing: its end is its true work's, whatever the policy
                # assumed of it (the overrun rule assumes twice the work done so far, not the
                # estimate).
                true_work = factor.get(job, 1.0) * work(job) if actual is None else actual[job]
                end = self.now + true_work / speeds[machine]
                if self.transfer is not None:
                    end += self.transfer.estimate(self.policy.graph.job(job), machine)
            else:
                if actual is None:
                    extra = (factor.get(job, 1.0) - 1.0) * work(job) / speeds[machine]
                else:
                    extra = (actual[job] - work(job)) / speeds[machine]
                end = decision.expected_finish + extra
            self.speculations += speculative
            self.seq += 1  # _push, inlined: one call fewer per start
            heapq.heappush(events, (end, _FINISH, self.seq, job, machine))
            self.active[job, machine] = (self.now, self.seq, speculative)

    def _finish(self, job: str, machine: str, event_seq: int) -> bool:
        """A copy's planned end came; False if it was cancelled or lost before."""
        run = self.active.get((job, machine))
        if run is None or run[1] != event_seq:
            return False
        del self.active[job, machine]
        now = self.now
        ok = job not in self.failing
        result = self.policy.on_finished(job, machine, now, ok)
        self.schedule.append(
            RunRecord(job, machine, run[0], now, "built" if ok else "failed", speculative=run[2])
        )
        self.makespan = now
        if not ok:
            self.failed.append(job)
            self.skipped.extend(result.skipped)
        elif self.guesses is not None:
            self._learn(job, (now - run[0]) * self.speeds[machine])
        for cancel in result.cancel:
            start, _, spec = self.active.pop((cancel.job, cancel.machine))
            self.schedule.append(
                RunRecord(cancel.job, cancel.machine, start, now, "cancelled", speculative=spec)
            )
            self.cancelled += 1
        return True

    def _learn(self, job: str, work: float) -> None:
        """As the executor does: guessed jobs not started yet take what this run measured."""
        assert self.guesses is not None
        graph = self.policy.graph
        for other, estimate in self.guesses.observe(job, work).items():
            if (state := graph.state(other)) is JobState.PENDING or state is JobState.READY:
                self.policy.on_estimate(other, estimate)

    def _machine_fails(self, machine: str) -> None:
        for lost in self.policy.running(machine):
            start, _, spec = self.active.pop((lost, machine))
            self.schedule.append(
                RunRecord(lost, machine, start, self.now, "lost", speculative=spec)
            )
        self.policy.on_machine_failed(machine, self.now)
        for _, skipped in self.policy.take_skipped():
            self.skipped.extend(skipped)


def machine_summaries(
    machines: Sequence[MachineSlotSpec], schedule: list[RunRecord]
) -> tuple[MachineSummary, ...]:
    """Per machine: slot-seconds busy, jobs built and copies cancelled."""
    busy = {m.name: 0.0 for m in machines}
    built = {m.name: 0 for m in machines}
    lost_or_cancelled = {m.name: 0 for m in machines}
    for record in schedule:
        busy[record.machine] += record.end - record.start
        if record.outcome == "built":
            built[record.machine] += 1
        elif record.outcome == "cancelled":
            lost_or_cancelled[record.machine] += 1
    return tuple(
        MachineSummary(
            m.name, m.speed, m.slots, busy[m.name], built[m.name], lost_or_cancelled[m.name]
        )
        for m in machines
    )
