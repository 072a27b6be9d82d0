"""The summary at the end of a run, computed from its ``JobFinished`` events.

Per machine: derivations built, outputs fetched (already valid there), failures, jobs stopped
(speculative copies that lost, builds lost with their machine, copies that gave way when the
holder of their inputs went away), busy time and bytes moved; and
only when the local store took some from its binary caches, a ``substituted`` column (their
bytes came from the cache, not through offload, so they are not counted).
Busy time is the sum of job durations on the machine, stopped and failed jobs included since
they occupied it, each less the time it waited for a slot (which other clients may hold for
long) and a session there (``JobFinished.waited``, as history counts it), so a copy moved off
a full builder before it started there counts none; with several slots it can exceed the
run's wall time. Bytes count every job
too. Then the failed and skipped derivations with their errors (one no machine can build, on no
machine: no row of its own), how to see a log when one was built somewhere, and the
machines left out of the run, backed off during it (their last ``down`` event) or that never
answered, with why; those whose every slot other clients held; those whose load cut their
slots (their deepest cut, and where the last report left them when that differs); and the
binary caches a machine's Nix left out, with why (the run built what they would have given).

``summarize`` is pure; ``render_summary`` writes it as a rich table or as plain aligned text.
"""

from __future__ import annotations

import dataclasses
import shlex
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from offload.names import LOCAL
from offload.ui.events import (
    ANSWERED_PHASES,
    Event,
    JobFinished,
    JobPhase,
    MachineEvent,
    RunFinished,
    RunStarted,
)
from offload.ui.term import format_bytes, format_duration, sanitize

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["MachineTotals", "RunSummary", "on_builder", "render_summary", "summarize"]

_COLUMNS = ("machine", "built", "fetched", "failed", "stopped", "busy", "sent", "received")
_SUBSTITUTED = 3  # where the optional column goes: after "fetched"
_TITLES = {
    "down": "machines down",
    "slow": "machines slow to answer",
    "full": "machines full",
    "loaded": "machines loaded",
    "caches": "binary caches left out",
}
# Said once under the binary caches left out (the last of the problems), not on each.
_CACHES_NOTE = (
    "what they have is built instead, or taken from other caches "
    "(check the substituters setting, or --option substituters)"
)


def _ran(job: JobFinished) -> bool:
    """Whether the copy did more there than wait for a slot and a session."""
    return job.duration > job.waited


@dataclass(frozen=True)
class MachineTotals:
    machine: str
    built: int = 0
    fetched: int = 0
    substituted: int = 0
    failed: int = 0
    # Cancelled or given-way copies, and builds lost with their machine, that ran there: not
    # one that only waited for a slot (moved off a full builder before it started).
    stopped: int = 0
    busy: float = 0.0  # seconds, summed over jobs
    sent: int = 0
    received: int = 0

    def add(self, job: JobFinished) -> MachineTotals:
        return dataclasses.replace(
            self,
            built=self.built + (job.status == "built"),
            fetched=self.fetched + (job.status == "fetched"),
            substituted=self.substituted + (job.status == "substituted"),
            failed=self.failed + (job.status == "failed"),
            stopped=self.stopped + (job.status in ("cancelled", "lost") and _ran(job)),
            busy=self.busy + max(job.duration - job.waited, 0.0),
            sent=self.sent + job.bytes_sent,
            received=self.received + job.bytes_received,
        )

    def cells(self, *, substituted: bool = False) -> tuple[str, ...]:
        cells = (
            self.machine,
            str(self.built),
            str(self.fetched),
            str(self.failed),
            str(self.stopped),
            format_duration(self.busy),
            format_bytes(self.sent),
            format_bytes(self.received),
        )
        if not substituted:
            return cells
        return (*cells[:_SUBSTITUTED], str(self.substituted), *cells[_SUBSTITUTED:])


