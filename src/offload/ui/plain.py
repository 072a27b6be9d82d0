"""Plain lines for logs that are not terminals (CI, files, pipes): one line per state change.

Every line starts with the seconds since the run started, then the machine; a build starting
is said in nix-build's words, and build log lines (only with ``print_logs``) are nix-build's
lines prefixed with the machine and the derivation's name::

    [  0.0s] run: 12 to build on fast, slow, local (estimate 41.0s)
    [ 12.3s] fast: building '/nix/store/0a0a...-hello-2.12.drv'... (est 4.0s)
    fast: hello-2.12> checking for gcc...
    [ 15.1s] fast: built hello-2.12 in 2.8s
    [ 16.0s] slow: down until 14:03:07 (retry in 60s): connection reset
    [ 41.2s] run: finished: 12 built, 0 failed, 0 skipped in 41.2s

A run with nothing to build says nothing; one stopped early says "interrupted", not "finished".

The time base is the run's ``RunStarted`` time, or the injected clock's reading when the
renderer was made if lines were written before it: then it stays. What happened before the
run started but is told after it (``offload build`` tells its run's first event first: a
builder slow to answer, an output substituted while the graph was read) is at 0.0s, so the
times never go back. No escape codes are written: every text that came from elsewhere (build
log lines, only with ``print_logs``; a builder's words in a machine event's message; a build's
error) goes through ``term.sanitize``, the one rule every renderer uses. With ``summary=True``
the summary table follows ``RunFinished``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO, assert_never

from offload.ui.events import (
    Event,
    JobFinished,
    JobLog,
    JobPhase,
    MachineEvent,
    ReportWritten,
    RunFinished,
    RunStarted,
    Timing,
)
from offload.ui.summary import on_builder, render_summary
from offload.ui.term import PHASE_LABELS, format_duration, sanitize

__all__ = [
    "PlainRenderer",
    "cache_left_out",
    "cache_left_out_why",
    "clock_time",
    "describe_finished",
    "describe_machine",
    "machine_warning",
]


# What a binary cache left out costs the run, and where it is set: the same for every cache.
_CACHE_HINT = (
    "what it has is built instead, or taken from another cache "
    "(check the substituters setting, or --option substituters)"
)
# Waiting and copying shorter than this is not worth a mention beside a build's time.
_ASIDE = 0.5


def clock_time(when: float) -> str:
    """Local wall-clock time of day, ``HH:MM:SS``."""
    return time.strftime("%H:%M:%S", time.localtime(when))


def describe_finished(event: JobFinished) -> str:
    """What happened to a job, in words, without the machine."""
    took = format_duration(event.duration)
    match event.status:
        case "built" if event.build_seconds is not None:
            # The build itself, as nix-build's times are; waiting for a slot and copying aside.
            text = f"built {event.name} in {format_duration(event.build_seconds)}"
            if event.duration - event.build_seconds >= _ASIDE:
                text += f" ({took} with waiting and copies)"
            return text
        case "built":
            return f"built {event.name} in {took}"
        case "fetched":
            return f"fetched {event.name} (already built there) in {took}"
        case "substituted":
            return f"substituted {event.name} from a binary cache in {took}"
        case "failed" if not event.machine:  # no machine can build it: it never started
            return f"failed {event.name}: {_first_line(event.error)}"
        case "failed":
            return f"failed {event.name} after {took}: {_first_line(event.error)}"
        case "cancelled":
            reason = f": {_first_line(event.error)}" if event.error else ""
            return f"stopped {event.name} after {took}{reason}"
        case "lost":
            return f"lost {event.name} after {took}: {_first_line(event.error)}"
        case "skipped":
            return f"skipped {event.name}: {_first_line(event.error)}"
        case _:
            assert_never(event.status)


def describe_machine(event: MachineEvent, now: float) -> str:
    match event.state:
        case "up":
            text = "up"
        case "loaded" | "restricted" | "full":
            text = event.state
        case "unstopped":
            text = "not stopped"
        case "cache":
            cache = sanitize(event.cache or "")
            return f"binary cache {cache!r} left out: {cache_left_out_why(event)}"
        case "key":
            return sanitize(event.message)
        case "slow":
            text = "slow to answer"
        case "down":
            text = "down"
            if event.until is not None:
                retry = format_duration(event.until - now)
                text += f" until {clock_time(event.until)} (retry in {retry})"
        case _:
            assert_never(event.state)
    # The message may carry a builder's bytes (ssh's error, its Nix's words): shown as others.
    return f"{text}: {sanitize(event.message)}" if event.message else text


def machine_warning(event: MachineEvent) -> str | None:
    """The ``warning:`` line on stderr for a machine event that must be seen whatever shows
    the run (``--json`` on stdout, the live view): a builder down, slow to answer or full of
    other clients' builds, a build there that could not be stopped, a binary cache its Nix left
    out, its key file missing; None for the others."""
    match event.state:
        case "down" | "slow" | "full":
            what = {"down": "is down", "slow": "is slow to answer", "full": "is full"}[event.state]
            return f"warning: builder {event.machine!r} {what}: {sanitize(event.message)}"
        case "unstopped":  # the message names the builder and the process
            return f"warning: {sanitize(event.message)}"
        case "cache":
            return f"warning: {cache_left_out(event)}"
        case "key":
            return f"warning: builder {event.machine!r}: {sanitize(event.message)}"
        case _:
            return None


def cache_left_out(event: MachineEvent) -> str:
    """A "cache" event in a line: the cache, the machine when not this one, why, and so what."""
    cache, where = sanitize(event.cache or ""), on_builder(event.machine)
    return f"binary cache {cache!r}{where} is left out: {cache_left_out_why(event)}"


def cache_left_out_why(event: MachineEvent) -> str:
    """A "cache" event's why (its message), what the run does instead and the fix."""
    return f"{sanitize(event.message)}; {_CACHE_HINT}"


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return sanitize(lines[0]) if lines else "no error message"


