"""What a run report shows, made from history (pure once the records are read).

Lanes are the run's machines that ran a copy, in the run's order; within a lane, copies that
overlap (a machine with several slots) go on separate rows, a copy's row free again once its
slot is (its outputs' fetch home may still run beside the next copy). Times are seconds from the
run's start. The critical path is the chain that decided when the run ended: from the build that
finished last, back through the dependency of it that finished last, and so on (of a dependency
built twice, its output lost with a builder, the copy that ended before); its builds are marked.
The distance from the lower bound is the run's wall time less the least time its own measured
builds allow (``offload.history.recorder.lower_bound``).

``offload-hook``'s builds belong to no run (Nix asks for them one at a time): their report is
of the builds that finished in a window, by default its latest burst, back from the newest
build until none ran for 10 minutes (a ``nixos-rebuild``, a CI job; at most 10,000 builds).
Asked are the derivations none of the others was built on; the machines' speeds and slots and
the lower bound are not known there.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from offload.errors import OffloadError
from offload.history.db import History
from offload.history.records import BuildRecord, RunRecord, is_hook_id
from offload.history.views import MachineStats, machine_stats

__all__ = [
    "Bar",
    "Lane",
    "ReportModel",
    "critical_path",
    "hook_run",
    "latest_burst",
    "load_hook_model",
    "load_model",
    "make_model",
    "slot_let_go",
]

TOP = 10  # rows in the slowest-builds and biggest-transfers tables
# offload-hook's report: its builds are no run (module docstring).
HOOK_RUN = "offload-hook"
HOOK_PAUSE = 600.0
HOOK_LIMIT = 10_000


@dataclass(frozen=True)
class Bar:
    build: BuildRecord
    row: int  # within its lane
    critical: bool

    @property
    def transferred(self) -> int:
        return self.build.bytes_sent + self.build.bytes_received


@dataclass(frozen=True)
class Lane:
    machine: str
    speed: float | None
    slots: int | None
    rows: int
    bars: tuple[Bar, ...]


@dataclass(frozen=True)
class ReportModel:
    run: RunRecord
    origin: float  # unix time of the timeline's 0
    length: float  # seconds the timeline covers
    lanes: tuple[Lane, ...]
    critical: tuple[BuildRecord, ...]  # first to last
    slowest: tuple[BuildRecord, ...]
    biggest: tuple[BuildRecord, ...]
    machines: tuple[MachineStats, ...]
    unplaced: tuple[BuildRecord, ...]  # skipped: ran on no machine
    failed: tuple[BuildRecord, ...]  # the copies that failed, in the order they ended
    title: str

    @property
    def distance(self) -> float | None:
        """Seconds the run took beyond its lower bound (None where it says nothing)."""
        bound = self.run.comparable_bound
        return None if bound is None else self.run.wall - bound


def load_model(history: History, run_id: str | None) -> ReportModel:
    """The report of run ``run_id`` (a prefix), else of the latest run."""
    runs = history.runs(run_id=run_id, limit=None if run_id else 1)
    if run_id is not None and len(runs) > 1:
        raise OffloadError(
            f"'{run_id[:40]}' is the start of {len(runs)} runs' ids",
            hint="give more of the id: " + ", ".join(r.run_id for r in runs[:5]),
        )
    if not runs:
        what = f"no run '{run_id[:40]}'" if run_id else "no run"
        hooked = (run_id is None or is_hook_id(run_id)) and history.builds(hook=True, limit=1)
        raise OffloadError(
            f"{what} in the history",
            hint="offload-hook's builds are there: `offload report --hook`"
            if hooked
            else "`offload history` lists the runs; `offload build` records one",
        )
    run = runs[0]
    if not run.deps:  # the latest run was read without its dependencies
        run = history.runs(run_id=run.run_id, limit=None)[0]
    return make_model(run, history.builds(run_id=run.run_id, limit=None))


def load_hook_model(history: History, since: float | None) -> ReportModel:
    """The report of ``offload-hook``'s builds finished at ``since`` or later, else of its
    latest burst (module docstring)."""
    builds = history.builds(hook=True, since=since, limit=HOOK_LIMIT + 1)
    more = len(builds) > HOOK_LIMIT
    builds = builds[:HOOK_LIMIT]
    if since is None:
        builds = latest_burst(builds, HOOK_PAUSE)
    capped = more and len(builds) == HOOK_LIMIT  # the page reaches the limit: more left out
    if not builds:
        when = "" if since is None else " since " + time.strftime("%F %T", time.localtime(since))
        raise OffloadError(
            f"no offload-hook builds in the history{when}",
            hint="`offload history` lists the builds; offload-hook records one per build it takes",
        )
    run = hook_run(builds, history.inputs(b.run_id for b in builds))
    # A page of more would not draw; said in its title, and by ``written``, not left unsaid.
    title = f"offload-hook builds, the newest {HOOK_LIMIT}" if capped else "offload-hook builds"
    return make_model(run, builds, title=title)


def latest_burst(builds: Sequence[BuildRecord], pause: float) -> list[BuildRecord]:
    """Of ``builds`` (newest end first), those back from the newest until none ran for
    ``pause`` seconds."""
    kept: list[BuildRecord] = []
    earliest = math.inf
    for b in builds:
        start, end = b.span
        if kept and end < earliest - pause:
            break
        kept.append(b)
        earliest = min(earliest, start)
    return kept


def hook_run(builds: Sequence[BuildRecord], inputs: Mapping[str, Sequence[str]]) -> RunRecord:
    """``offload-hook``'s ``builds`` told as one run: asked, the derivations none of the
    others was built on; failed if a derivation's last copy failed, interrupted if one was
    stopped (``_hook_outcome``)."""
    drvs = {b.drv_path for b in builds}
    deps = {drv: tuple(d for d in inputs.get(drv, ()) if d in drvs) for drv in drvs}
    needed = {d for ds in deps.values() for d in ds}
    last = {b.drv_path: b for b in sorted(builds, key=lambda b: b.finished)}
    spans = [b.span for b in builds]
    return RunRecord(
        run_id=HOOK_RUN,
        started=min(s for s, _ in spans),
        finished=max(e for _, e in spans),
        # Each name once: derivations of one name (a file built again with changes) were
        # said twice ("asked t2-e t2-d t2-b t2-e").
        asked=tuple(dict.fromkeys(b.pname for drv, b in last.items() if drv not in needed)),
        outcome=_hook_outcome({b.status for b in last.values()}),
        machines=(),
        estimate=None,
        lower_bound=None,
        deps=deps,
    )


def _hook_outcome(last: set[str]) -> str:
    """Of the derivations' last copies' statuses: failed if one failed (or was lost), else
    interrupted if one was stopped (nix-build's Ctrl-C), else ok."""
    if last <= {"built", "fetched", "substituted"}:
        return "ok"
    return "interrupted" if last <= {"built", "fetched", "substituted", "cancelled"} else "failed"


def make_model(
    run: RunRecord, builds: Sequence[BuildRecord], *, title: str | None = None
) -> ReportModel:
    placed = [b for b in builds if b.machine]
    critical = critical_path(placed, run.deps)
    marked = {id(b) for b in critical}
    spans = [b.span for b in placed]
    origin = min([run.started, *(s for s, _ in spans)])
    end = max([run.finished, *(e for _, e in spans)])
    speeds = {m.name: m.speed for m in run.machines}
    return ReportModel(
        run=run,
        origin=origin,
        length=max(end - origin, 1e-3),
        lanes=tuple(_lanes(run, placed, marked)),
        critical=tuple(critical),
        slowest=tuple(
            sorted(
                (b for b in placed if b.status in {"built", "failed"}),
                key=lambda b: -b.duration,
            )[:TOP]
        ),
        biggest=tuple(
            sorted(
                (b for b in placed if b.bytes_sent + b.bytes_received),
                key=lambda b: -(b.bytes_sent + b.bytes_received),
            )[:TOP]
        ),
        machines=tuple(machine_stats(placed, speeds)),
        unplaced=tuple(b for b in builds if not b.machine),
        failed=tuple(sorted((b for b in placed if b.status == "failed"), key=lambda b: b.finished)),
        title=title or f"offload run {run.run_id}",
    )


def critical_path(
    builds: Sequence[BuildRecord], deps: Mapping[str, Sequence[str]]
) -> list[BuildRecord]:
    """The chain of successful builds that ended the run, first to last (see the module)."""
    copies: dict[str, list[BuildRecord]] = {}
    for b in builds:
        if b.status == "built":
            copies.setdefault(b.drv_path, []).append(b)
    if not copies:
        return []
    chain = [max((b for built in copies.values() for b in built), key=lambda b: b.finished)]
    seen = {chain[0].drv_path}
    while True:
        started = chain[-1].started
        before = [
            _used(copies[d], started)
            for d in deps.get(chain[-1].drv_path, ())
            if d in copies and d not in seen
        ]
        if not before:
            break
        chain.append(max(before, key=lambda b: b.finished))
        seen.add(chain[-1].drv_path)
    return chain[::-1]


def _used(built: Sequence[BuildRecord], started: float) -> BuildRecord:
    """The copy of a dependency whose output a build begun at ``started`` used: the last to
    end before that. Outputs lost with their builder are built again, and the first copy's is
    then not the one used (a tester: the path went back 32 s to two builds that fed nothing).
    Where none ended before (a dependency's output fetched home while the build using it
    began on its builder), the first to end."""
    ended = [b for b in built if b.finished <= started]
    return max(ended, key=lambda b: b.finished) if ended else min(built, key=lambda b: b.finished)


def _lanes(run: RunRecord, builds: Sequence[BuildRecord], marked: set[int]) -> list[Lane]:
    order = [m.name for m in run.machines]
    order += sorted({b.machine for b in builds} - set(order))
    known = {m.name: m for m in run.machines}
    lanes = []
    for name in order:
        mine = sorted((b for b in builds if b.machine == name), key=lambda b: b.span)
        if not mine:
            continue
        ends: list[float] = []  # per row: when its last bar ends
        bars = []
        for b in mine:
            start, end = b.span[0], slot_let_go(b)
            row = next((i for i, e in enumerate(ends) if e <= start), len(ends))
            if row == len(ends):
                ends.append(end)
            ends[row] = end
            bars.append(Bar(b, row, id(b) in marked))
        machine = known.get(name)
        lanes.append(
            Lane(
                machine=name,
                speed=machine.speed if machine else None,
                slots=machine.slots if machine else None,
                rows=len(ends),
                bars=tuple(bars),
            )
        )
    return lanes


def slot_let_go(build: BuildRecord) -> float:
    """When ``build``'s copy let its machine's slot go: its outputs are fetched home after
    that, while the next build takes the slot, so a row is a slot (a fetch's tail beside the
    next build opened a third row for a machine of two slots: a tester)."""
    held = [p.finished for p in build.phases if p.phase != "fetching"]
    return max(held) if held else build.span[1]