@dataclass(frozen=True)
class RunSummary:
    machines: tuple[MachineTotals, ...]
    total: MachineTotals
    failed: tuple[JobFinished, ...]
    skipped: tuple[JobFinished, ...]
    finished: RunFinished | None
    # Each machine's last "down" event, or its "slow" one: said even when it came back.
    down: tuple[MachineEvent, ...] = ()
    # Machines whose every slot other clients held at some time in the run (their last word).
    full: tuple[MachineEvent, ...] = ()
    # Machines whose load cut their slots: (the deepest cut, the last report), each.
    loaded: tuple[tuple[MachineEvent, MachineEvent], ...] = ()
    # Binary caches a machine's Nix left out (a "cache" event each: cache and machine).
    caches: tuple[MachineEvent, ...] = ()
    jobs: int = 0  # derivations the run ended (built, fetched, failed, skipped...)
    # The run's build logs outlive it (not when its state directory was a temporary one).
    logs_kept: bool = True
    # When each machine of ``down`` came back up (answered, or tried again), if it did.
    back: Mapping[str, float] = dataclasses.field(default_factory=dict)

    @property
    def columns(self) -> tuple[str, ...]:
        if not self.total.substituted:
            return _COLUMNS
        return (*_COLUMNS[:_SUBSTITUTED], "substituted", *_COLUMNS[_SUBSTITUTED:])

    def rows(self) -> list[tuple[str, ...]]:
        """The cells of each machine's row, then of the total row, matching ``columns``."""
        wide = bool(self.total.substituted)
        return [r.cells(substituted=wide) for r in (*self.machines, self.total)]


def summarize(events: Iterable[Event], machines: Sequence[str] = ()) -> RunSummary:
    """Totals per machine, in ``machines`` order (or ``RunStarted``'s), then others as seen."""
    order: list[str] = list(machines)
    per: dict[str, MachineTotals] = {m: MachineTotals(m) for m in order}
    failed: dict[str, JobFinished] = {}
    skipped: dict[str, JobFinished] = {}
    finished: RunFinished | None = None
    jobs = 0
    news = _MachineNews()
    for event in events:
        if isinstance(event, MachineEvent):
            news.see(event)
        elif isinstance(event, JobPhase) and event.phase in ANSWERED_PHASES:
            news.answered.add(event.machine)
        elif isinstance(event, RunStarted):
            for m in event.machines:
                if m not in per:
                    order.append(m)
                    per[m] = MachineTotals(m)
        elif isinstance(event, RunFinished):
            finished = event
        elif isinstance(event, JobFinished):
            jobs += 1
            if event.status == "skipped":
                skipped[event.drv_path] = event
                continue
            if event.status == "failed":
                failed[event.drv_path] = event
            if not event.machine:  # failed before any machine had it: no machine can build it
                continue
            if event.machine not in per:
                order.append(event.machine)
                per[event.machine] = MachineTotals(event.machine)
            per[event.machine] = per[event.machine].add(event)
    rows = tuple(per[m] for m in order)
    total = MachineTotals(
        "total",
        built=sum(r.built for r in rows),
        fetched=sum(r.fetched for r in rows),
        substituted=sum(r.substituted for r in rows),
        failed=sum(r.failed for r in rows),
        stopped=sum(r.stopped for r in rows),
        busy=sum(r.busy for r in rows),
        sent=sum(r.sent for r in rows),
        received=sum(r.received for r in rows),
    )
    return RunSummary(
        rows,
        total,
        tuple(failed.values()),
        tuple(skipped.values()),
        finished,
        tuple(news.down.values()),
        tuple(news.full.values()),
        tuple((deepest, news.last_load[name]) for name, deepest in news.deepest.items()),
        tuple(news.caches.values()),
        jobs,
        back=dict(news.back),
    )


