"""Many clients, one set of builders: N independent policies on shared machines, simulated.

Each client has its own graph and its own ``Policy`` over the same machine specs, and knows
nothing of the others, as offload clients on different hosts do. Two ways of sharing are
modelled:

- ``counted=True`` (builder-side slots, ``offload.transport.wrapper``): a build a client starts on
  a machine whose slots are all held by running builds (of any client) waits in that machine's
  queue, first come first served, and runs when a slot frees; the client's policy meanwhile
  takes it for running there.
  With ``moving``, a client hears that its build waits (``Policy.on_machine_full``), as
  offload does from the builder's ``busy`` answer, and may move it to a free slot elsewhere
  (``Move``); a slot that frees on a machine gives withheld slots back to the clients that
  withheld them (as their probes would find it).
  With ``linger`` (offload's build sessions), a build's slot stays its client's for that long
  after it ends, and that client's next build there takes it before any other client's
  waiting build; with ``turn`` too, only while the slot's session is younger than ``turn``
  (from its start, ``offload.transport.links.turns.TURN``): an older one goes to the builds
  waiting there, first come first served, as the builder's wrapper yields it to them.
- ``counted=False`` (each client counts only its own host's slots): every build starts at once,
  and a machine running more builds than it has slots shares itself between them (each runs at
  ``slots / running`` of its speed), which is how oversubscribed builders slow every client.

The clock advances in fixed steps (``step`` seconds), simple and exact enough for the few
hundred jobs a comparison needs. The result gives each client's makespan and the machines'
utilisation: slot-seconds doing work over slot-seconds available until the last client ends.
Pure: no I/O, deterministic.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from offload.errors import SchedulerError
from offload.scheduler.dag import Job, JobGraph
from offload.scheduler.policy import MachineSlotSpec, Move, Policy, Speculate, Start

__all__ = ["ClientsResult", "simulate_clients"]


@dataclass(frozen=True)
class ClientsResult:
    makespans: tuple[float, ...]  # per client, in the order given
    utilisation: float  # 0..1 over every machine, until the last client ended
    peak_running: dict[str, int]  # per machine: most builds running there at once


@dataclass(eq=False)
class _Build:
    client: int
    job: str
    machine: str
    left: float  # work still to do, in speed-1 seconds
    since: float = 0.0  # when the session it runs in started (``turn``)


@dataclass(frozen=True)
class _Held:
    """A slot kept after its build for its client's next build there (``linger``)."""

    client: int
    until: float
    since: float


@dataclass(frozen=True)
class _Sessions:
    linger: float = 0.0
    turn: float | None = None


@dataclass
class _Machine:
    spec: MachineSlotSpec
    running: list[_Build] = field(default_factory=list)
    waiting: deque[_Build] = field(default_factory=deque)
    held: list[_Held] = field(default_factory=list)
    peak: int = 0
    busy: float = 0.0  # slot-seconds spent building


def simulate_clients(
    graphs: Sequence[Sequence[Job]],
    machines: Sequence[MachineSlotSpec],
    *,
    counted: bool,
    moving: bool = False,
    linger: float = 0.0,
    turn: float | None = None,
    step: float = 0.05,
    limit: float = 1e6,
) -> ClientsResult:
    """Run every client's graph at once on ``machines`` (module docstring)."""
    sessions = _Sessions(linger if counted else 0.0, turn)
    policies = [Policy(JobGraph(jobs), machines) for jobs in graphs]
    pool = {m.name: _Machine(m) for m in machines}
    ends: list[float | None] = [None] * len(policies)
    now = 0.0
    while any(end is None for end in ends):
        if now > limit:
            raise SchedulerError(f"the clients' simulation did not end by t={limit:g}s")
        for index, policy in enumerate(policies):
            if ends[index] is None:
                _decide(index, policy, pool, counted=counted, moving=moving, now=now)
        _advance(pool, step)
        now += step
        for machine in pool.values():
            for build in [b for b in machine.running if b.left <= 1e-9]:
                _finish(build, pool, policies, now, sessions)
            if any(held.until <= now for held in machine.held):
                machine.held = [held for held in machine.held if held.until > now]
                _admit(machine, policies, now)
        for index, policy in enumerate(policies):
            if ends[index] is None and policy.graph.finished:
                ends[index] = now
    last = max(end or 0.0 for end in ends)
    capacity = math.fsum(m.slots for m in machines) * last or 1.0
    return ClientsResult(
        tuple(end or 0.0 for end in ends),
        math.fsum(m.busy for m in pool.values()) / capacity,
        {name: m.peak for name, m in pool.items()},
    )


