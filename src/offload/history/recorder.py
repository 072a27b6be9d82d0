"""History records made from one run's events, as a renderer sees them.

The executor tells each copy's phases as ``JobPhase`` marks (queued, connecting, sending,
building, fetching) and its end as a ``JobFinished``; a phase lasts from its mark to the next
one, the last to the copy's end. Queued and connecting are told as one phase, ``waiting`` (for
a slot, then a session). Outputs fetched from a builder that already held them, or substituted
from the local binary caches, are one ``fetching`` phase. The executor tells every copy's
end; one that was never told (a run whose executor failed) is kept as ``cancelled``, ending when
another copy was built or else when the run ended.

What the run said of each machine (down, slow to answer, up again, full, a build it could not
stop) is kept with it, as ``+1.2s down: why``; a machine down or silent from the run's start to
its end (its first word down or slow, then no copy sent or built there, nor up after slow: a
retry once its backoff ends says "up" before it fails again) is kept as not usable. One that
came back and was given no work is not usable either: what it could have done after is not
known.

The run's lower bound is computed from its own measured builds: max(critical path / fastest
speed, total work / capacity), each build's work being its seconds times its machine's speed,
over the machines that were usable (a builder down all along is no capacity the run had).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from offload.backoff import reason_line
from offload.history.records import (
    BuildRecord,
    MachineRecord,
    PhaseRecord,
    RunRecord,
    RunReport,
    building_span,
)
from offload.store.path import split_name_version
from offload.ui.events import (
    ANSWERED_PHASES,
    Event,
    JobFinished,
    JobPhase,
    MachineEvent,
    RunFinished,
    RunStarted,
)

__all__ = ["RunRecorder", "longest_paths", "lower_bound", "outcome_of"]

_PHASE = {
    "queued": "waiting",
    "connecting": "waiting",
    "sending": "sending",
    "building": "building",
    "fetching": "fetching",
}
_FIRST = {"queued", "connecting"}  # the marks a new copy starts with

Mark = tuple[str, float]

# What a machine event is kept as (``MachineRecord.said``); the other states are none of its
# faults (``loaded`` is its slots, ``cache`` and ``key`` are the local machine's set-up).
_SAID = {
    "down": "down",
    "slow": "slow to answer",
    "up": "up",
    "full": "full",
    "restricted": "restricted",
    "unstopped": "not stopped",
}
SAID_MOST = 20  # events kept per machine; past that, how many more
SAID_CHARS = 300


class RunRecorder:
    """Collects a run's events (``handle``, as a renderer) into history records."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.run_started: RunStarted | None = None
        self.run_finished: RunFinished | None = None
        self.builds: list[BuildRecord] = []
        self.slots: dict[str, int] = {}  # machines given fewer slots for load
        self._said: dict[str, list[str]] = {}
        self._unsaid: dict[str, int] = {}  # events past SAID_MOST
        self._first_down: set[str] = set()  # its first word down or slow, before any use
        self._used: set[str] = set()  # it answered: a copy sent or built there, or it joined
        self._last_state: dict[str, str] = {}
        self._marks: dict[tuple[str, str], tuple[JobPhase, list[Mark]]] = {}
        self._last = started

    def handle(self, event: Event) -> None:
        self._last = max(self._last, event.time)
        if isinstance(event, RunStarted):
            self.run_started = event
        elif isinstance(event, RunFinished):
            self.run_finished = event
        elif isinstance(event, MachineEvent):
            self._machine(event)
        elif isinstance(event, JobPhase):
            if event.phase in ANSWERED_PHASES:
                self._used.add(event.machine)
            self._mark(event)
        elif isinstance(event, JobFinished):
            first, marks = self._marks.pop((event.drv_path, event.machine), (None, []))
            speculative = first is not None and first.speculative
            self.builds.append(_record(event, marks, speculative=speculative))

    def close(self) -> None:
        """Nothing to release: the records are taken with ``run``."""

    def _machine(self, event: MachineEvent) -> None:
        name = event.machine
        if event.state == "loaded" and event.slots is not None:
            self.slots[name] = event.slots
        if event.state in {"down", "slow"} and name not in self._used:
            self._first_down.add(name)
        elif event.state == "up" and self._last_state.get(name) == "slow":
            self._used.add(name)  # it answered at last; an "up" after "down" is only a retry
        if event.state in _SAID:
            self._last_state[name] = event.state
        label = _SAID.get(event.state)
        if label is None:
            return
        said = self._said.setdefault(name, [])
        if len(said) >= SAID_MOST:
            self._unsaid[name] = self._unsaid.get(name, 0) + 1
            return
        at = max(0.0, event.time - self.started)
        said.append(reason_line(f"+{at:.1f}s {label}: {event.message}", SAID_CHARS))

    def _machine_record(self, name: str, speed: float, slots: int) -> MachineRecord:
        said = list(self._said.get(name, ()))
        if more := self._unsaid.get(name):
            said.append(f"... and {more} more")
        usable = name not in self._first_down or name in self._used
        return MachineRecord(name, speed, slots, tuple(said), usable)

    def _mark(self, event: JobPhase) -> None:
        if event.step is not None:
            return  # a step within the phase already marked, not a phase of its own
        key = (event.drv_path, event.machine)
        first, marks = self._marks.get(key, (event, []))
        if event.phase in _FIRST and any(m[0] not in _FIRST for m in marks):
            first, marks = event, []  # a copy that ended untold; this is a new one
        marks.append((event.phase, event.time))
        self._marks[key] = (first, marks)

    def run(
        self,
        report: RunReport,
        *,
        asked: Iterable[str],
        speeds: Mapping[str, float],
        slots: Mapping[str, int],
        deps: Mapping[str, Iterable[str]],
        finished: float,
    ) -> tuple[RunRecord, list[BuildRecord]]:
        """The run's record and its builds', the copies still untold among them."""
        builds = list(self.builds)
        for first, marks in self._marks.values():
            # Stopped when another copy of it was built, else when the run ended.
            won = [
                b.finished
                for b in self.builds
                if b.drv_path == first.drv_path
                and b.status == "built"
                and b.finished >= marks[-1][1]
            ]
            end = min(won, default=finished)
            stopped = JobFinished(
                drv_path=first.drv_path,
                name=first.name,
                machine=first.machine,
                status="cancelled",
                started=marks[0][1],
                finished=end,
                bytes_sent=0,
                bytes_received=0,
                error="stopped: another copy was built first"
                if won
                else "stopped by the run's end",
                time=end,
            )
            builds.append(_record(stopped, marks, speculative=first.speculative))
        self._marks.clear()
        names = self.run_started.machines if self.run_started else tuple(speeds)
        machines = tuple(
            self._machine_record(m, speeds.get(m, 1.0), self.slots.get(m, slots.get(m, 1)))
            for m in names
        )
        ran = {b.drv_path for b in builds}
        kept = {d: tuple(x for x in deps.get(d, ()) if x in ran) for d in sorted(ran)}
        kept = {d: ds for d, ds in kept.items() if ds}
        run = RunRecord(
            run_id=report.run_id,
            started=self.started,
            finished=finished,
            asked=tuple(asked),
            outcome=outcome_of(report),
            machines=machines,
            estimate=self.run_started.estimate if self.run_started else None,
            lower_bound=lower_bound(builds, machines, kept),
            deps=kept,
        )
        return run, builds