class PlainRenderer:
    def __init__(
        self,
        stream: TextIO,
        *,
        print_logs: bool,
        clock: Callable[[], float] = time.time,
        summary: bool = False,
        progress: bool = True,  # offload's own lines (run, phases, machines): not with --quiet
    ) -> None:
        self._stream = stream
        self._progress = progress
        self._print_logs = print_logs
        self._summary = summary
        self._start = clock()
        self._finished: list[JobFinished] = []
        self._machines: tuple[str, ...] = ()
        self._quiet = False  # nothing to build: no run lines
        self._written = False  # a line with a time was written
        self._total = 0  # derivations the run was to build
        self._opened = False  # its RunStarted came
        self._held: list[MachineEvent] = []  # machines down before it

    def handle(self, event: Event) -> None:
        match event:
            case RunStarted():
                self._run_started(event)
            case JobPhase():
                label = PHASE_LABELS[event.phase]
                text = f"{label} {event.name}"
                if event.phase == "building" and event.step is None:
                    text = f"building '{event.drv_path}'..."
                extra = [sanitize(event.step)] if event.step is not None else []
                if event.phase == "building" and event.estimate is not None and not event.step:
                    extra.append(f"est {format_duration(event.estimate)}")
                if event.speculative:
                    extra.append("speculative copy")
                self._line(event.time, event.machine, text, ", ".join(extra))
            case JobLog():
                if not self._print_logs:
                    return  # nothing written: nothing to flush (a log may be 100,000s of lines)
                self._write(f"{event.machine}: {event.name}> {sanitize(event.line)}")
            case JobFinished():
                self._finished.append(event)
                self._line(event.time, event.machine or "run", describe_finished(event))
            case MachineEvent():
                if event.state == "down" and not self._opened:
                    # Said once the run opens; a run that never does ends on one error line
                    # that names them.
                    self._held.append(event)
                    self._written = True  # its time base is the renderer's, as if said now
                    return
                if event.state == "key":  # a warning: line, as everywhere (no summary has it)
                    self._write(str(machine_warning(event)))
                    return
                self._line(event.time, event.machine, describe_machine(event, event.time))
            case RunFinished():
                if self._quiet and not self._finished:
                    return
                what = event.ending
                # Stopped, or never started after a failure without --keep-going.
                left = self._total - event.built - event.failed - event.skipped
                text = (
                    f"{what}: {event.built} built, {event.failed} failed, "
                    f"{event.skipped} skipped{f', {left} left' if left > 0 else ''}"
                    f" in {format_duration(event.elapsed)}"
                )
                self._line(event.time, "run", text)
                if self._summary:
                    self._stream.write("\n")
                    render_summary(
                        self._finished, self._stream, rich=False, machines=self._machines
                    )
            case Timing():
                pass  # for programs measuring a run (--json), not for people
            case ReportWritten():
                pass  # people are told on a line of its own (cli.build_exec)
            case _:
                assert_never(event)
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()

    def _run_started(self, event: RunStarted) -> None:
        self._opened = True
        for held in self._held:
            self._line(held.time, held.machine, describe_machine(held, held.time))
        self._held.clear()
        if not self._written:
            self._start = event.time
        self._machines = event.machines
        self._total = event.total
        self._quiet = event.total == 0
        if self._quiet:
            return
        machines = ", ".join(event.machines) or "no machines"
        estimate = f"estimate {format_duration(event.estimate)}"
        self._line(event.time, "run", f"{event.total} to build on {machines}", estimate)

    def _line(self, when: float, who: str, text: str, extra: str = "") -> None:
        if not self._progress:
            return
        suffix = f" ({extra})" if extra else ""
        self._written = True
        self._write(f"[{max(when - self._start, 0.0):5.1f}s] {who}: {text}{suffix}")

    def _write(self, line: str) -> None:
        self._stream.write(line + "\n")
