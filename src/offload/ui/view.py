"""The live view's model and its frame: what the run looks like now, per machine.

::

    fast   speed 4 · 2/2 slots
             hello-2.12   building          3.1s / est 4.0s            checking for gcc...
             big-3 (copy) building         20.0s / est 10.0s overdue   [ 52%] compiling...
    slow   speed 1 · 2 slots · down: connection reset  until 14:03:07  retry in 41.0s
    local  speed 1 · 0/4 slots · idle
    5/12 done · 1 failed · 1 skipped · 12.3s elapsed · ETA 25.0s

Each machine has a header line (its speed factor, slots in use out of its slots, and what is
wrong with it: down, loaded, slow to answer, restricted), then one row per job on it: phase,
time in that phase (against the estimate while building, ``overdue`` past it) and the newest
line of its build log. The last line counts the run; its ETA is ``ui.eta``'s. When the run is
over the frame is its truth: no job rows (nothing runs any more), what each machine built, and
"finished in" or "interrupted after". ``View`` is fed events under the renderer's lock and
drawn by ``frame``; it never writes anything itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import assert_never

from rich.cells import cell_len
from rich.console import Group, RenderableType
from rich.text import Text

from offload.ui.eta import Eta
from offload.ui.events import (
    Event,
    JobFinished,
    JobLog,
    JobPhase,
    MachineEvent,
    Phase,
    ReportWritten,
    RunFinished,
    RunStarted,
    Timing,
)
from offload.ui.plain import clock_time
from offload.ui.term import PHASE_LABELS, format_duration, sanitize, truncate

__all__ = ["View"]

# Statuses that settle a derivation for good; "lost" and "cancelled" jobs are retried or
# superseded by another copy, so they do not count as progress.
_SETTLED = frozenset({"built", "fetched", "substituted", "failed", "skipped"})
# The phases of a job that holds one of its machine's slots: one queued waits for a slot, and
# its outputs are fetched after its slot is let go, while the next build takes it ("3/2 slots").
_IN_SLOT = frozenset({"connecting", "sending", "building"})
# Endings the plan could not foresee: the next plan is taken whole (ui.eta).
_NEWS = frozenset({"failed", "lost", "cancelled"})


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
    last_line: str = ""
    step: str | None = None  # the builder's own phase (buildPhase...), where it reports one

    def overdue(self, now: float) -> bool:
        return (
            self.phase == "building"
            and self.estimate is not None
            and now - self.since > self.estimate
        )


@dataclass
class _Machine:
    speed: float | None = None
    slots: int | None = None
    built: int = 0
    down: MachineEvent | None = None
    # A note beside a builder: fewer slots for its load, slow to answer, or a key that runs
    # only serve.
    note: MachineEvent | None = None


class View:
    def __init__(self, start: float) -> None:
        self.start = start
        self.total = 0
        self.started = False  # RunStarted seen
        self.ready = 0  # settled before the run started (fetched, substituted)
        self.machines: dict[str, _Machine] = {}
        self.jobs: dict[tuple[str, str], _Job] = {}  # (drv_path, machine)
        self.settled: dict[str, str] = {}  # drv_path -> status
        self.finished: list[JobFinished] = []
        self.run_finished: RunFinished | None = None
        self.eta = Eta()

    @property
    def idle_run(self) -> bool:
        """Nothing to build and nothing happening: the view stays quiet."""
        return self.started and self.total == 0 and not self.jobs

    def update(self, event: Event) -> None:
        match event:
            case RunStarted():
                self._run_started(event)
            case JobPhase():
                self._phase(event)
            case JobLog():
                job = self.jobs.get((event.drv_path, event.machine))
                if job is not None:
                    job.last_line = sanitize(event.line) or job.last_line
            case JobFinished():
                self._job_finished(event)
            case MachineEvent():
                self._machine_event(event)
            case RunFinished():
                self.run_finished = event
                self.jobs.clear()  # whatever still ran was stopped with the run
            case Timing():
                pass  # for programs measuring a run (--json), not for people
            case ReportWritten():
                pass  # people are told on a line of its own (cli.build_exec)
            case _:
                assert_never(event)

    def _run_started(self, event: RunStarted) -> None:
        self.started = True
        self.start = event.time
        # Fetched and substituted outputs are settled before the run starts and are not in
        # its total: shown as done (``offload build`` tells them just after this event, with
        # their number in it; events told before it are counted too).
        self.ready = max(event.ready, len(self.settled))
        self.total = event.total + self.ready
        for i, name in enumerate(event.machines):
            machine = self._see(name)
            if i < len(event.speeds):
                machine.speed = event.speeds[i]
            if i < len(event.slots) and machine.slots is None:
                machine.slots = event.slots[i]
        self.eta.start(event.time, event.estimate)

    def _phase(self, event: JobPhase) -> None:
        self._see(event.machine)
        key = (event.drv_path, event.machine)
        job = self.jobs.get(key)
        if job is None or job.phase != event.phase:
            line = job.last_line if job is not None else ""
            self.jobs[key] = _Job(
                event.name, event.phase, event.time, event.estimate, event.speculative, line
            )
        elif event.step is not None:
            job.step = sanitize(event.step)
        if event.remaining is not None:
            self.eta.plan(event.time, event.remaining, overdue=self.overdue(event.time))

    def _job_finished(self, event: JobFinished) -> None:
        self.finished.append(event)
        self.jobs.pop((event.drv_path, event.machine), None)
        # A copy stopped once another built its derivation changes no plan: that one did.
        news = event.status in _NEWS and event.drv_path not in self.settled
        if event.status in _SETTLED:
            self.settled[event.drv_path] = event.status
            # Other copies of a settled job are stopped: their rows go with it.
            for key in [k for k in self.jobs if k[0] == event.drv_path]:
                del self.jobs[key]
        if event.status == "built" and event.machine:
            self._see(event.machine).built += 1
        if news:
            self.eta.news()
        if event.remaining is not None:
            self.eta.plan(event.time, event.remaining, overdue=self.overdue(event.time))

    def _machine_event(self, event: MachineEvent) -> None:
        if event.state in {"cache", "key"}:  # a line of its own (``tty``): no machine change
            self.eta.news()
            return
        machine = self._see(event.machine)
        self.eta.news()
        if event.state == "unstopped":  # a line of its own (``tty``), no state of the machine's
            return
        if event.state == "down":
            machine.down = event
        elif event.state in {"loaded", "slow", "restricted", "full"}:
            machine.note = event
            if event.slots is not None:
                machine.slots = event.slots
        else:
            machine.down = None
            if machine.note is not None and machine.note.state in {"slow", "full"}:
                machine.note = None

    def _see(self, name: str) -> _Machine:
        if not name:
            return _Machine()  # skipped jobs have no machine
        return self.machines.setdefault(name, _Machine())

    def overdue(self, now: float) -> float | None:
        """When the first running build went past its estimate; None if none has."""
        return min(
            (job.since + (job.estimate or 0.0) for job in self.jobs.values() if job.overdue(now)),
            default=None,
        )

    # -- the frame ---------------------------------------------------------------------------

    def frame(self, now: float, width: int, height: int | None = None) -> RenderableType:
        """The view at ``now`` for a terminal ``width`` cells wide; no line is longer. With
        ``height`` (its lines), the job rows are cut to fit, each machine's last shown row
        saying how many more it runs: every header and the progress line stay (rich ends a
        taller frame in "...", where those were lost)."""
        # Job rows sit under the longest name, but a quarter of the width at most: a cloud
        # host's name (ip-10-0-12-34.eu-west-1.compute.internal) left no room for the rows.
        longest = max((cell_len(m) for m in self.machines), default=0)
        indent = min(longest, max(width // 4, 6)) + 2
        headers: list[tuple[str, Text]] = []
        rows: list[list[Text]] = []
        for name, machine in self.machines.items():
            headers.append((name, self._header(name, machine, now)))
            rows.extend(self._job_cells(name, now))
        widths = _widths(rows, width - indent)
        lines: list[Text] = []
        row = iter(rows)
        # Rows there is room for: the terminal's lines less the headers, the progress line
        # and the one the cursor rests on.
        room = len(rows) if height is None else max(height - len(headers) - 2, 0)
        for name, header in headers:
            cut = truncate(name, indent - 2)
            # Padded by cells, not characters: a name of wide characters ("ビルド機") put
            # its header four cells further right than the others'.
            line = Text(cut + " " * (indent - cell_len(cut)), style="bold")
            line.append_text(header)
            lines.append(line)
            count = sum(1 for (_, m) in self.jobs if m == name)
            shown = count if count <= room else max(room - 1, 0)
            lines.extend(_join(next(row), widths, indent) for _ in range(shown))
            for _ in range(count - shown):
                next(row)
            if shown < count and room > 0:
                lines.append(Text(" " * indent + f"+{count - shown} more", style="dim"))
            room -= min(count, room)
        lines.append(self._overall(now))
        for line in lines:
            line.truncate(width, overflow="ellipsis")
            line.no_wrap = True
        return Group(*lines)

    def _header(self, name: str, machine: _Machine, now: float) -> Text:
        over = self.run_finished is not None
        busy = sum(1 for (_, m), job in self.jobs.items() if m == name and job.phase in _IN_SLOT)
        about = []
        if machine.speed is not None:
            about.append(f"speed {machine.speed:g}")
        if machine.slots is not None:
            slots = "slot" if machine.slots == 1 and over else "slots"  # "0/1 slots" in use
            about.append(f"{machine.slots} {slots}" if over else f"{busy}/{machine.slots} {slots}")
        if over:
            about.append(f"built {machine.built}")
        text = Text(" · ".join(about))
        if machine.down is not None:
            down = machine.down
            text.append(" · down", style="red")
            if down.message:
                text.append(f": {sanitize(down.message)}", style="red")
            if down.until is not None and not over:
                retry = format_duration(down.until - now)
                text.append(f" · until {clock_time(down.until)} (retry in {retry})", style="red")
        elif machine.note is not None:
            what = "slow to answer" if machine.note.state == "slow" else machine.note.state
            text.append(f" · {what}: {sanitize(machine.note.message)}", style="yellow")
        elif not busy and not over:
            text.append(" · idle", style="dim")
        return text

    def _job_cells(self, name: str, now: float) -> list[list[Text]]:
        rows = []
        for (_, machine), job in self.jobs.items():
            if machine != name:
                continue
            label = Text(job.name)
            if job.speculative:
                label.append(" (copy)", style="magenta")
            phase = Text(PHASE_LABELS[job.phase], style=_PHASE_STYLES.get(job.phase, "cyan"))
            if job.step is not None:
                phase.append(f" {job.step}", style="dim")
            rows.append([label, phase, _elapsed(job, now), Text(job.last_line, style="dim")])
        return rows

    def _overall(self, now: float) -> Text:
        statuses = list(self.settled.values())
        failed, skipped = statuses.count("failed"), statuses.count("skipped")
        parts = [f"{len(statuses)}/{self.total} done"]
        if failed:
            parts.append(f"{failed} failed")
        if skipped:
            parts.append(f"{skipped} skipped")
        finished = self.run_finished
        if finished is not None and finished.interrupted:
            parts.append(f"{finished.ending} after {format_duration(finished.elapsed)}")
        elif finished is not None:
            parts.append(f"finished in {format_duration(finished.elapsed)}")
        else:
            parts.append(f"{format_duration(now - self.start)} elapsed")
            left = self.eta.left(now, overdue=self.overdue(now))
            if left is None:
                parts.append("ETA ?")
            else:
                parts.append(f"ETA {format_duration(left)}" if left > 0 else "ETA due")
        stopped = finished is not None and finished.interrupted
        return Text(" · ".join(parts), style="bold red" if failed or stopped else "bold")


_PHASE_STYLES = {"queued": "dim", "building": "yellow"}
_GAP = 2  # cells between columns
_NAME = (12, 32)  # a derivation name gets at least / at most this many cells
_LOG = 10  # a log column narrower than this is left out


def _widths(rows: list[list[Text]], room: int) -> list[int]:
    """Column widths for the job rows in ``room`` cells: phase and time keep theirs; the name
    gives way down to its least, then the log line takes what is left (or is left out)."""
    natural = [max((cell_len(r[i].plain) for r in rows), default=0) for i in range(4)]
    natural[1] = max(cell_len(label) for label in PHASE_LABELS.values())  # a steady layout
    fixed = natural[1] + natural[2] + 2 * _GAP
    name = max(min(natural[0], _NAME[1], room - fixed), min(natural[0], _NAME[0]))
    log = room - fixed - name - _GAP
    return [name, natural[1], natural[2], log if log >= _LOG else 0]


def _join(cells: list[Text], widths: list[int], indent: int) -> Text:
    line = Text(" " * indent)
    for i, (cell, width) in enumerate(zip(cells, widths, strict=True)):
        if width <= 0:
            continue
        fitted = cell.copy()
        fitted.truncate(width, overflow="ellipsis", pad=i < len(cells) - 1)
        line.append_text(fitted)
        if i < len(cells) - 1:
            line.append(" " * _GAP)
    line.rstrip()
    return line


def _elapsed(job: _Job, now: float) -> Text:
    spent = format_duration(now - job.since)
    text = Text(spent)
    if job.phase == "building" and job.estimate is not None:
        text.append(f" / est {format_duration(job.estimate)}", style="dim")
        if job.overdue(now):
            text.stylize("bold red", 0, len(spent))
            text.append(" overdue", style="bold red")
    return text