class _MachineNews:
    """What the run's machine events leave for the summary, per machine."""

    def __init__(self) -> None:
        self.down: dict[str, MachineEvent] = {}
        self.full: dict[str, MachineEvent] = {}
        self.deepest: dict[str, MachineEvent] = {}
        self.last_load: dict[str, MachineEvent] = {}
        self.caches: dict[tuple[str, str | None], MachineEvent] = {}
        self.back: dict[str, float] = {}
        # Machines that answered: a copy sent or built there, or up after a fault.
        self.answered: set[str] = set()

    def see(self, event: MachineEvent) -> None:
        name = event.machine
        if event.state == "slow" and name in self.answered:
            return  # slow to stop its builds as the run ends (``stopping``): it was never down
        if event.state == "up":
            self.answered.add(name)
        if event.state == "full":
            self.full[name] = event
        elif event.state == "cache":
            self.caches.setdefault((name, event.cache), event)
        elif event.state in ("down", "slow"):
            self.down[name] = event
            self.back.pop(name, None)
        elif event.state == "up" and name in self.down:
            # A fault the run got over is still one the user should hear of (a builder slow
            # to answer, one backed off and tried again): kept, with when it ended.
            self.back[name] = event.time
        elif event.state == "loaded" and event.slots is not None:
            self.last_load[name] = event
            deepest = self.deepest.get(name)
            if deepest is None or (deepest.slots or 0) > event.slots:
                self.deepest[name] = event


def render_summary(
    events: Iterable[Event],
    stream: IO[str],
    *,
    rich: bool | None = None,
    machines: Sequence[str] = (),
    width: int | None = None,
    console: Console | None = None,
    logs_kept: bool = True,
) -> RunSummary:
    """Write the summary of ``events`` (any events; only the relevant ones are read).

    With ``rich`` the table goes to ``console`` when given (the live view's, so colours and
    width match), else to a console made on ``stream``; ``rich=None`` means rich exactly when
    ``stream`` is a terminal.
    """
    summary = dataclasses.replace(summarize(events, machines), logs_kept=logs_kept)
    if rich is None:
        rich = console is not None or _isatty(stream)
    if rich:
        # rich is imported only for a table: a run with --json or into a file never needs it.
        from rich.console import Console

        _render_rich(summary, console or Console(file=stream, width=width, highlight=False))
    else:
        _render_plain(summary, stream)
    stream.flush()
    return summary


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _problems(summary: RunSummary) -> list[tuple[str, str]]:
    """(heading, line) pairs for failed and skipped derivations."""
    out = [("failed", _failed(job)) for job in summary.failed]
    out += [("skipped", f"{job.name}: {_error(job)}") for job in summary.skipped]
    downs = [_down(event, summary.back.get(event.machine)) for event in summary.down]
    out += sorted(downs, key=lambda said: said[0] == "slow")  # each heading once: down first
    out += [("full", f"{event.machine}: {sanitize(event.message)}") for event in summary.full]
    out += [("loaded", _cut(deepest, last)) for deepest, last in summary.loaded]
    out += [("caches", _cache(event)) for event in summary.caches]
    return out


def _failed(job: JobFinished) -> str:
    """The failure, with its .drv path (for `offload log`) unless its error says it already,
    as Nix's "builder for '/nix/store/...drv' failed" does."""
    error = _error(job)
    where = "" if job.drv_path in error else f"  ({job.drv_path})"
    return f"{job.name}{_on(job)}: {error}{where}"


def _cache(event: MachineEvent) -> str:
    return f"{sanitize(event.cache or '')}{on_builder(event.machine)}: {sanitize(event.message)}"


def on_builder(machine: str) -> str:
    """`` (on MACHINE)`` after what a builder's Nix left out (a binary cache), said the same
    in the summary and the plain lines (``plain.cache_left_out``); nothing for this machine's
    own, which needs no saying."""
    return "" if machine == LOCAL else f" (on {machine})"


def _on(job: JobFinished) -> str:
    return f" on {job.machine}" if job.machine else ""


def _logged(summary: RunSummary) -> bool:
    """Whether a failed derivation was built somewhere, so that it has a log to see."""
    return summary.logs_kept and any(job.machine for job in summary.failed)


def _cut(deepest: MachineEvent, last: MachineEvent) -> str:
    line = f"{deepest.machine}: {sanitize(deepest.message)}"
    return line if last is deepest else f"{line}; at the last report {sanitize(last.message)}"