def _decide(
    index: int,
    policy: Policy,
    pool: dict[str, _Machine],
    *,
    counted: bool,
    moving: bool,
    now: float,
) -> None:
    for decision in policy.next_decisions(now):
        if isinstance(decision, Move):
            source = pool[decision.source]
            source.waiting = deque(
                b for b in source.waiting if (b.client, b.job) != (index, decision.job)
            )
        elif not isinstance(decision, Start | Speculate):
            continue
        machine = pool[decision.machine]
        build = _Build(
            index, decision.job, decision.machine, policy.graph.work(decision.job), since=now
        )
        if (held := _own(machine, index)) is not None:
            build.since = held.since
        elif counted and _taken(machine) >= machine.spec.slots:
            machine.waiting.append(build)
            if moving and policy.on_machine_full(decision.job, decision.machine, now):
                machine.waiting.pop()  # a second copy: dropped, the first goes on
            continue
        machine.running.append(build)
        machine.peak = max(machine.peak, len(machine.running))


def _advance(pool: dict[str, _Machine], step: float) -> None:
    for machine in pool.values():
        running = len(machine.running)
        if not running:
            continue
        share = min(1.0, machine.spec.slots / running)
        for build in machine.running:
            build.left -= step * machine.spec.speed * share
        machine.busy += step * min(running, machine.spec.slots)


def _own(machine: _Machine, client: int) -> _Held | None:
    """A slot ``client`` kept there after its last build, taken out of the kept ones."""
    for held in machine.held:
        if held.client == client:
            machine.held.remove(held)
            return held
    return None


def _taken(machine: _Machine) -> int:
    return len(machine.running) + len(machine.held)


def _finish(
    build: _Build,
    pool: dict[str, _Machine],
    policies: list[Policy],
    now: float,
    sessions: _Sessions,
) -> None:
    machine = pool[build.machine]
    machine.running.remove(build)
    turn = sessions.turn
    if sessions.linger > 0 and (turn is None or now - build.since < turn):
        machine.held.append(_Held(build.client, now + sessions.linger, build.since))
    finished = policies[build.client].on_finished(build.job, build.machine, now, ok=True)
    for cancel in finished.cancel:  # the losing copies of a speculated job
        other = pool[cancel.machine]
        for queue in (other.running, other.waiting):
            for copy in [c for c in queue if (c.client, c.job) == (build.client, cancel.job)]:
                queue.remove(copy)
        _admit(other, policies, now)
    _admit(machine, policies, now)


def _admit(machine: _Machine, policies: list[Policy], now: float) -> None:
    """Builds waiting for this machine's slots (counted) take the ones that freed, in turn;
    a slot still free then gives withheld slots back (``moving``)."""
    name = machine.spec.name
    for build in list(machine.waiting):  # a client's kept slot goes to its own build first
        if (held := _own(machine, build.client)) is not None:
            machine.waiting.remove(build)
            build.since = held.since
            machine.running.append(build)
            machine.peak = max(machine.peak, len(machine.running))
            policies[build.client].on_slot_taken(build.job, name, now)
    while machine.waiting and _taken(machine) < machine.spec.slots:
        build = machine.waiting.popleft()
        build.since = now
        machine.running.append(build)
        machine.peak = max(machine.peak, len(machine.running))
        policies[build.client].on_slot_taken(build.job, name, now)
    if _taken(machine) < machine.spec.slots:
        for policy in policies:
            if policy.withheld(name) > 0 and not policy.waiting(name):
                policy.on_slot_freed(name)
