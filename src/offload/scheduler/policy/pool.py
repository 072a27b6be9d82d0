"""The pool as the policy tracks it: machines and their slots, eligibility classes, tiers.

Jobs with the same (system, required features) form an *eligibility class*; each class has its
own ready queue, so work that only a few machines can take is never buried behind work they
cannot take (Hydra#971). A class lists its machines fastest first; machines of one speed in a
class form a *tier*, whose earliest start placement keeps until one of its machines changes.

Each machine keeps one entry per busy slot, (expected end, start, job id, copy number), as a heap,
so its earliest-ending slot is at hand. The counts of free slots on machines that are up (in all,
and per class) are kept current by ``take_slot``, ``release_slot`` and ``set_up``: they are what
tells a round whether anything can start at all.

A machine whose builder says every slot is held by other clients is *full* (``withhold``): the
slots this client took for free are withheld (not free) until the builder gives one out again
(``restore``). A running copy still waiting there for a builder-side slot (``Run.waiting_since``)
holds no slot on the builder: when it leaves, its slot is withheld too, not freed.

A machine whose builder is loaded by others' work gets fewer slots (``cut``, ``offload.load``):
the cut takes its free slots first, then withheld ones; running copies are never stopped for
it, so what is still to cut is *owed* and paid by the next slots that free there. Slots given
back pay what is owed first. When the cut shrinks, it gives back what is owed first, then the
withheld slots it took (still withheld), then free ones. So
``free + busy + withheld + cut - owed == slots`` always, and a machine that owes has no free
slot: the next slot it frees is the end past its ``owed`` earliest-ending ones
(``placement.slot_start``).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from offload.errors import SchedulerError
from offload.scheduler.dag import Job
from offload.scheduler.policy.matching import MachineSlotSpec, can_build

__all__ = ["EligibilityClass", "Machine", "Pool", "Run", "Tier", "first_free"]


@dataclass(slots=True, eq=False)
class Machine:
    spec: MachineSlotSpec
    speed: float
    free: int
    # The pool's machines of its speed, whatever they build (``Pool.speeds``).
    speed_group: Tier
    # One entry per busy slot: (expected end, start, job id, copy number).
    ends: list[tuple[float, float, str, int]] = field(default_factory=list)
    classes: list[EligibilityClass] = field(default_factory=list)
    tiers: list[Tier] = field(default_factory=list)
    # This round's copy of ``ends`` with held jobs' reservations, when there are any.
    reserved: list[tuple[float, float, str, int]] | None = None
    # Free slots claimed this round by coming jobs, and the earliest time one is claimed from.
    claimed: int = 0
    claimed_from: float = math.inf
    up: bool = True
    down_until: float = -math.inf
    failures: int = 0
    # Failures an earlier run counted whose backoff has ended: the next failure goes on from
    # them (``Policy.remember_failures``), a build ends them.
    earlier_failures: int = 0
    last_failure: float = -math.inf
    # Slots believed free that the builder says other clients hold (module docstring).
    withheld: int = 0
    # Slots not used while its builder is loaded by others, and how many of those are still
    # busy with copies that run on (module docstring).
    cut: int = 0
    owed: int = 0
    # How many of the cut came out of ``withheld``: they go back there, not to free, when the
    # cut shrinks (the builder still says others hold them).
    cut_withheld: int = 0
    # Its place in the pool, fastest first: the order of every tier it is in.
    order: int = 0


@dataclass(slots=True, eq=False)
class Tier:
    """The machines of one class with one speed, and their earliest start this round."""

    speed: float
    machines: list[Machine]
    # Its earliest start (``placement.scan_tier``): the machine, when, found at ``at``; kept
    # while ``fresh`` (nothing in the tier changed since), and past ``at`` only if it is a free
    # slot (``free``) or no busy slot was ``overdue``.
    fresh: bool = False
    at: float = -math.inf
    start: float = math.inf
    machine: Machine | None = None
    claims: bool = False
    free: bool = False
    overdue: bool = False
    # Free slots on its machines that are up (kept current like the class's).
    free_up: int = 0
    # Slots of its machines claimed this round (``placement.reserve``).
    claimed: int = 0


@dataclass(slots=True, eq=False)
class EligibilityClass:
    system: str
    required: frozenset[str]
    machines: list[Machine]  # fastest first
    members: set[Machine]
    tiers: list[Tier]
    # Ready jobs: (-critical path, -direct dependents, job id), most critical first.
    heap: list[tuple[float, int, str]] = field(default_factory=list)
    free_up: int = 0
    # Its machines by name.
    by_name: dict[str, Machine] = field(default_factory=dict)


@dataclass(slots=True, eq=False, init=False)
class Run:
    """One running copy of a job (made by an ``__init__`` mypyc compiles: ``decisions``)."""

    machine: Machine
    start: float
    end: float
    copy: int
    # Since when it waits for a slot on the builder that other clients hold (None: it has one).
    waiting_since: float | None

    def __init__(self, machine: Machine, start: float, end: float, copy: int) -> None:
        self.machine = machine
        self.start = start
        self.end = end
        self.copy = copy
        self.waiting_since = None


class Pool:
    """The machines by name and by speed, their eligibility classes and the free-slot counts."""

    def __init__(self, machines: Sequence[MachineSlotSpec]) -> None:
        names = [m.name for m in machines]
        if len(set(names)) != len(names):
            raise SchedulerError("machine names must be unique: " + ", ".join(names))
        # The machines of each speed, fastest first, with their free slots on machines that
        # are up: the fastest free machine is found without a look at the busy ones.
        self.speeds = [
            Tier(speed, []) for speed in sorted({m.speed for m in machines}, reverse=True)
        ]
        group = {g.speed: g for g in self.speeds}
        self.machines = {m.name: Machine(m, m.speed, m.slots, group[m.speed]) for m in machines}
        self.by_speed = sorted(self.machines.values(), key=lambda m: -m.speed)
        for order, m in enumerate(self.by_speed):
            m.order = order
            m.speed_group.machines.append(m)
            m.speed_group.free_up += m.free
        self.free_up_total = sum(m.slots for m in machines)
        self.classes: dict[tuple[str, frozenset[str]], EligibilityClass] = {}
        # The same classes in a list, as every round walks them.
        self.class_list: list[EligibilityClass] = []
        # Machines backed off, until their ``down_until`` passes.
        self.down: list[Machine] = []
        self._copy_seq = 0

    def class_for(self, job: Job) -> EligibilityClass:
        key = (job.system, job.required_features)
        cls = self.classes.get(key)
        if cls is None:
            members = [
                m
                for m in self.by_speed
                if m.spec.slots > 0 and can_build(m.spec, job.system, job.required_features)
            ]
            tiers: list[Tier] = []
            for m in members:
                if not tiers or tiers[-1].speed != m.speed:
                    tiers.append(Tier(m.speed, []))
                tiers[-1].machines.append(m)
                m.tiers.append(tiers[-1])
            cls = EligibilityClass(job.system, job.required_features, members, set(members), tiers)
            cls.free_up = sum(m.free for m in members if m.up)
            cls.by_name = {m.spec.name: m for m in members}
            for tier in tiers:
                tier.free_up = sum(m.free for m in tier.machines if m.up)
            for m in members:
                m.classes.append(cls)
            self.classes[key] = cls
            self.class_list.append(cls)
        return cls

    def capacity(self) -> float:
        """Work per second of every machine that is up, all its slots busy."""
        return sum(m.speed * m.spec.slots for m in self.by_speed if m.up)

    def take_slot(self, m: Machine, job_id: str, now: float, end: float) -> Run:
        self._copy_seq += 1
        run = Run(m, now, end, self._copy_seq)
        m.free -= 1
        heapq.heappush(m.ends, (end, now, job_id, run.copy))
        if m.up:
            self.free_up_total -= 1
            m.speed_group.free_up -= 1
            for cls in m.classes:
                cls.free_up -= 1
            for tier in m.tiers:
                tier.free_up -= 1
        for tier in m.tiers:
            # A tier's earliest start changes only if this was the last free slot of the
            # machine it named: others' slots are as they were, and an all-busy tier has no
            # free slot to start on.
            if tier.machine is m and m.free <= 0:
                _next_free(tier, m)
        return run

    def release_slot(self, run: Run, job_id: str) -> None:
        m = run.machine
        m.ends.remove((run.end, run.start, job_id, run.copy))
        heapq.heapify(m.ends)
        if m.owed:
            m.owed -= 1  # a slot the load has cut since it was taken
            _changed(m)
            return
        if run.waiting_since is not None:
            _changed(m)
            m.withheld += 1  # it never held a slot on the builder: others still do
            return
        self._add_free(m, 1)

    def reschedule(self, run: Run, job_id: str, start: float, end: float) -> None:
        """``run`` really started at ``start`` (it waited for its builder-side slot)."""
        m = run.machine
        m.ends.remove((run.end, run.start, job_id, run.copy))
        run.start, run.end = start, end
        m.ends.append((end, start, job_id, run.copy))
        heapq.heapify(m.ends)
        _changed(m)

    def withhold(self, m: Machine) -> None:
        """The builder says other clients hold every slot: none of ``m``'s free slots is."""
        m.withheld += m.free
        self._add_free(m, -m.free)

    def restore(self, m: Machine, count: int) -> None:
        """``count`` withheld slots of ``m`` are free again (the builder gave one out)."""
        count = min(count, m.withheld)
        m.withheld -= count
        self._add_free(m, count)

    def cut(self, m: Machine, slots: int) -> None:
        """Only ``slots`` (at least one) of ``m``'s slots are used from now (module docstring)."""
        cut = max(0, m.spec.slots - max(1, min(slots, m.spec.slots)))  # none of no slots
        more, m.cut = cut - m.cut, cut
        if more <= 0:
            back = -more
            paid = min(back, m.owed)  # still busy: they are just busy again
            m.owed -= paid
            withheld = min(back - paid, m.cut_withheld)
            m.cut_withheld -= withheld
            m.withheld += withheld
            _changed(m)
            self._add_free(m, back - paid - withheld)
            return
        taken = min(more, m.free)
        self._add_free(m, -taken)
        spared = min(more - taken, m.withheld)
        m.withheld -= spared
        m.cut_withheld += spared
        m.owed += more - taken - spared

    def _add_free(self, m: Machine, delta: int) -> None:
        if delta > 0 and m.owed:
            paid = min(delta, m.owed)  # slots back pay what the load cut first
            m.owed -= paid
            delta -= paid
        m.free += delta
        if delta > 0 and m.up:
            _freed(m)
        else:
            _changed(m)
        if m.up:
            self.free_up_total += delta
            m.speed_group.free_up += delta
            for cls in m.classes:
                cls.free_up += delta
            for tier in m.tiers:
                tier.free_up += delta

    def set_up(self, m: Machine, up: bool) -> None:
        if m.up == up:
            return
        m.up = up
        _changed(m)
        delta = m.free if up else -m.free
        self.free_up_total += delta
        m.speed_group.free_up += delta
        for cls in m.classes:
            cls.free_up += delta
        for tier in m.tiers:
            tier.free_up += delta

    def take_down(self, m: Machine) -> None:
        self.set_up(m, up=False)
        if m not in self.down:
            self.down.append(m)

    def bring_back(self, now: float) -> None:
        """Machines whose back-off has ended are up again."""
        if self.down:
            for m in list(self.down):
                if m.down_until <= now:
                    self.down.remove(m)
                    self.set_up(m, up=True)


