"""Nix's own distributed builds, simulated: what ``nix-build`` with Nix 2.8's build hook does.

The model follows nix-protocols.md section 5 (build-remote.cc) and section 4.7 (when the parent
asks the hook), on a fake clock like ``simulate``:

- Nix's worker asks the hook about each ready derivation in turn, and waits for the answer. An
  accept costs ``accept`` seconds of that one dispatcher: a fresh hook process, the ssh
  handshake and the serve handshake all happen before ``# accept`` (the hook is consumed by the
  build, so every accept starts a new one). A decline costs ``decline``.
- The hook picks among machines that can build the derivation and have a free slot (slots held
  by builds this run started): the lowest load / speed, then the fastest, then the least
  loaded, then file order. Nix 2.8 to 2.19 divide integers, so with ``integer_speed`` a fast
  machine with any free slot wins over an idle slow one.
- Remote is always preferred. The local machine builds only what the hook declines: when no
  suitable machine has a free slot and the derivation can build locally. Nix tells the hook it
  is willing to build locally only while a local slot is free (derivation-goal.cc, the "try"
  message), so when every slot is taken the hook postpones, and the derivation is asked again
  at the worker's next poll, every ``poll`` (5 s) seconds: a slot that frees meanwhile waits.
- A derivation only the local machine can build waits for a local slot, and asks again when
  any build ends (worker.cc, childTerminated).
- After an accept, inputs go up one build at a time per machine (the upload lock) for
  ``upload`` seconds, the build takes work / speed, and fetching the outputs and the hook's
  exit take ``fetch``; the slot is held throughout. A local build costs ``local`` beyond its
  work.

``NixCosts.measured`` holds the costs measured by ``make bench`` on this project's machine;
``bench/model_check.py`` calibrates them from a bench run's own trivial-derivation figures and
compares the model's makespans with the measured ones.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from offload.errors import SchedulerError
from offload.names import LOCAL
from offload.scheduler.dag import Job, JobGraph
from offload.scheduler.policy import MachineSlotSpec
from offload.scheduler.policy.matching import can_build
from offload.scheduler.simulate import (
    RunRecord,
    SimResult,
    lower_bound,
    machine_summaries,
    noise_factors,
)

__all__ = ["NixCosts", "simulate_nix"]


@dataclass(frozen=True, slots=True)
class NixCosts:
    """Seconds Nix's hook spends on a build beyond its work (see the module docstring)."""

    accept: float = 0.37
    decline: float = 0.01
    upload: float = 0.0
    fetch: float = 0.02
    local: float = 0.05
    poll: float = 5.0
    integer_speed: bool = True

    @classmethod
    def measured(cls) -> NixCosts:
        """This machine's figures (make bench, 2026-12-02): 100 trivial derivations took
        Nix 38 s at -j0, all on one builder with slots to spare, so the dispatcher's cost per
        accept is about 0.37 s."""
        return cls()


# Event kinds; at one instant, builds that end are seen before the poll that wakes postponed
# derivations, and both before the dispatcher asks the hook again.
_FINISH = 0
_POLL = 1
_DISPATCH = 2


