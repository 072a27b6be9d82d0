"""What a run tells the people and programs watching it: a closed set of event records.

The executor emits these and knows nothing about terminals; renderers (live TTY view, plain
lines, JSON lines) consume them. ``time`` is wall-clock seconds (``time.time()``), so JSON
consumers can correlate events with other logs. A run's first event is its ``RunStarted``
(``offload build`` holds what it learns before, and tells it just after: ``build.run``), so
a ``time`` may be earlier than the one before it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal, Protocol

__all__ = [
    "ANSWERED_PHASES",
    "Event",
    "JobFinished",
    "JobLog",
    "JobPhase",
    "MachineEvent",
    "MachineState",
    "Phase",
    "Renderer",
    "ReportWritten",
    "RunFinished",
    "RunStarted",
    "Timing",
    "event_dict",
]

Phase = Literal["queued", "connecting", "sending", "building", "fetching"]
# The phases of a copy that only a machine that answered reaches ("queued" and "connecting" may
# be a retry of one down, its backoff ended, that fails again).
ANSWERED_PHASES: frozenset[Phase] = frozenset({"sending", "building", "fetching"})
# "fetched": copied from a builder that already held it; "substituted": the local store got it
# from its binary caches. Neither was built in this run.
JobStatus = Literal["built", "failed", "cancelled", "lost", "skipped", "fetched", "substituted"]
# "loaded": the builder reported load beyond its cores and gets fewer slots from now (``slots``
# says how many; the load gone, more again).
# "slow": it has not answered yet; the run goes on without it, and it is "up" once it answers
# ("down" if it fails). "down" with a message is a builder left out: the message says why.
# "restricted": the builder's key runs only the serve program; the message says what offload
# cannot know there (its load) and how its builds are stopped.
# "full": every slot on the builder is held by other clients; builds wait there or move elsewhere
# ("up" once a slot is free there again).
# "unstopped": a build offload stopped there (lost with its connection, a copy that lost, the
# run's end) could not be stopped on the builder (the message says why): it may run on there
# until its Nix sees its session gone. Not a state the builder stays in: said once per failure.
# "cache": the machine's Nix left out one of its binary caches (``cache`` names it; the message
# says why, from Nix's words): what it would have given is built, or taken from another cache.
# Said once per cache and machine; the run goes on.
# "key": the ssh key file the machine's line names does not exist, yet ssh logged in there with
# another key (the ssh config's, an agent's, its default); the message says which file and the
# fix. Said once, as the run starts (one slow to answer: once it answers); it builds on.
MachineState = Literal[
    "up", "down", "loaded", "slow", "restricted", "full", "unstopped", "cache", "key"
]


@dataclass(frozen=True)
class RunStarted:
    run_id: str
    total: int  # derivations to build (or fetch) in this run
    machines: tuple[str, ...]
    estimate: float  # expected makespan in seconds
    time: float
    # Each machine's speed factor and slots, in the order of ``machines`` (the view's header).
    speeds: tuple[float, ...] = ()
    slots: tuple[int, ...] = ()
    # Outputs settled before the run started (substituted, fetched from a builder that held
    # them): not in ``total``, told as finished jobs just after this event.
    ready: int = 0


@dataclass(frozen=True)
class JobPhase:
    drv_path: str
    name: str  # the derivation's name, e.g. hello-2.12
    machine: str
    phase: Phase
    estimate: float | None  # expected build seconds on this machine
    time: float
    speculative: bool = False
    # Seconds the run still needs by the scheduler's plan, as of ``time`` (scheduler.run.remaining);
    # None when not planned again at this event.
    remaining: float | None = None
    # Within "building": the phase the builder entered (unpackPhase, buildPhase...), as
    # ssh-ng:// builders report it; None on the mark that starts the phase itself.
    step: str | None = None


@dataclass(frozen=True)
class JobLog:
    drv_path: str
    name: str
    machine: str
    line: str
    time: float


@dataclass(frozen=True)
class JobFinished:
    """A job's end, or one copy's: every copy that started (its first ``JobPhase``) ends with
    one, before the run's ``RunFinished``, whatever ended it. A copy stopped by offload is
    "cancelled" with why in ``error`` (another copy was built first, another build failed
    without --keep-going, it was moved off a full builder, the run's end stopped it); one
    whose machine went down under it is "lost" with the machine's error."""

    drv_path: str
    name: str
    machine: str  # "" for skipped jobs and for those no machine can build
    status: JobStatus
    started: float
    finished: float
    bytes_sent: int
    bytes_received: int
    error: str | None
    time: float
    # Seconds the builder spent on the build itself, without connecting or copying; the
    # history learns estimates from this.
    build_seconds: float | None = None
    remaining: float | None = None  # as in JobPhase
    # Seconds of it the copy waited for a slot and a session there (its queued and connecting
    # phases), not keeping the machine busy: all of it for a copy that only waited.
    waited: float = 0.0

    @property
    def duration(self) -> float:
        return self.finished - self.started


@dataclass(frozen=True)
class MachineEvent:
    machine: str
    state: MachineState
    message: str
    until: float | None  # for "down": when it may be tried again (wall clock)
    time: float
    slots: int | None = None  # for "loaded": the slots it gets this run
    cache: str | None = None  # for "cache": the binary cache's URL, as the substituters name it


@dataclass(frozen=True)
class RunFinished:
    run_id: str
    built: int
    failed: int
    skipped: int
    elapsed: float
    outputs: tuple[str, ...]
    time: float
    # The run was stopped before its end (Ctrl-C, a signal, an error of its own).
    interrupted: bool = False
    # Of those, one that stopped with work left that no machine could take (``stranded``).
    incomplete: bool = False

    @property
    def ending(self) -> str:
        """How the run ended, in one word, as ``offload history`` says it."""
        if self.incomplete:
            return "incomplete"
        return "interrupted" if self.interrupted else "finished"


@dataclass(frozen=True)
class Timing:
    """Where the command's fixed costs ended (``offload.marks``): (name, time) pairs in order,
    told once the run is over and its sessions closed."""

    marks: tuple[tuple[str, float], ...]
    time: float


@dataclass(frozen=True)
class ReportWritten:
    """``offload build --report FILE``'s page, written once the run is kept (after its other
    events; none when it could not be written: a warning says why). ``path`` is absolute."""

    path: str
    time: float


Event = (
    RunStarted
    | JobPhase
    | JobLog
    | JobFinished
    | MachineEvent
    | RunFinished
    | Timing
    | ReportWritten
)


# Each event's kind in --json, and its fields' names, read once.
_KINDS: dict[type[Any], tuple[str, tuple[str, ...]]] = {
    cls: (kind, tuple(field.name for field in fields(cls)))
    for cls, kind in (
        (RunStarted, "run_started"),
        (JobPhase, "job_phase"),
        (JobLog, "job_log"),
        (JobFinished, "job_finished"),
        (MachineEvent, "machine"),
        (RunFinished, "run_finished"),
        (Timing, "timing"),
        (ReportWritten, "report"),
    )
}


def event_dict(event: Event) -> dict[str, Any]:
    """The JSON-lines form: the record's fields plus ``"event"``, its kind in snake case.
    Every field is flat (text, numbers, tuples of them): read as it is, not through
    ``asdict``'s deep copy (a tenth of a trivial run's CPU went to it with --json)."""
    kind, names = _KINDS[type(event)]
    return {"event": kind} | {name: getattr(event, name) for name in names}


class Renderer(Protocol):
    """Consumes a run's events; every output a run makes to a person goes through one."""

    def handle(self, event: Event) -> None: ...

    def close(self) -> None: ...
