"""The live view on a terminal: one line per machine and one for the whole run.

::

    fast    hello-2.12      building          3.1s / est 4.0s
            zlib-1.3        sending inputs    0.4s
    slow    down until 14:03:07 (retry in 41s): connection reset
    local   idle
    5/12 done · 1 failed · 1 skipped · 12.3s elapsed · ETA 25s

A machine running several jobs (it has several slots, or holds a speculative copy) gets one
line per job, the machine named on the first. The view is a ``rich.live.Live`` on the given
console, redrawn after every state event and by rich's own timer (so elapsed times move while
nothing happens); ``transient=False`` keeps its final state on screen. With ``print_logs`` each
build log line is printed above the live region through the Live's console, as
``name> line``, sanitised and cut to the terminal width so it never wraps into the region.

Rich's refresh thread reads the state while the run's thread changes it, so both hold
``self._lock``; the lock is never held while calling into rich, which takes its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import assert_never

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from offload.ui.events import (
    Event,
    JobFinished,
    JobLog,
    JobPhase,
    MachineEvent,
    Phase,
    RunFinished,
    RunStarted,
)
from offload.ui.plain import clock_time
from offload.ui.summary import render_summary
from offload.ui.term import PHASE_LABELS, format_duration, sanitize, truncate

__all__ = ["TtyRenderer", "remaining_time"]

# Statuses that settle a derivation for good; "lost" and "cancelled" jobs are retried or
# superseded by another copy, so they do not count as progress.
_SETTLED = frozenset({"built", "fetched", "substituted", "failed", "skipped"})


def remaining_time(estimate: float, elapsed: float, done: int, total: int) -> float | None:
    """Seconds the run still needs, or None when nothing sensible can be said.

    Two guesses, blended by how much is done: the plan (``estimate`` scaled to the share of the
    work left) and the pace so far (``elapsed`` per settled derivation). Early on the plan is
    all there is; near the end the observed pace knows better.
    """
    if total <= 0 or done >= total:
        return 0.0
    if done <= 0:
        left = estimate - elapsed
        return left if left > 0 else None
    share = done / total
    plan = max(estimate * (1 - share), 0.0)
    pace = elapsed / done * (total - done)
    return (1 - share) * plan + share * pace


def _cell(text: str, style: str = "") -> Text:
    """A cell that is cut with an ellipsis, never wrapped onto a second line."""
    return Text(text, style=style, no_wrap=True, overflow="ellipsis")


@dataclass
class _Job:
    name: str
    phase: Phase
    since: float  # when the current phase began
    estimate: float | None
    speculative: bool
    step: str | None = None  # the builder's own phase, where it reports one


class TtyRenderer:
    def __init__(
        self,
        console: Console,
        *,
        print_logs: bool,
        clock: Callable[[], float] = time.time,
        summary: bool = False,
        auto_refresh: bool = True,
        redirect_stderr: bool = False,
    ) -> None:
        self._console = console
        self._print_logs = print_logs
        self._clock = clock
        self._summary = summary
        self._lock = threading.Lock()
        self._start = clock()
        self._estimate = 0.0
        self._total = 0
        self._ready = 0  # settled before the run started (fetched, substituted): no work left
        self._machines: list[str] = []
        self._jobs: dict[tuple[str, str], _Job] = {}  # (drv_path, machine)
        self._down: dict[str, MachineEvent] = {}
        # Notes kept beside a builder: fewer slots for its load, slow to answer, or a key that
        # runs only serve.
        self._loaded: dict[str, MachineEvent] = {}
        self._settled: dict[str, str] = {}  # drv_path -> status
        self._finished: list[JobFinished] = []
        self._run_finished: RunFinished | None = None
        self._live = Live(
            console=console,
            get_renderable=self._render,
            transient=False,
            auto_refresh=auto_refresh,
            redirect_stdout=False,  # output paths go to stdout and must stay there
            redirect_stderr=redirect_stderr,
        )
        self._started = False
        self._closed = False

    def handle(self, event: Event) -> None:
        if self._closed:
            return
        if not self._started:
            self._started = True
            self._live.start()
        if isinstance(event, JobLog):
            if self._print_logs:
                self._print_log(event)
            return
        with self._lock:
            self._update(event)
        if isinstance(event, RunFinished):
            self.close()
        else:
            self._live.refresh()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._started:
            self._live.stop()
        if self._run_finished is not None and self._summary:
            self._console.print()
            with self._lock:
                finished = list(self._finished)
            render_summary(
                finished,
                self._console.file,
                rich=True,
                machines=self._machines,
                console=self._console,
            )

    def _print_log(self, event: JobLog) -> None:
        prefix = f"{event.name}> "
        line = truncate(prefix + sanitize(event.line), self._live.console.width)
        text = Text(line, no_wrap=True, overflow="ellipsis")
        text.stylize("bold blue", 0, min(len(prefix), len(line)))
        self._live.console.print(text, crop=True, soft_wrap=False)

    def _update(self, event: Event) -> None:
        match event:
            case RunStarted():
                self._start = event.time
                self._estimate = event.estimate
                # Fetched and substituted outputs are settled before the run starts and are
                # not in its total: shown as done, but left out of the ETA's pace.
                self._ready = len(self._settled)
                self._total = event.total + self._ready
                for machine in event.machines:
                    self._see(machine)
            case JobPhase():
                self._see(event.machine)
                key = (event.drv_path, event.machine)
                job = self._jobs.get(key)
                if job is None or job.phase != event.phase:
                    self._jobs[key] = _Job(
                        event.name, event.phase, event.time, event.estimate, event.speculative
                    )
                elif event.step is not None:
                    job.step = event.step
            case JobFinished():
                self._finished.append(event)
                self._jobs.pop((event.drv_path, event.machine), None)
                if event.status in _SETTLED:
                    self._settled[event.drv_path] = event.status
            case MachineEvent():
                self._see(event.machine)
                if event.state == "down":
                    self._down[event.machine] = event
                elif event.state in {"loaded", "slow", "restricted"}:
                    self._loaded[event.machine] = event
                else:
                    self._down.pop(event.machine, None)
                    if self._loaded.get(event.machine, event).state == "slow":
                        del self._loaded[event.machine]
            case RunFinished():
                self._run_finished = event
            case JobLog():
                pass
            case _:
                assert_never(event)

    def _see(self, machine: str) -> None:
        if machine and machine not in self._machines:
            self._machines.append(machine)

    def _render(self) -> RenderableType:
        now = self._clock()
        with self._lock:
            table = Table.grid(padding=(0, 2))
            # Only the derivation name gives way on a narrow terminal.
            names = max((len(m) for m in self._machines), default=0)
            table.add_column(style="bold", no_wrap=True, min_width=names)
            table.add_column(overflow="ellipsis")  # wrappable, so rich narrows it first
            table.add_column(no_wrap=True, min_width=len(PHASE_LABELS["fetching"]))
            table.add_column(no_wrap=True, justify="right")
            for machine in self._machines:
                self._machine_rows(table, machine, now)
            return Group(table, self._overall(now))

    def _machine_rows(self, table: Table, machine: str, now: float) -> None:
        jobs = [job for (_, m), job in self._jobs.items() if m == machine]
        down = self._down.get(machine)
        # A builder down again is shown as down; its load was read before.
        loaded = self._loaded.get(machine) if down is None else None
        if down is not None:
            what = f"down: {sanitize(down.message)}" if down.message else "down"
            until = f"until {clock_time(down.until)}" if down.until is not None else ""
            retry = f"retry in {format_duration(down.until - now)}" if down.until else ""
            table.add_row(machine, _cell(what, "red"), until, retry)
            machine = ""
        if loaded is not None:
            what = "slow to answer" if loaded.state == "slow" else loaded.state
            table.add_row(machine, _cell(f"{what}: {sanitize(loaded.message)}", "yellow"), "", "")
            machine = ""
        if not jobs and down is None:
            table.add_row(machine, _cell("idle", "dim"), "", "")
        for job in jobs:
            name = _cell(job.name)
            if job.speculative:
                name.append(" (copy)", style="magenta")
            table.add_row(machine, name, self._phase(job), self._elapsed(job, now))
            machine = ""

    @staticmethod
    def _phase(job: _Job) -> Text:
        styles = {"queued": "dim", "building": "yellow"}
        text = Text(PHASE_LABELS[job.phase], style=styles.get(job.phase, "cyan"))
        if job.step is not None:
            text.append(f" {sanitize(job.step)}", style="dim")
        return text

    @staticmethod
    def _elapsed(job: _Job, now: float) -> Text:
        spent = now - job.since
        text = Text(format_duration(spent))
        if job.phase == "building" and job.estimate is not None:
            text.append(f" / est {format_duration(job.estimate)}", style="dim")
            if spent > job.estimate * 1.5 + 5:
                text.stylize("red", 0, len(format_duration(spent)))
        return text

    def _overall(self, now: float) -> Text:
        finished = self._run_finished
        statuses = list(self._settled.values())
        failed = statuses.count("failed")
        skipped = statuses.count("skipped")
        done = len(statuses)
        parts = [f"{done}/{self._total} done"]
        if failed:
            parts.append(f"{failed} failed")
        if skipped:
            parts.append(f"{skipped} skipped")
        if finished is not None:
            parts.append(f"finished in {format_duration(finished.elapsed)}")
        else:
            elapsed = now - self._start
            ready = self._ready
            left = remaining_time(self._estimate, elapsed, done - ready, self._total - ready)
            parts.append(f"{format_duration(elapsed)} elapsed")
            parts.append(f"ETA {format_duration(left)}" if left is not None else "ETA ?")
        style = "bold red" if failed else "bold"
        return Text(" · ".join(parts), style=style)