@dataclass(slots=True, eq=False)
class _NixRun:
    """A simulated nix-build in progress."""

    jobs: dict[str, Job]
    remote: list[MachineSlotSpec]
    local: MachineSlotSpec | None
    costs: NixCosts
    dependents: dict[str, list[str]]
    waiting_on: dict[str, int]
    awake: deque[str] = field(default_factory=deque)
    postponed: list[str] = field(default_factory=list)
    wanting_local: list[str] = field(default_factory=list)
    load: dict[str, int] = field(default_factory=dict)
    slots: dict[str, int] = field(default_factory=dict)
    upload_free: dict[str, float] = field(default_factory=dict)
    local_running: int = 0
    events: list[tuple[float, int, int, str, str]] = field(default_factory=list)
    seq: int = 0
    dispatcher_free: float = 0.0
    poll_pending: bool = False
    dispatch_pending: bool = False
    # Per kind of derivation (system, features): the remote machines that can build it, in file
    # order, and how many of them have a free slot; each machine's kinds, to keep that count.
    eligible: dict[tuple[str, frozenset[str]], list[MachineSlotSpec]] = field(default_factory=dict)
    free: dict[tuple[str, frozenset[str]], int] = field(default_factory=dict)
    kinds_of: dict[str, list[tuple[str, frozenset[str]]]] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)
    schedule: list[RunRecord] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    now: float = 0.0

    def push(self, at: float, kind: int, job: str = "", machine: str = "") -> None:
        self.seq += 1
        heapq.heappush(self.events, (at, kind, self.seq, job, machine))

    def run(self) -> float:
        self.awake.extend(job for job, count in self.waiting_on.items() if count == 0)
        self.push(0.0, _DISPATCH)
        makespan = 0.0
        while self.events:
            at, kind, _, job, machine = heapq.heappop(self.events)
            self.now = at
            if kind == _FINISH:
                self._finish(job, machine)
                makespan = at
            elif kind == _POLL:
                self.poll_pending = False
                self.awake.extend(self.postponed)
                self.postponed.clear()
            else:
                self.dispatch_pending = False
            self._dispatch()
        if len(self.schedule) != len(self.jobs):
            raise SchedulerError(f"the Nix model stalled at t={self.now:.1f}s")
        return makespan

    def _dispatch(self) -> None:
        """Ask the hook about awake derivations, one after the other, until an event is due
        before the dispatcher is free again (it is then asked from that event's instant)."""
        events = self.events
        while self.awake:
            if self.dispatcher_free > self.now:
                # At one instant an event comes first: a build that ends frees its slot.
                if events and events[0][0] <= self.dispatcher_free:
                    if not self.dispatch_pending:
                        self.dispatch_pending = True
                        self.push(self.dispatcher_free, _DISPATCH)
                    return
                self.now = self.dispatcher_free
            job = self.jobs[self.awake.popleft()]
            self.dispatcher_free = self.now + self._ask(job)

    def _ask(self, job: Job) -> float:
        """What the hook answers for ``job``, carried out; the dispatcher's time spent."""
        costs = self.costs
        machine = self._choose(job)
        if machine is not None:
            self._accept(job, machine)
            return costs.accept
        local_type = self.local is not None and can_build(
            self.local, job.system, job.required_features
        )
        # Nix tells the hook it is willing to build locally only while a local slot is free.
        if local_type and self.local is not None and self.local_running < self.local.slots:
            self.local_running += 1
            self.started[job.id] = self.now + costs.decline
            end = self.now + costs.decline + costs.local + job.work_estimate / self.local.speed
            self.push(end, _FINISH, job.id, LOCAL)
        elif self._eligible(job):
            self.postponed.append(job.id)
            if not self.poll_pending:
                self.poll_pending = True
                self.push(self.now + costs.poll, _POLL)
        elif local_type:
            self.wanting_local.append(job.id)
        else:
            # Taken out before the run (_skip_dependents_of_unbuildable): nothing builds it.
            raise SchedulerError(f"the Nix model was asked about unbuildable {job.id!r}")
        return costs.decline

    def _eligible(self, job: Job) -> list[MachineSlotSpec]:
        kind = (job.system, job.required_features)
        found = self.eligible.get(kind)
        if found is None:
            found = [m for m in self.remote if can_build(m, job.system, job.required_features)]
            self.eligible[kind] = found
            self.free[kind] = sum(1 for m in found if self.load[m.name] < m.slots)
            for machine in found:
                self.kinds_of[machine.name].append(kind)
        return found

    def _choose(self, job: Job) -> MachineSlotSpec | None:
        """build-remote's choice: lowest load/speed, then fastest, then least loaded."""
        eligible = self._eligible(job)
        if not self.free[job.system, job.required_features]:
            return None
        best: MachineSlotSpec | None = None
        best_key: tuple[float, float, int] = (math.inf, 0.0, 0)
        integer = self.costs.integer_speed
        for machine in eligible:
            load = self.load[machine.name]
            if load >= machine.slots:
                continue
            speed = max(1, int(machine.speed)) if integer else machine.speed
            score = load // speed if integer else load / speed
            key = (score, -speed, load)
            if key < best_key:
                best, best_key = machine, key
        return best

    def _load_changes(self, machine: str, by: int) -> None:
        """Keep the free-slot counts of ``machine``'s kinds of derivation up to date."""
        before = self.load[machine]
        after = self.load[machine] = before + by
        slots = self.slots[machine]
        if (before < slots) != (after < slots):
            for kind in self.kinds_of[machine]:
                self.free[kind] += 1 if after < slots else -1

    def _accept(self, job: Job, machine: MachineSlotSpec) -> None:
        costs = self.costs
        name = machine.name
        self._load_changes(name, 1)
        upload_start = max(self.now + costs.accept, self.upload_free[name])
        self.upload_free[name] = upload_start + costs.upload
        self.started[job.id] = self.now
        end = upload_start + costs.upload + job.work_estimate / machine.speed + costs.fetch
        self.push(end, _FINISH, job.id, name)

    def _finish(self, job: str, machine: str) -> None:
        self.schedule.append(RunRecord(job, machine, self.started.pop(job), self.now, "built"))
        if machine == LOCAL:
            self.local_running -= 1
        else:
            self._load_changes(machine, -1)
        # Any child's end, a hook's too, wakes the derivations waiting for a local build slot
        # (worker.cc childTerminated): they ask the hook again.
        self.awake.extend(self.wanting_local)
        self.wanting_local.clear()
        for dependent in self.dependents[job]:
            self.waiting_on[dependent] -= 1
            if self.waiting_on[dependent] == 0:
                self.awake.append(dependent)


