"""What offload remembers about runs and builds, as plain values (no I/O).

A build is one copy of a derivation on one machine; its ``phases`` say where its time went
(``waiting`` for a slot and a session, ``sending`` inputs, ``building``, ``fetching`` outputs
home), as wall-clock intervals. ``started``/``finished`` are the build itself when known
(estimates are learned from them), else the whole copy. A run is one ``offload build``: what
was asked, its machines as the scheduler saw them, its wall time and the lower bound its own
measured builds allow. A run's ``RunReport`` lives here too, below the scheduler that fills it
in: history's records are made from the run's events (``offload.history.recorder``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypedDict

from offload.backoff import Health
from offload.ui.events import JobFinished

__all__ = [
    "HOOK_ID_PREFIX",
    "HOOK_RUN_SAID",
    "PHASES",
    "BuildRecord",
    "BuildRecordDict",
    "MachineRecord",
    "PhaseRecord",
    "RunRecord",
    "RunReport",
    "building_span",
    "is_hook_id",
]

# The phases a build's time is told in, in the order a copy goes through them.
PHASES = ("waiting", "sending", "building", "fetching")


@dataclass(frozen=True)
class PhaseRecord:
    phase: str  # one of PHASES
    started: float  # unix time
    finished: float

    @property
    def duration(self) -> float:
        return max(0.0, self.finished - self.started)


def building_span(phases: Sequence[PhaseRecord]) -> tuple[float, float] | None:
    """A build's time as history keeps it, what estimates learn from: its last building
    phase's (started, finished), not its wait or copies; None for one that never built."""
    building = [p for p in phases if p.phase == "building"]
    return (building[-1].started, building[-1].finished) if building else None


@dataclass(frozen=True)
class MachineRecord:
    """A machine of a run as the scheduler saw it, and what the run said of it."""

    name: str
    speed: float
    slots: int
    # Its faults and recoveries, in order, as ``+1.2s down: why`` (``history.recorder``).
    said: tuple[str, ...] = ()
    # False: down (or not answering) from the run's start to its end, so no bound counts it.
    usable: bool = True

    @property
    def told(self) -> tuple[str, ...]:
        """What ``offload history --run`` and the report say of it: ``said``, and where it
        was not usable, so (its capacity is then in no bound)."""
        return self.said if self.usable else (*self.said, "down or not answering all run")


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    started: float  # unix time
    finished: float
    asked: tuple[str, ...]  # the requested derivations' names
    outcome: str  # "ok", "failed", "interrupted", "incomplete" (skipped or stranded work)
    machines: tuple[MachineRecord, ...]
    estimate: float | None  # the makespan the scheduler expected
    lower_bound: float | None  # from the run's own measured builds; None if nothing was built
    # drv -> the run's other derivations it depends on (for the critical path)
    deps: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def wall(self) -> float:
        return max(0.0, self.finished - self.started)

    @property
    def comparable_bound(self) -> float | None:
        """The lower bound to hold the wall time against, None where that says nothing: a run
        stopped early has a bound of what it built, not of what it was asked (a Ctrl-C after
        one small build: 3423x)."""
        return None if self.outcome == "interrupted" else self.lower_bound

    @property
    def bound_ratio(self) -> float | None:
        """Wall time over ``comparable_bound``; None also over a bound under a second, whose
        run is all start-up (a run that waited 5 s on an unreachable cache for builds of 0.04
        s: 145x). ``offload history`` and the report say the same."""
        bound = self.comparable_bound
        return None if bound is None or bound < 1 else self.wall / bound


class BuildRecordDict(TypedDict):
    run_id: str
    drv_path: str
    pname: str
    machine: str
    started: float
    finished: float
    status: str
    bytes_sent: int
    bytes_received: int
    name: str
    error: str | None
    speculative: bool
    phases: list[dict[str, float | str]]


# offload-hook's builds belong to no run: each is kept under an id of its own, made of this
# and a random part (``hook.build_one``), which the history's queries tell them by.
HOOK_ID_PREFIX = "hook-"
# What a listing says as the run of offload-hook's builds, which belong to none.
HOOK_RUN_SAID = "offload-hook"


def is_hook_id(run_id: str) -> bool:
    """Whether ``run_id`` is an offload-hook build's own id, no run's."""
    return run_id.startswith(HOOK_ID_PREFIX)


@dataclass(frozen=True)
class BuildRecord:
    run_id: str
    drv_path: str
    pname: str  # derivation name without version: the key estimates are learned under
    machine: str
    started: float  # unix time
    finished: float
    # "built", "failed", "cancelled", "lost" (machine failed), "skipped", "fetched",
    # "substituted"; only "built" records teach estimates
    status: str
    bytes_sent: int = 0
    bytes_received: int = 0
    name: str = ""  # with version, as the derivation names itself; "" in old records
    error: str | None = None
    speculative: bool = False
    phases: tuple[PhaseRecord, ...] = ()

    @property
    def span(self) -> tuple[float, float]:
        """The whole copy: its first phase's start to its last's end (the build without)."""
        if not self.phases:
            return self.started, self.finished
        return self.phases[0].started, max(p.finished for p in self.phases)

    def phase_seconds(self, phase: str) -> float:
        return sum(p.duration for p in self.phases if p.phase == phase)

    @property
    def duration(self) -> float:
        return self.finished - self.started

    @property
    def by_hook(self) -> bool:
        """Built for offload-hook: its ``run_id`` is the build's own, no run's."""
        return is_hook_id(self.run_id)

    @property
    def run_said(self) -> str:
        """The run it belongs to, as a listing says it (offload-hook's builds: no run's)."""
        return HOOK_RUN_SAID if self.by_hook else self.run_id

    def as_dict(self) -> BuildRecordDict:
        return BuildRecordDict(
            run_id=self.run_id,
            drv_path=self.drv_path,
            pname=self.pname,
            machine=self.machine,
            started=self.started,
            finished=self.finished,
            status=self.status,
            bytes_sent=self.bytes_sent,
            bytes_received=self.bytes_received,
            name=self.name,
            error=self.error,
            speculative=self.speculative,
            phases=[
                {"phase": p.phase, "started": p.started, "finished": p.finished}
                for p in self.phases
            ],
        )


@dataclass
class RunReport:
    run_id: str
    built: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # drv -> error
    # drv -> Nix's BuildStatus (protocol.records), for the failures Nix reported as a build's
    # result; the others (no machine, a lost machine, the local store refusing) have none.
    statuses: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    finished: list[JobFinished] = field(default_factory=list)
    interrupted: bool = False
    # Stopped with work left that no machine could take any more (every one down mid-run).
    stranded: bool = False
    health: dict[str, Health | None] = field(default_factory=dict)  # builders' backoff to keep

    @property
    def ok(self) -> bool:
        return not (self.failed or self.skipped or self.interrupted or self.stranded)
