"""Placement policy: which ready job starts on which machine, and when.

The model
---------
The pool is a set of machines, each with a speed factor (work units per second), a number of
slots and Nix's capability triple (systems, supported and mandatory features). A job may run on
a machine exactly when Nix would let it (``nix-protocols.md`` 5.1): its system is one of the
machine's systems or is ``builtin``, every required feature is in supported or mandatory, and
every mandatory feature of the machine is required by the job. Jobs with the same (system,
required features) form an *eligibility class*; each class has its own ready queue, so work
that only a few machines can take is never buried behind work they cannot take (Hydra#971).

The policy is synchronous and has no clock: every call receives ``now`` (seconds on any
monotonic scale). A driver (the simulator, or the async executor) repeatedly

1. calls ``next_decisions(now)`` and carries out what it returns:
   ``Start(job, machine)`` and ``Speculate(job, machine)`` (a second copy of a running job), or
   ``Wait(until)``: nothing more can start now; call again at ``until`` unless an event comes
   first;
2. reports events: ``on_finished(job, machine, now, ok)`` (returns the copies to ``Cancel`` and
   the jobs skipped after a failure) and ``on_machine_failed(machine, now)``.

The policy assumes its decisions are carried out at once: a ``Start`` occupies the slot at
``now`` and is expected to end at ``now + transfer + work / speed``.

Ordering. Ready jobs are taken by remaining critical path (the longest chain of work estimates
from the job to a sink), ties by more direct dependents, then by id, from one heap per class.
Nothing is re-sorted per decision (Hydra's per-step re-sort was O(N² log N), hydra PR #1301);
a changed estimate pushes a fresh heap entry and the stale one is dropped when it surfaces.

Placement. Each job goes where it is expected to *finish* first: for each eligible machine that is
up, start = now if it has a free slot, else the expected end of its earliest-ending slot; finish =
start + transfer estimate (pluggable ``TransferCost``, zero by default) + work / speed. When the
best finish is on a busy machine, the job is *held*: it reserves that slot for this round (later
jobs see the slot as busy until the held job would finish there) and is offered again at the next
call. At most 4 jobs are held per round, however few slots are free (each reservation makes the
next job see the queue it would join, so holding more jobs than there are free slots is still
sound); past that a job takes the fastest free slot. Every hold is re-examined at each call, so the
cap is what keeps a call cheap on huge graphs (the later, less critical jobs are the right ones for
slow slots anyway). A running job that has overrun its estimate is assumed to need another quarter
of its elapsed time. Machines of one speed in a class form a tier whose earliest start is computed
once per call and again only when a decision touches it (no transfer costs); with a transfer model
every eligible machine is scored. Either way the scan stops at the first machine too slow to beat
the best finish found.

Coming work. A waiting job whose dependencies have all started is *coming*: it will be ready when
the running ones end. Each round, the most critical coming jobs (up to the hold budget, and only
those with less slack than their own work) are placed like held jobs before any ready job less
critical than they are: each reserves the slot where it would finish first from its expected
ready time (the slot that frees by then, or else a free one, which it *claims*). A ready job may
still use a claimed slot if it is done before the claim starts. A job started in the round makes
its dependents coming at once. Without this, a side job takes the fast slot the critical path
needs a moment later (a fork on the critical path wants both fast slots at once).

Slack. A job off the critical path need not take the machine where it would finish first. The
run is expected to end when the longest remaining path does (the most critical ready job's, or a
running job's less what its machine has done), on the fastest machine; a job's latest end is
that, less its own path after it. A job takes the slowest free machine where it still ends
within half of that slack (``slack_share``), so fast slots stay free for the critical work that
becomes ready soon; half, because estimates are wrong and a late side job becomes critical. Jobs
whose estimate is a guess (``guessed``: no history) keep the earliest finish: sending an unknown
job to a slow machine because it looks short is how a huge one ends up there.

Idle tail. When no job is ready or held and a machine has a free slot, a running job is copied
onto the fastest such machine if that copy is expected to finish earlier by more than both
``min_gain`` seconds and ``min_ratio`` of the running copy's expected remaining time. A job
gets at most one extra copy, ever. The first copy to finish wins; ``on_finished`` returns a
``Cancel`` for the other, whose slot is free at once. Only a bounded set of running copies is
examined per call (those with the latest planned end, and the longest-overdue ones), not every
running job.

Failures. A failed build is final and skips its dependents (``JobGraph.mark_failed``). A machine
that fails (unreachable, connection lost) is down for ``base x factor^(n-1)`` seconds after its
n-th consecutive failure, n capped (Hydra: 60 s x 3^(n-1), at most 4 steps, failures within
30 s counting once); its running jobs go back to the ready queues (or simply lose their copy
when another copy runs elsewhere). A successful build on the machine resets its count.
The driver tracks where outputs are: when the only copy of needed outputs goes with a machine,
it reports those jobs (``on_outputs_lost``) and they run again; a copy that cannot get its
inputs because their holder went away is handed back with ``on_returned``.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from offload.errors import SchedulerError
from offload.scheduler.dag import Job, JobGraph, JobState

__all__ = [
    "Backoff",
    "BandwidthTransferCost",
    "Cancel",
    "Decision",
    "Finished",
    "MachineDown",
    "MachineSlotSpec",
    "Policy",
    "Speculate",
    "SpeculationRule",
    "Start",
    "TransferCost",
    "Wait",
    "can_build",
    "why_cannot_build",
]

# An overdue job is assumed to need this fraction of its elapsed time again.
_OVERDUE_FRACTION = 0.25
_MIN_OVERDUE = 1e-3
# Running copies examined per round for idle-tail speculation, per ordering.
_SPECULATION_LOOKAHEAD = 8
# Jobs held for a busy slot per round; later ones take the fastest free slot. Each hold is
# re-examined every round, so this bounds the work per event.
_MAX_HOLDS_PER_ROUND = 4
# The share of its slack a job may spend on a slower machine to leave faster ones free.
_SLACK_SHARE = 0.5


@dataclass(frozen=True, slots=True)
class MachineSlotSpec:
    """A machine as the policy sees it. ``speed`` is work units per second (Nix's speedFactor)."""

    name: str
    speed: float = 1.0
    slots: int = 1
    systems: frozenset[str] = field(default_factory=frozenset)
    supported: frozenset[str] = field(default_factory=frozenset)
    mandatory: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if not self.speed > 0 or math.isinf(self.speed):
            raise SchedulerError(f"machine {self.name!r}: speed must be positive, not {self.speed}")
        if self.slots < 0:
            raise SchedulerError(f"machine {self.name!r}: slots must be >= 0, not {self.slots}")


def why_cannot_build(machine: MachineSlotSpec, system: str, required: frozenset[str]) -> str | None:
    """Nix's matching rule (build-remote.cc); None when the machine can build the job."""
    if system != "builtin" and system not in machine.systems:
        offered = ", ".join(sorted(machine.systems)) or "none"
        return f"{machine.name} builds {offered}, not {system}"
    missing = required - machine.supported - machine.mandatory
    if missing:
        return f"{machine.name} lacks feature {', '.join(sorted(missing))}"
    unmet = machine.mandatory - required
    if unmet:
        return f"{machine.name} only takes jobs requiring {', '.join(sorted(unmet))}"
    return None


def can_build(machine: MachineSlotSpec, system: str, required: frozenset[str]) -> bool:
    return why_cannot_build(machine, system, required) is None


# Decisions: what the driver must do.


@dataclass(frozen=True, slots=True)
class Start:
    job: str
    machine: str
    expected_finish: float


@dataclass(frozen=True, slots=True)
class Speculate:
    """Start a second copy of ``job`` (running on ``original``) on ``machine``."""

    job: str
    machine: str
    expected_finish: float
    original: str


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing else can start now; ask again at ``until`` if no event comes first."""

    until: float


Decision = Start | Speculate | Wait


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop the copy of ``job`` running on ``machine``: another copy finished first."""

    job: str
    machine: str


@dataclass(frozen=True, slots=True)
class Finished:
    """What a finish report changed. ``accepted`` is False for a copy already cancelled."""

    accepted: bool
    cancel: tuple[Cancel, ...] = ()
    newly_ready: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MachineDown:
    machine: str
    until: float
    failures: int
    returned: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Down time after the n-th consecutive failure: base x factor^(n-1), n <= max_steps."""

    base: float = 60.0
    factor: float = 3.0
    max_steps: int = 4
    coalesce: float = 30.0

    def delay(self, failures: int) -> float:
        n = min(max(failures, 1), self.max_steps)
        return self.base * self.factor ** (n - 1)


@dataclass(frozen=True, slots=True)
class SpeculationRule:
    min_gain: float = 1.0
    min_ratio: float = 0.2


class TransferCost(Protocol):
    """Seconds to bring a job's inputs to a machine; told where outputs end up."""

    def estimate(self, job: Job, machine: str) -> float: ...

    def record_output(self, job_id: str, machine: str) -> None: ...


@dataclass(slots=True)
class BandwidthTransferCost:
    """Inputs missing on a machine cost their bytes / its bandwidth, plus a per-path latency.

    An output is present where it was built and on ``hub`` (the coordinator copies every output
    back to the local store), and on any machine listed in ``present`` from the start.
    """

    output_bytes: Mapping[str, int]
    bandwidth: Mapping[str, float]
    default_bandwidth: float = 100e6
    latency: float = 0.0
    hub: str | None = "local"
    present: dict[str, set[str]] = field(default_factory=dict)

    def estimate(self, job: Job, machine: str) -> float:
        missing_bytes = 0
        missing = 0
        for dep in job.deps:
            where = self.present.get(dep)
            if where is None or machine not in where:
                missing += 1
                missing_bytes += self.output_bytes.get(dep, 0)
        if not missing:
            return 0.0
        bandwidth = self.bandwidth.get(machine, self.default_bandwidth)
        return missing_bytes / bandwidth + self.latency * missing

    def record_output(self, job_id: str, machine: str) -> None:
        where = self.present.setdefault(job_id, set())
        where.add(machine)
        if self.hub is not None:
            where.add(self.hub)


# Internal mutable state.


@dataclass(slots=True, eq=False)
class _Machine:
    spec: MachineSlotSpec
    speed: float
    free: int
    # One entry per busy slot: (expected end, start, job id, copy number).
    ends: list[tuple[float, float, str, int]] = field(default_factory=list)
    classes: list[_Class] = field(default_factory=list)
    tiers: list[_Tier] = field(default_factory=list)
    # This round's copy of ``ends`` with held jobs' reservations, when there are any.
    reserved: list[tuple[float, float, str, int]] | None = None
    # Free slots claimed this round by coming jobs, and the earliest time one is claimed from.
    claimed: int = 0
    claimed_from: float = math.inf
    up: bool = True
    down_until: float = -math.inf
    failures: int = 0
    last_failure: float = -math.inf


@dataclass(slots=True, eq=False)
class _Tier:
    """The machines of one class with one speed, and their earliest start this round."""

    speed: float
    machines: list[_Machine]
    round: int = -1
    start: float = math.inf
    machine: _Machine | None = None
    claims: bool = False


@dataclass(slots=True, eq=False)
class _Class:
    system: str
    required: frozenset[str]
    machines: list[_Machine]  # fastest first
    members: set[_Machine]
    tiers: list[_Tier]
    heap: list[tuple[float, int, str]] = field(default_factory=list)
    free_up: int = 0


# A coming job as a round sees it: its queue key, its id and when it is expected to be ready.
_Coming = tuple[tuple[float, int, str], str, float]


@dataclass(slots=True, eq=False)
class _Run:
    machine: _Machine
    start: float
    end: float
    copy: int


class Policy:
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
        slack_share: float = _SLACK_SHARE,
        guessed: Iterable[str] = (),
        strict: bool = True,
    ) -> None:
        self.graph = jobs if isinstance(jobs, JobGraph) else JobGraph(jobs)
        names = [m.name for m in machines]
        if len(set(names)) != len(names):
            raise SchedulerError("machine names must be unique: " + ", ".join(names))
        self._transfer = transfer
        self._speculation = speculation if speculation is not None else SpeculationRule()
        self._backoff = backoff if backoff is not None else Backoff()
        self._hold = hold
        self._slack_share = slack_share
        # Jobs whose estimate is a guess, not history: any one of them may be the huge one.
        self._guessed = frozenset(guessed)
        self._machines = {m.name: _Machine(m, m.speed, m.slots) for m in machines}
        self._by_speed = sorted(self._machines.values(), key=lambda m: -m.speed)
        self._free_up_total = sum(m.slots for m in machines)
        self._classes: dict[tuple[str, frozenset[str]], _Class] = {}
        self._class_of: dict[str, _Class] = {}
        self._queued: set[str] = set()
        self._runs: dict[str, list[_Run]] = {}
        self._speculated: set[str] = set()
        self._down: list[_Machine] = []
        self._round = 0
        # Single-copy runs, for speculation: latest planned end first, and earliest start first.
        self._by_end: list[tuple[float, int, str]] = []
        self._by_start: list[tuple[float, int, str]] = []
        # Running jobs, most critical first, for the remaining critical path (_remaining_path).
        self._by_path: list[tuple[float, int, str]] = []
        self._copy_seq = 0
        # Per waiting job, its dependencies not started yet; at 0 it is *coming*.
        self._unstarted = {job.id: self._count_unstarted(job.id) for job in self.graph.jobs()}
        self._coming: list[tuple[float, int, str]] = []
        self.unschedulable: dict[str, str] = {}
        self.skipped_at_start: list[str] = []
        for job in self.graph.jobs():
            cls = self._class_for(job)
            self._class_of[job.id] = cls
            if not cls.machines:
                self.unschedulable[job.id] = self._reason(job, machines)
        if self.unschedulable:
            if strict:
                first, reason = next(iter(self.unschedulable.items()))
                more = len(self.unschedulable) - 1
                raise SchedulerError(
                    f"no machine can build {first}: {reason}"
                    + (f" (and {more} more jobs)" if more else ""),
                    hint="add a builder with that system and features, or use --keep-going",
                )
            for job_id in self.unschedulable:
                if self.graph.state(job_id) is not JobState.SKIPPED:
                    self.skipped_at_start.extend(self.graph.mark_failed(job_id))
        for job_id in self.graph.ready():
            self._enqueue(job_id)

    # Set-up helpers

    def _class_for(self, job: Job) -> _Class:
        key = (job.system, job.required_features)
        cls = self._classes.get(key)
        if cls is None:
            members = [
                m
                for m in self._by_speed
                if m.spec.slots > 0 and can_build(m.spec, job.system, job.required_features)
            ]
            tiers: list[_Tier] = []
            for m in members:
                if not tiers or tiers[-1].speed != m.speed:
                    tiers.append(_Tier(m.speed, []))
                tiers[-1].machines.append(m)
                m.tiers.append(tiers[-1])
            cls = _Class(job.system, job.required_features, members, set(members), tiers)
            cls.free_up = sum(m.free for m in members if m.up)
            for m in members:
                m.classes.append(cls)
            self._classes[key] = cls
        return cls

    @staticmethod
    def _reason(job: Job, machines: Sequence[MachineSlotSpec]) -> str:
        features = ", ".join(sorted(job.required_features))
        wants = f"it needs system {job.system}" + (f" with {features}" if features else "")
        reasons = [
            why_cannot_build(m, job.system, job.required_features) or f"{m.name} has no slots"
            for m in machines
        ]
        detail = "; ".join(r for r in reasons[:4] if r) or "there are no machines"
        return f"{wants}; {detail}"

    def _count_unstarted(self, job_id: str) -> int:
        graph = self.graph
        return sum(
            1
            for dep in graph.job(job_id).deps
            if graph.state(dep) not in {JobState.DONE, JobState.RUNNING}
        )

    def _count_started(self, job_id: str, delta: int) -> list[tuple[float, int, str]]:
        """``job_id`` started (-1) or went back (+1): each waiting dependent has one
        dependency fewer (more) to start. Returns the queue keys of those now coming."""
        graph = self.graph
        unstarted = self._unstarted
        coming: list[tuple[float, int, str]] = []
        for d in graph.dependents(job_id):
            unstarted[d] += delta
            if unstarted[d] == 0 and graph.state(d) is JobState.PENDING:
                key = (-graph.critical_path(d), -graph.dependents_count(d), d)
                heapq.heappush(self._coming, key)
                coming.append(key)
        return coming

    def _coming_jobs(self, now: float, limit: int) -> list[_Coming]:
        """Up to ``limit`` coming jobs, most critical first: (queue key, job, expected ready
        time). A coming job waits only for dependencies that are running."""
        graph = self.graph
        heap = self._coming
        found: list[_Coming] = []
        while heap and len(found) < limit:
            job_id = heapq.heappop(heap)[2]
            if graph.state(job_id) is not JobState.PENDING or self._unstarted[job_id]:
                continue  # ready, started or skipped since, or a dependency went back: dead
            ready_at = now
            for dep in graph.job(job_id).deps:
                runs = self._runs.get(dep)
                if runs:
                    ends = (self._slot_time((r.end, r.start, dep, 0), now) for r in runs)
                    ready_at = max(ready_at, min(ends))
            key = (-graph.critical_path(job_id), -graph.dependents_count(job_id), job_id)
            found.append((key, job_id, ready_at))
        for key, _, _ in found:
            heapq.heappush(heap, key)
        return found

    def _enqueue(self, job_id: str) -> None:
        cls = self._class_of[job_id]
        graph = self.graph
        heapq.heappush(
            cls.heap, (-graph.critical_path(job_id), -graph.dependents_count(job_id), job_id)
        )
        self._queued.add(job_id)

    # Queries

    @property
    def machine_names(self) -> list[str]:
        return list(self._machines)

    def running(self, machine: str) -> list[str]:
        return [job for _, _, job, _ in self._machines[machine].ends]

    def copies(self, job_id: str) -> list[str]:
        return [run.machine.spec.name for run in self._runs.get(job_id, ())]

    def is_up(self, machine: str, now: float) -> bool:
        m = self._machines[machine]
        return m.up or m.down_until <= now

    def down_until(self, machine: str) -> float:
        return self._machines[machine].down_until

    def failures(self, machine: str) -> int:
        return self._machines[machine].failures

    @property
    def ready_count(self) -> int:
        return len(self._queued)

    # Slot accounting

    def _take_slot(self, m: _Machine, job_id: str, now: float, end: float) -> _Run:
        self._copy_seq += 1
        run = _Run(m, now, end, self._copy_seq)
        m.free -= 1
        heapq.heappush(m.ends, (end, now, job_id, run.copy))
        if m.up:
            self._free_up_total -= 1
            for cls in m.classes:
                cls.free_up -= 1
        return run

    def _release_slot(self, run: _Run, job_id: str) -> None:
        m = run.machine
        m.ends.remove((run.end, run.start, job_id, run.copy))
        heapq.heapify(m.ends)
        m.free += 1
        if m.up:
            self._free_up_total += 1
            for cls in m.classes:
                cls.free_up += 1

    def _set_up(self, m: _Machine, up: bool) -> None:
        if m.up == up:
            return
        m.up = up
        delta = m.free if up else -m.free
        self._free_up_total += delta
        for cls in m.classes:
            cls.free_up += delta

    @staticmethod
    def _slot_time(entry: tuple[float, float, str, int], now: float) -> float:
        end = entry[0]
        if end > now:
            return end
        return now + max(_OVERDUE_FRACTION * (now - entry[1]), _MIN_OVERDUE)

    # Decisions

    def next_decisions(self, now: float) -> list[Decision]:
        if self._down:
            for m in list(self._down):
                if m.down_until <= now:
                    self._down.remove(m)
                    self._set_up(m, up=True)
        decisions: list[Decision] = []
        held: list[str] = []
        wake = math.inf
        hold_budget = _MAX_HOLDS_PER_ROUND if self._hold else 0
        reserved: list[_Machine] = []
        graph = self.graph
        transfer = self._transfer
        queued = self._queued
        classes = list(self._classes.values())
        self._round += 1
        round_no = self._round
        remaining: float | None = None
        coming: list[_Coming] | None = None
        full: set[_Class] = set()
        while self._free_up_total > 0:
            cls = self._best_class(classes, full)
            if cls is None:
                break
            if coming is None:
                coming = self._coming_jobs(now, hold_budget)
            if coming and coming[0][0] < cls.heap[0]:
                # A job more critical than every ready one will be ready soon: unless it has
                # slack to spare (more than its own work), it claims the slot it will want, so
                # less critical ready work does not take that slot (unless done by then).
                _, job_id, ready_at = coming.pop(0)
                if remaining is None:
                    remaining = self._remaining_path(now, -cls.heap[0][0])
                if remaining - graph.critical_path(job_id) > graph.work(job_id):
                    continue
                hold_budget -= 1
                best, best_start, best_finish = self._place(
                    self._class_of[job_id], job_id, now, round_no, ready_at
                )
                if best is not None:
                    self._reserve(best, job_id, best_start, best_finish, now=now, reserved=reserved)
                continue
            job_id = heapq.heappop(cls.heap)[2]
            queued.discard(job_id)
            work = graph.work(job_id)
            best, best_start, best_finish = self._place(cls, job_id, now, round_no, now)
            assert best is not None  # cls.free_up > 0: some member is up with a free slot
            if self._slack_share > 0 and job_id not in self._guessed:
                if remaining is None:
                    remaining = self._remaining_path(now, graph.critical_path(job_id))
                slower = self._slower_in_slack(
                    cls, job_id, now, remaining=remaining, best=best, best_finish=best_finish
                )
                if slower is not None:
                    best, best_finish = slower
                    best_start = now
            if best_start > now:
                if hold_budget > 0:
                    hold_budget -= 1
                    self._reserve(best, job_id, best_start, best_finish, now=now, reserved=reserved)
                    held.append(job_id)
                    wake = min(wake, best_start)
                    continue
                fallback = self._fastest_free(cls)
                if fallback is None:
                    held.append(job_id)
                    full.add(cls)
                    continue
                best = fallback
                best_finish = now + work / best.speed
                if transfer is not None:
                    best_finish += transfer.estimate(graph.job(job_id), best.spec.name)
            graph.mark_started(job_id)
            for key in self._count_started(job_id, -1):
                # Coming from now on: it may claim a slot ahead of the ready jobs left.
                bisect.insort(coming, (key, key[2], best_finish))
            for tier in best.tiers:
                tier.round = -1
            run = self._take_slot(best, job_id, now, best_finish)
            self._runs[job_id] = [run]
            heapq.heappush(self._by_path, (-graph.critical_path(job_id), run.copy, job_id))
            if self._speculation.min_gain < math.inf:
                heapq.heappush(self._by_end, (-best_finish, run.copy, job_id))
                heapq.heappush(self._by_start, (now, run.copy, job_id))
            decisions.append(Start(job_id, best.spec.name, best_finish))
        for job_id in held:
            self._enqueue(job_id)
        if not queued and self._free_up_total > 0 and self._runs:
            decisions.extend(self._speculate(now))
        for m in reserved:
            m.reserved = None
            m.claimed = 0
            m.claimed_from = math.inf
        if queued and self._down:
            wake = min(wake, *(m.down_until for m in self._down))
        if wake < math.inf:
            decisions.append(Wait(wake))
        return decisions

    @staticmethod
    def _fastest_free(group: _Class) -> _Machine | None:
        """The fastest machine of ``group`` with a slot free and not claimed this round."""
        return next((m for m in group.machines if m.up and m.free > m.claimed), None)

    def _remaining_path(self, now: float, ready: float) -> float:
        """The longest critical path left, in work: ``ready``'s (the most critical ready job)
        or a running job's less the work its machine has done on it since it started."""
        longest = ready
        heap = self._by_path
        kept: list[tuple[float, int, str]] = []
        # Most critical first: once a job's whole path is no longer, no later one's rest is.
        # A bounded look keeps a round cheap; too short an answer only leaves less slack.
        while heap and -heap[0][0] > longest and len(kept) < _SPECULATION_LOOKAHEAD:
            entry = heapq.heappop(heap)
            runs = self._runs.get(entry[2])
            if runs is None or runs[0].copy != entry[1]:
                continue  # finished or went back: dead for good
            kept.append(entry)
            done = max((now - r.start) * r.machine.speed for r in runs)
            longest = max(longest, -entry[0] - done)
        for entry in kept:
            heapq.heappush(heap, entry)
        return longest

    def _slower_in_slack(
        self,
        cls: _Class,
        job_id: str,
        now: float,
        *,
        remaining: float,
        best: _Machine,
        best_finish: float,
    ) -> tuple[_Machine, float] | None:
        """A slower free machine on which ``job_id`` still ends within its share of slack.

        The run is expected to end when the longest ``remaining`` path does, run on the fastest
        machine; a job's latest end leaves room for its own path after it. The slowest machine
        that meets ``now`` + share x (latest end - now) gets the job, so the faster ones stay free
        for critical work; None if the earliest finish is the only one that does.
        """
        graph = self.graph
        work = graph.work(job_id)
        fastest = cls.machines[0].speed
        room = now + self._slack_share * (remaining - graph.critical_path(job_id) + work) / fastest
        if best_finish >= room:
            return None
        best_speed = best.speed
        transfer = self._transfer
        for tier in reversed(cls.tiers):
            if tier.speed >= best_speed:
                return None
            finish = now + work / tier.speed
            if finish > room:
                continue
            for m in tier.machines:
                if not m.up or m.free <= m.claimed:
                    continue
                end = finish + (
                    transfer.estimate(graph.job(job_id), m.spec.name) if transfer else 0
                )
                if end <= room:
                    return m, end
        return None

    def _place(
        self, cls: _Class, job_id: str, now: float, round_no: int, ready_at: float
    ) -> tuple[_Machine | None, float, float]:
        """Where ``job_id``, ready at ``ready_at``, finishes first: machine, start, finish."""
        work = self.graph.work(job_id)
        if self._transfer is None:
            return self._place_by_tier(cls, work, now, round_no, ready_at)
        return self._place_by_machine(
            cls, self.graph.job(job_id), work, now, self._transfer, ready_at=ready_at
        )

    @staticmethod
    def _reserve(
        m: _Machine,
        job_id: str,
        start: float,
        finish: float,
        *,
        now: float,
        reserved: list[_Machine],
    ) -> None:
        """For the rest of this round a slot of ``m`` is ``job_id``'s until ``finish``: the
        busy slot that frees first if it frees by ``start``, else a free one (claimed from
        ``start``) if any is left, else the busy slot that frees first."""
        if m.reserved is None:
            m.reserved = list(m.ends)
            reserved.append(m)
        frees_in_time = bool(m.reserved) and m.reserved[0][0] <= start
        if m.free > m.claimed and not (frees_in_time and start > now):
            m.claimed += 1
            m.claimed_from = min(m.claimed_from, start)
            heapq.heappush(m.reserved, (finish, max(start, now), job_id, 0))
        else:
            heapq.heapreplace(m.reserved, (finish, start, job_id, 0))
        for tier in m.tiers:
            tier.round = -1

    @classmethod
    def _slot_start(cls, m: _Machine, now: float, duration: float) -> float:
        """When a job of ``duration`` could start on ``m`` this round: now on a free slot, or on
        a claimed one it would leave before the claim; else when the first slot frees."""
        if m.free > m.claimed or (m.free > 0 and now + duration <= m.claimed_from):
            return now
        return cls._slot_time((m.reserved or m.ends)[0], now)

    @classmethod
    def _place_by_tier(
        cls, group: _Class, work: float, now: float, round_no: int, ready_at: float
    ) -> tuple[_Machine | None, float, float]:
        """Earliest finish without transfer costs: machines of one speed differ only in start.

        Each tier remembers its earliest start for the round until a start or hold touches it,
        so a round with many holds rescans one tier per decision, not the whole class.
        """
        best: _Machine | None = None
        best_start = best_finish = math.inf
        earliest = max(now, ready_at)
        for tier in group.tiers:
            duration = work / tier.speed
            if earliest + duration > best_finish:
                break
            if tier.round != round_no or tier.claims:
                start = math.inf
                found: _Machine | None = None
                claims = False
                for m in tier.machines:
                    if not m.up:
                        continue
                    if m.claimed:
                        claims = True
                        t = cls._slot_start(m, now, duration)
                    elif m.free > 0:
                        start, found, claims = now, m, False
                        break
                    else:
                        t = cls._slot_time((m.reserved or m.ends)[0], now)
                    if t < start:
                        start, found = t, m
                # With claims the answer depends on the job's duration: not kept for others.
                tier.start, tier.machine, tier.round, tier.claims = start, found, round_no, claims
            if tier.machine is None:
                continue
            start = max(tier.start, ready_at)
            finish = start + duration
            if finish < best_finish or (finish == best_finish and start < best_start):
                best, best_start, best_finish = tier.machine, start, finish
        return best, best_start, best_finish

    @classmethod
    def _place_by_machine(
        cls,
        group: _Class,
        job: Job,
        work: float,
        now: float,
        transfer: TransferCost,
        *,
        ready_at: float,
    ) -> tuple[_Machine | None, float, float]:
        """Earliest finish with transfer costs; ``work`` is the job's current estimate."""
        best: _Machine | None = None
        best_start = best_finish = math.inf
        earliest = max(now, ready_at)
        for m in group.machines:
            duration = work / m.speed
            if earliest + duration > best_finish:
                break
            if not m.up:
                continue
            start = max(cls._slot_start(m, now, duration), ready_at)
            finish = start + duration + transfer.estimate(job, m.spec.name)
            if finish < best_finish or (finish == best_finish and start < best_start):
                best, best_start, best_finish = m, start, finish
        return best, best_start, best_finish

    def _best_class(self, classes: list[_Class], full: set[_Class]) -> _Class | None:
        best: _Class | None = None
        best_key: tuple[float, int, str] | None = None
        graph = self.graph
        queued = self._queued
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

    def _candidates(self, now: float) -> list[tuple[str, _Run]]:
        """The single-copy runs expected to end last: by planned end, and the longest overdue.

        Looking at a bounded number per round keeps an idle pool from costing O(running jobs)
        per event; the runs that end last are the ones the tail waits for.
        """
        found: list[tuple[str, _Run]] = []
        for heap in (self._by_end, self._by_start):
            kept: list[tuple[float, int, str]] = []
            while heap and len(kept) < _SPECULATION_LOOKAHEAD:
                entry = heapq.heappop(heap)
                job_id = entry[2]
                runs = self._runs.get(job_id)
                if runs is None or len(runs) != 1 or runs[0].copy != entry[1]:
                    continue  # finished, lost or already copied: the entry is dead for good
                kept.append(entry)
                run = runs[0]
                if heap is self._by_start and run.end > now:
                    continue  # not overdue; the planned-end heap covers it
                found.append((job_id, run))
            for entry in kept:
                heapq.heappush(heap, entry)
        return found

    def _speculate(self, now: float) -> list[Decision]:
        rule = self._speculation
        decisions: list[Decision] = []
        graph = self.graph
        transfer = self._transfer
        seen: set[str] = set()
        # The fastest machine with a free slot, per class: found once, again after a copy.
        fastest_free: dict[_Class, _Machine | None] = {}
        for job_id, run in self._candidates(now):
            if job_id in seen or self._free_up_total <= 0:
                continue
            seen.add(job_id)
            cls = self._class_of[job_id]
            if cls not in fastest_free:
                fastest_free[cls] = self._fastest_free(cls)
            target = fastest_free[cls]
            if target is None or target is run.machine:
                continue
            old_end = self._slot_time((run.end, run.start, job_id, 0), now)
            new_end = now + graph.work(job_id) / target.speed
            if transfer is not None:
                new_end += transfer.estimate(graph.job(job_id), target.spec.name)
            gain = old_end - new_end
            if gain <= rule.min_gain or gain <= rule.min_ratio * (old_end - now):
                continue
            self._speculated.add(job_id)
            self._runs[job_id].append(self._take_slot(target, job_id, now, new_end))
            fastest_free.clear()
            decisions.append(Speculate(job_id, target.spec.name, new_end, run.machine.spec.name))
        return decisions

    # Events

    def on_finished(self, job_id: str, machine: str, now: float, ok: bool) -> Finished:
        """A copy of ``job_id`` ended on ``machine``: ok=True built, ok=False build failed."""
        del now  # the policy keeps no timings; history learns durations elsewhere
        runs = self._runs.get(job_id)
        run = next((r for r in runs or () if r.machine.spec.name == machine), None)
        if runs is None or run is None:
            return Finished(accepted=False)
        del self._runs[job_id]
        cancel: list[Cancel] = []
        for other in runs:
            self._release_slot(other, job_id)
            if other is not run:
                cancel.append(Cancel(job_id, other.machine.spec.name))
        if not ok:
            return Finished(True, tuple(cancel), (), tuple(self.graph.mark_failed(job_id)))
        run.machine.failures = 0
        if self._transfer is not None:
            self._transfer.record_output(job_id, machine)
        newly = self.graph.mark_done(job_id)
        for ready in newly:
            self._enqueue(ready)
        return Finished(True, tuple(cancel), tuple(newly), ())

    def on_machine_failed(self, machine: str, now: float) -> MachineDown:
        """The machine is unreachable or dropped mid-build: back it off, requeue its work."""
        m = self._machines[machine]
        within = now - m.last_failure < self._backoff.coalesce and m.down_until > now
        if not within:
            m.failures = min(m.failures + 1, self._backoff.max_steps)
            m.down_until = now + self._backoff.delay(m.failures)
        m.last_failure = now
        self._set_up(m, up=False)
        if m not in self._down:
            self._down.append(m)
        returned: list[str] = []
        for _, _, job_id, _ in list(m.ends):
            runs = self._runs[job_id]
            if self._drop_copy(job_id, runs, next(r for r in runs if r.machine is m)):
                returned.append(job_id)
        return MachineDown(machine, m.down_until, m.failures, tuple(returned))

    def _drop_copy(self, job_id: str, runs: list[_Run], run: _Run) -> bool:
        """Free one copy's slot; True if it was the job's last, which then goes back."""
        self._release_slot(run, job_id)
        runs.remove(run)
        if runs:
            return False
        del self._runs[job_id]
        self._count_started(job_id, +1)
        if self.graph.mark_returned(job_id):
            self._enqueue(job_id)
        return True

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
        (``JobGraph.mark_undone``: pass every such job, dependencies included)."""
        undone = list(job_ids)
        ready, waiting_again = self.graph.mark_undone(undone)
        for job_id in undone:
            self._count_started(job_id, +1)
        # Undone jobs count their own dependencies afresh (after the loop above touched them).
        for job_id in undone:
            self._unstarted[job_id] = self._count_unstarted(job_id)
        self._queued.difference_update(waiting_again)
        for job_id in ready:
            self._enqueue(job_id)

    def restore_down(self, machine: str, failures: int, until: float) -> None:
        """Start with ``machine`` backed off, as a previous run left it (before any decision)."""
        m = self._machines[machine]
        m.failures = min(max(failures, 1), self._backoff.max_steps)
        m.down_until = until
        self._set_up(m, up=False)
        if m not in self._down:
            self._down.append(m)

    def on_estimate(self, job_id: str, work: float) -> None:
        """A better estimate arrived (history, hints): reorder the affected ready jobs."""
        for changed in self.graph.update_estimate(job_id, work):
            if changed in self._queued:
                self._enqueue(changed)