def simulate_nix(
    jobs: Iterable[Job] | JobGraph,
    machines: Sequence[MachineSlotSpec],
    costs: NixCosts | None = None,
    *,
    noise: float = 0.0,
    seed: int = 0,
) -> SimResult:
    """Nix's own hook on ``machines``; the one named ``LOCAL``, if any, is the local machine
    (its slots are max-jobs). Derivations no machine can build fail, and so do their
    dependents (they are reported as skipped). ``noise`` and ``seed`` make the actual work
    differ from the estimate exactly as in ``simulate`` (Nix itself never looks at estimates)."""
    graph = jobs if isinstance(jobs, JobGraph) else JobGraph(jobs)
    factor = noise_factors(graph, noise, seed)
    job_list = [
        replace(job, work_estimate=job.work_estimate * factor.get(job.id, 1.0))
        for job in graph.jobs()
    ]
    by_id = {job.id: job for job in job_list}
    dependents: dict[str, list[str]] = {job.id: [] for job in job_list}
    for job in job_list:
        for dep in job.deps:
            dependents[dep].append(job.id)
    remote = [m for m in machines if m.name != LOCAL]
    local = next((m for m in machines if m.name == LOCAL and m.slots > 0), None)
    nix = _NixRun(
        jobs=by_id,
        remote=remote,
        local=local,
        costs=costs or NixCosts.measured(),
        dependents=dependents,
        waiting_on={job.id: len(job.deps) for job in job_list},
        load={m.name: 0 for m in remote},
        slots={m.name: m.slots for m in remote},
        kinds_of={m.name: [] for m in remote},
        upload_free={m.name: 0.0 for m in remote},
    )
    skipped = _skip_dependents_of_unbuildable(nix, machines)
    makespan = nix.run()
    return SimResult(
        makespan=makespan,
        lower_bound=lower_bound(graph, machines),
        critical_path=graph.graph_critical_path(),
        total_work=graph.total_work(),
        machines=machine_summaries(machines, nix.schedule),
        schedule=tuple(nix.schedule),
        failed=tuple(nix.failed),
        skipped=tuple(skipped),
        speculations=0,
        cancelled=0,
    )


def _skip_dependents_of_unbuildable(nix: _NixRun, machines: Sequence[MachineSlotSpec]) -> list[str]:
    """Take out, before the run, what no machine can build and everything that needs it: Nix
    fails such a derivation when it is asked, and never starts what depends on it."""
    usable = [m for m in machines if m.slots > 0]
    bad = [
        job.id
        for job in nix.jobs.values()
        if not any(can_build(m, job.system, job.required_features) for m in usable)
    ]
    if not bad:
        return []
    nix.failed.extend(bad)
    skipped: list[str] = []
    queue = deque(bad)
    seen = set(bad)
    while queue:
        for dependent in nix.dependents[queue.popleft()]:
            if dependent not in seen:
                seen.add(dependent)
                skipped.append(dependent)
                queue.append(dependent)
    for gone in seen:
        nix.waiting_on[gone] = -1  # never ready
        del nix.jobs[gone]
    return skipped