def first_free(tiers: list[Tier]) -> Machine | None:
    """The first machine of ``tiers`` (fastest first) that is up with a slot free and not
    claimed this round; a tier without a free slot on a machine that is up is passed over."""
    for tier in tiers:
        if tier.free_up > 0:
            for m in tier.machines:
                if m.up and m.free > m.claimed:
                    return m
    return None


def _changed(m: Machine) -> None:
    """``m``'s slots changed: the earliest start its tiers keep must be found again."""
    for tier in m.tiers:
        tier.fresh = False


def _freed(m: Machine) -> None:
    """``m``, up, has a free slot: its tiers start on it now unless on an earlier free one."""
    for tier in m.tiers:
        if m.claimed or (tier.free and tier.machine is not None and tier.machine.order < m.order):
            if m.claimed:
                tier.fresh = False
            continue
        tier.machine, tier.free = m, True


def _next_free(tier: Tier, m: Machine) -> None:
    """``m``, the first machine of ``tier`` with a free slot, has none left: the next one
    that has one is the tier's start; else (or past a claim) it must be found again."""
    if tier.fresh and tier.free and not tier.claims:
        machines = tier.machines
        for other in machines[machines.index(m) + 1 :]:
            if not other.up:
                continue
            if other.claimed:
                break
            if other.free > 0:
                tier.machine = other
                return
    tier.fresh = False