def outcome_of(report: RunReport) -> str:
    if report.interrupted:
        return "interrupted"
    if report.failed:
        return "failed"
    return "incomplete" if report.skipped or report.stranded else "ok"


def _record(event: JobFinished, marks: list[Mark], *, speculative: bool) -> BuildRecord:
    phases = _phases(event, marks)
    span = building_span(phases)
    started, finished = span or (event.started, event.finished)
    if span is not None and event.build_seconds is not None:
        # The builder's own measure; the phase marks also hold the event loop's delays.
        started = finished - event.build_seconds
    return BuildRecord(
        run_id="",
        drv_path=event.drv_path,
        pname=split_name_version(event.name)[0],
        machine=event.machine,
        started=started,
        finished=finished,
        status=event.status,
        bytes_sent=event.bytes_sent,
        bytes_received=event.bytes_received,
        name=event.name,
        error=event.error,
        speculative=speculative,
        phases=phases,
    )


def _phases(event: JobFinished, marks: list[Mark]) -> tuple[PhaseRecord, ...]:
    if not marks:
        if event.status in {"fetched", "substituted"}:
            return (PhaseRecord("fetching", event.started, event.finished),)
        return ()
    # The copy starts a moment before its first mark: that moment is waiting too.
    points = [("queued", min(event.started, marks[0][1])), *marks[1:]]
    if marks[0][0] not in _FIRST:
        points = [("queued", points[0][1]), *marks]
    phases: list[PhaseRecord] = []
    for (raw, at), (_, until) in zip(points, [*points[1:], ("", event.finished)], strict=True):
        phase = _PHASE[raw]
        if phases and phases[-1].phase == phase:
            phases[-1] = PhaseRecord(phase, phases[-1].started, until)
        else:
            phases.append(PhaseRecord(phase, at, max(at, until)))
    return tuple(phases)


def lower_bound(
    builds: Iterable[BuildRecord],
    machines: Iterable[MachineRecord],
    deps: Mapping[str, Iterable[str]],
) -> float | None:
    """max(critical path / fastest, total work / capacity) over the run's successful builds
    and its usable machines; None when nothing was built or no machine had a slot."""
    usable = [m for m in machines if m.usable and m.slots > 0 and m.speed > 0]
    speeds = {m.name: m.speed for m in usable}
    work: dict[str, float] = {}
    for b in builds:
        if b.status == "built" and b.drv_path not in work:
            work[b.drv_path] = max(0.0, b.duration) * speeds.get(b.machine, 1.0)
    if not work or not usable:
        return None
    longest = longest_paths(work, deps)
    capacity = math.fsum(m.speed * m.slots for m in usable)
    return max(max(longest.values()) / max(speeds.values()), math.fsum(work.values()) / capacity)


def longest_paths(cost: Mapping[str, float], deps: Mapping[str, Iterable[str]]) -> dict[str, float]:
    """For each node of ``cost``, the costliest chain of dependencies ending with it (itself
    included); dependencies outside ``cost`` count nothing."""
    done: dict[str, float] = {}
    for root in cost:
        stack = [root]
        while stack:
            node = stack[-1]
            if node in done:
                stack.pop()
                continue
            pending = [d for d in deps.get(node, ()) if d in cost and d not in done]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            below = (done[d] for d in deps.get(node, ()) if d in cost)
            done[node] = cost[node] + max(below, default=0.0)
    return done