def _why(event: MachineEvent) -> str:
    if event.state == "slow":
        # Its connection was taken, its store program never spoke: the fix is found there.
        named = sanitize(shlex.quote(event.machine))
        return f"did not answer during the run (`offload doctor {named}` says why)"
    return sanitize(event.message)


def _down(event: MachineEvent, back: float | None) -> tuple[str, str]:
    """A machine's line under "machines down": why, and when it came back, if it did; one
    slow to answer that answered later is under "machines slow to answer" (it was not down:
    a tester read it under "machine down")."""
    if back is None:
        return "down", f"{event.machine}: {_why(event)}"
    at = time.strftime("%H:%M:%S", time.localtime(back))
    if event.state == "slow":
        return "slow", f"{event.machine}: at the start; it answered at {at} and took work"
    return "down", f"{event.machine}: {_why(event)}; up again at {at}"


def _error(job: JobFinished) -> str:
    lines = [sanitize(line) for line in (job.error or "").strip().splitlines()]
    return " / ".join(line for line in lines if line.strip()) or "no error message"


def _render_plain(summary: RunSummary, stream: IO[str]) -> None:
    if not summary.jobs:  # a table of zeros says nothing; the faults below still do
        _write_problems(summary, stream.write)
        return
    columns = summary.columns
    rows = [columns, *summary.rows()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    for n, row in enumerate(rows):
        if n == len(rows) - 1:
            stream.write("  ".join("-" * w for w in widths) + "\n")
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        stream.write("  ".join(cells).rstrip() + "\n")
    _write_problems(summary, stream.write)


def _write_problems(summary: RunSummary, write: Callable[[str], object]) -> None:
    heading = ""
    for kind, line in _problems(summary):
        if kind != heading:
            heading = kind
            count = sum(1 for k, _ in _problems(summary) if k == kind)
            title = _TITLES.get(kind, kind)
            write(f"{title} ({count}):\n")
        write(f"  {line}\n")
    if summary.caches:
        write(f"  {_CACHES_NOTE}\n")
    if _logged(summary):
        write("see a build's log with: offload log DRV\n")


# Room enough for any table's columns whole.
_UNBOUNDED = 10_000


def _render_rich(summary: RunSummary, console: Console) -> None:
    from rich import box
    from rich.measure import Measurement
    from rich.table import Table
    from rich.text import Text

    if summary.jobs:  # a table of zeros says nothing; the faults below still do
        table = Table(box=box.SIMPLE_HEAD, show_footer=True, pad_edge=False)
        *cells, totals = summary.rows()
        for n, (name, total) in enumerate(zip(summary.columns, totals, strict=True)):
            table.add_column(
                name,
                footer=Text(total, style="bold"),
                justify="left" if n == 0 else "right",
                no_wrap=True,
            )
        for row in cells:
            # Text, not str: rich reads a str as markup, and a machine named "[fd00::5]:2222"
            # showed as ":2222", one named "gpu[/]" stopped the command after its build.
            table.add_row(*(Text(cell) for cell in row))
        # Never narrower than its columns (a floor, as Nix's progress keeps its lines whole):
        # squeezed into a narrow terminal (COLUMNS=20) every number was cut to "…"; whole
        # rows the terminal wraps are still read.
        natural = Measurement.get(console, console.options.update_width(_UNBOUNDED), table)
        if natural.maximum > console.width:
            table.width = natural.maximum
        console.print(table, crop=False)
    for kind, line in _problems(summary):
        style = "red" if kind == "failed" else "yellow"
        title = _TITLES.get(kind, kind).replace("machines", "machine").replace("caches", "cache")
        console.print(Text.assemble((f"{title}: ", f"bold {style}"), line))
    if summary.caches:
        console.print(Text(_CACHES_NOTE, style="dim"))
    if _logged(summary):
        console.print(Text("see a build's log with: offload log DRV", style="dim"))
