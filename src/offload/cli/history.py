"""`offload history`: past runs, their builds and phases, machines, and the estimates in use.

Without filters: the latest runs (when, what was asked, wall time against the run's lower
bound, builds, outcome) and every machine's totals over the whole history (its newest 20,000
builds at most, as the table's title then says). ``--last N`` lists the N newest runs (and
builds) and narrows the machine table to their builds. ``--run``, ``--machine`` and ``--drv``
narrow both (the runs listed are those with a build that matches) and also list the builds
(derivation, machine, seconds waiting, sending, building, fetching, bytes, outcome; then why
each that did not build ended so: its Nix error, its builder's fault) and the
duration estimates the scheduler would use for their names now, as a history of no runs
does (the hook's builds belong to none: their run is said as `offload-hook`, and `--run`
with the id `--json` gives one of them says so). A ``--machine`` that neither the history nor
the pool knows, or a ``--drv`` no kept build matches, is an error naming it and what it may
have meant, not empty tables.
``--json`` prints all four parts as one object, with what the machine table summed
(``machines_scope``: ``listed_only`` with ``--last``, ``newest_builds_only`` when capped).
``--daemon`` reads the nix-daemon's ``offload-hook`` history (/var/lib/offload, root's)
instead of the user's; its ``--machine`` is checked against that history alone. Where no
build has been recorded yet there is no history, and nothing is made: the listing is a note
saying so (and empty lists with ``--json``), exit 0; ``--run``, ``--drv`` and ``--machine``
are an error saying so, and so is ``--daemon`` (its hook kept nothing where it was asked to
look: the error says where else it may keep it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from offload.cli.arguments import doc_help, nonempty
from offload.cli.history_file import NoHistoryYet, open_history
from offload.config.machines.model import shown
from offload.errors import ConfigError, OffloadError
from offload.history.db import History
from offload.history.estimates import estimator
from offload.history.records import HOOK_RUN_SAID, PHASES, BuildRecord, RunRecord, is_hook_id
from offload.history.views import (
    MachineStats,
    build_dict,
    machine_stats,
    run_dict,
    speed_factors,
)
from offload.names import LOCAL
from offload.paths import SYSTEM_STATE_DIR
from offload.spelling import meant
from offload.ui.term import format_bytes, format_duration, sanitize

__all__ = ["positive_count", "register"]

# A reason is cut to this many characters: `offload log` has the build's whole log.
_WHY_CHARS = 300
# Enough machines' builds to measure them: the machine table sums that many at most (the
# newest; its title says so when there were more). A history keeps up to 100,000, and reading
# them all takes 3 s and 200 MB, against 0.6 s for these.
_SUMMED = 20_000
_LISTED = 20  # runs and builds listed without --last


def positive_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text[:40]!r}") from None
    if not 0 < value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"{value} is not between 1 and 1000000")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "history",
        help="show past runs, builds and their phases, machines and estimates",
        description=doc_help(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument(
        "--run", type=nonempty("run id"), metavar="ID", help="one run (a prefix of its id)"
    )
    parser.add_argument(
        "--machine", type=nonempty("machine name"), metavar="NAME", help="builds on this machine"
    )
    parser.add_argument(
        "--drv",
        type=nonempty("name"),
        metavar="NAME",
        help="builds whose .drv path contains NAME",
    )
    parser.add_argument(
        "--last",
        type=positive_count,
        metavar="N",
        help=f"list the N newest runs and builds (default {_LISTED}), and sum only theirs in"
        f" the machine table (without --last: every build kept, the newest {_SUMMED:,} at most);"
        " not with --run",
    )
    parser.add_argument(
        "--daemon",
        action="store_true",
        help=f"the nix-daemon's offload-hook's history ({SYSTEM_STATE_DIR}; root's)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.run is not None and args.last is not None:  # --run lists one run whole, unsaid
        raise ConfigError(
            "--last: --run lists one run, whole", hint="give --run or --last, not both"
        )
    try:
        opened = open_history(daemon=args.daemon)
    except NoHistoryYet as exc:
        if args.run is not None or args.drv is not None or args.machine is not None:
            raise  # nothing to find it in: said as the error it is
        # A listing of nothing yet is no failure: a script's `offload history --json` right
        # after the install gets the empty lists, and people the note.
        print(f"note: {exc.message} ({exc.hint})", file=sys.stderr)
        if args.json:
            _print_json(_View([], [], [], False, False, False), {}, [], {}, {})
        return 0
    with opened as history:
        every = history.runs(limit=None)
        view = _view(history, args, every)
        # The pool's own factors, as the scheduler and the hook weigh history with: those
        # recorded by past runs only for machines it no longer has (a hook's builds record
        # none, and a factor changed since would be off by its ratio).
        speeds = {**speed_factors(every), **_pool_speeds()}
        pnames = sorted({b.pname for b in view.builds})
        estimates = dict(estimator(history, speeds)(pnames))
        counts = history.counts(r.run_id for r in view.runs)
    machines = machine_stats(view.counted, speeds)
    if args.json:
        _print_json(view, counts, machines, estimates, speeds)
        return 0
    _print_runs(view.runs, counts)
    if args.run is not None:
        _print_said(view.runs)
    _print_machines(machines, _scope(view))
    if view.listed:
        _print_builds(view.builds)
        _print_estimates(estimates, speeds)
    return 0


def _pool_speeds() -> dict[str, float]:
    """Each machine's speed factor in the pool Nix's settings and offload.toml give; none
    where that cannot be read (no Nix here: the factors runs recorded stand)."""
    from offload.cli.build_keep import speeds
    from offload.config.pool import load_pool

    try:
        return speeds(load_pool(builders=None, config=None, lenient=True))
    except (OffloadError, OSError):
        return {}


def _print_json(
    view: _View,
    counts: dict[str, dict[str, int]],
    machines: list[MachineStats],
    estimates: dict[str, float],
    speeds: dict[str, float],
) -> None:
    print(
        json.dumps(
            {
                "runs": [run_dict(r, counts.get(r.run_id, {})) for r in view.runs],
                "machines": [m.as_dict() for m in machines],
                "builds": [build_dict(b) for b in view.builds],
                "estimates": _estimates_json(estimates, speeds),
                # What "machines" sums, as its table's title says it.
                "machines_scope": {
                    "listed_only": view.windowed,
                    "newest_builds_only": _SUMMED if view.capped else None,
                },
            },
            indent=1,
        )
    )


@dataclass(frozen=True)
class _View:
    runs: list[RunRecord]  # listed
    builds: list[BuildRecord]  # listed (when ``listed``)
    counted: list[BuildRecord]  # summed in the machine table
    listed: bool
    windowed: bool  # --last: the machine table sums only what is listed
    capped: bool  # the machine table may leave out builds older than the _SUMMED newest


def _view(history: History, args: argparse.Namespace, every: list[RunRecord]) -> _View:
    """What the filters leave: ``--machine`` and ``--drv`` keep the runs with a build that
    matches, ``--last`` the newest of them (and of the builds), ``--run`` one run whole."""
    last = _LISTED if args.last is None else args.last
    runs = every
    if args.run is not None:
        runs = [_one_run(history.runs(run_id=args.run, limit=None), args.run, args.daemon)]
    run_id = runs[0].run_id if args.run is not None else None
    summed = history.builds(run_id=run_id, machine=args.machine, name=args.drv, limit=_SUMMED)
    if not summed:
        _check_names(history, args.machine, args.drv, daemon=args.daemon)
    if args.machine is not None or args.drv is not None:
        having = {b.run_id for b in summed}
        runs = [r for r in runs if r.run_id in having]
    runs = runs if args.run is not None else runs[:last]
    # With no run to show (the hook's builds belong to none), the latest builds are.
    listed = args.run is not None or args.machine is not None or args.drv is not None or not runs
    builds = summed[: None if args.run else last] if listed else []
    windowed = args.last is not None and args.run is None
    counted = summed
    capped = len(summed) >= _SUMMED
    if windowed:
        shown = {r.run_id for r in runs}
        counted = [b for b in summed if b.run_id in shown]
        counted += [b for b in builds if b.run_id not in shown]
        # Only a listed run that began before the oldest build read can have one left out.
        capped = capped and any(r.started < summed[-1].finished for r in runs)
    return _View(runs, builds, counted, listed, windowed, capped)


def _scope(view: _View) -> str:
    """What the machine table sums, when not every build kept that matches: said in its title
    (it read "every build kept" where only the newest _SUMMED were summed)."""
    newest = f"the newest {_SUMMED:,} builds"
    if view.windowed:
        within = f", within {newest}" if view.capped else ""
        return f"of the listed runs and builds{within} only; "
    return f"of {newest} only; " if view.capped else ""


def _history(daemon: bool) -> str:
    """Which history a command read, as its errors name it."""
    return "the nix-daemon's history" if daemon else "the history"


def _one_run(runs: list[RunRecord], prefix: str, daemon: bool) -> RunRecord:
    if len(runs) == 1:
        return runs[0]
    typed = shown(prefix, 40)  # as typed: a control character escaped, not dropped
    if not runs and (is_hook_id(prefix) or prefix == HOOK_RUN_SAID):
        raise OffloadError(
            f"'{typed}': offload-hook's builds belong to no run",
            hint="`offload history --drv NAME` lists them, `offload report --hook` draws them",
        )
    if not runs:
        raise OffloadError(
            f"no run '{typed}' in {_history(daemon)}",
            hint=f"`offload history{' --daemon' if daemon else ''}` lists the runs and ids",
        )
    raise OffloadError(
        f"'{typed}' is the start of {len(runs)} runs' ids",
        hint="give more of the id: " + ", ".join(r.run_id for r in runs[:5]),
    )


def _check_names(
    history: History, machine: str | None, drv: str | None, *, daemon: bool = False
) -> None:
    """``OffloadError`` for a ``--machine`` or ``--drv`` that names nothing the history (or,
    for a machine, the pool) knows: a typo, said as one, rather than empty tables. What was
    typed is ``shown``: a control character escaped, not dropped (``he\\x07llo`` was said as
    ``hello``, a name the history has), and a cut one marked. The nix-daemon's history
    (``daemon``) is checked against itself alone: the user's pool is not the daemon's."""
    machines, pnames = history.known()
    if machine is not None and daemon and machine not in {*machines, LOCAL}:
        known = sorted({*machines, LOCAL})
        raise OffloadError(
            f"no machine '{shown(machine, 60)}' in {_history(daemon)}",
            hint=_meant(machine, known)
            + f"known: {_some(known)} (the machines its offload-hook has built on)",
        )
    if machine is not None and machine not in machines:
        pool, unread = _pool_names()
        # The local machine is always the pool's, whatever could be read of the rest.
        known = sorted({*machines, LOCAL, *pool})
        if machine not in known:
            where, see = "nor in the pool", "`offload machines`: the pool"
            if unread is not None:  # not "nor in the pool": it was not read
                where = f"and the pool could not be read ({sanitize(unread)[:300]})"
                see = "`offload machines` says what is wrong with it"
            raise OffloadError(
                f"no machine '{shown(machine, 60)}' in the history, {where}",
                hint=_meant(machine, known) + f"known: {_some(known)} ({see})",
            )
    if drv is not None and not history.builds(name=drv, limit=1):
        raise OffloadError(
            f"no build in {_history(daemon)} whose .drv path contains '{shown(drv, 80)}'",
            hint=_meant(drv, pnames)
            + (
                "builds kept of: " + _some(pnames)
                if pnames
                else f"{_history(daemon)} has no builds yet"
            ),
        )


def _pool_names() -> tuple[list[str], str | None]:
    """The machines' names in the pool Nix's settings and offload.toml give (as `offload
    machines` reads it), and why it could not be read, if it could not (no names then)."""
    from offload.config.pool import load_pool  # only on the way to an error

    try:
        return load_pool(builders=None, config=None, lenient=True).names(), None
    except OffloadError as exc:
        return [], exc.message


def _meant(word: str, known: Sequence[str]) -> str:
    close = meant(word, known)
    return f"did you mean {sanitize(close)}? " if close else ""


def _some(names: Sequence[str], most: int = 10) -> str:
    shown = ", ".join(sanitize(n) for n in names[:most])
    return shown + (f" (and {len(names) - most} more)" if len(names) > most else "")


def _estimates_json(
    estimates: dict[str, float], speeds: dict[str, float]
) -> dict[str, dict[str, object]]:
    return {
        pname: {
            "work": round(work, 3),
            "machines": {m: round(work / s, 3) for m, s in sorted(speeds.items()) if s > 0},
        }
        for pname, work in sorted(estimates.items())
    }


def _table(
    title: str, header: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1
) -> None:
    """Aligned columns: the first ``left`` text, to the left; the rest numbers, right."""
    out = sys.stdout
    out.write(f"{title}\n")
    if not rows:
        out.write("  (none)\n")
        return
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [
            c.ljust(w) if n < left else c.rjust(w)
            for n, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.write("  " + "  ".join(cells).rstrip() + "\n")


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _seconds(value: float | None) -> str:
    return "-" if value is None else format_duration(value)


def _print_runs(runs: list[RunRecord], counts: dict[str, dict[str, int]]) -> None:
    rows = []
    for r in runs:
        bound, ratio = r.comparable_bound, r.bound_ratio
        asked = sanitize(" ".join(r.asked)) or "-"
        done = counts.get(r.run_id, {})
        rows.append(
            (
                _when(r.started),
                r.run_id,
                asked if len(asked) <= 40 else asked[:37] + "...",
                format_duration(r.wall),
                _seconds(bound),
                "-" if ratio is None else f"{ratio:.2f}",
                str(done.get("built", 0)),
                str(done.get("failed", 0)),
                r.outcome,
            )
        )
    header = ("when", "run", "asked", "wall", "bound", "ratio", "built", "failed", "outcome")
    title = "runs (newest first; bound: the least time the run's own builds allow):"
    _table(title, header, rows, left=3)


def _print_said(runs: list[RunRecord]) -> None:
    """What the run said of its machines (down, slow, up again...), a line each."""
    lines = [
        f"  {sanitize(m.name)}: {sanitize(said)}"
        for run in runs
        for m in run.machines
        for said in m.told
    ]
    if lines:
        print("\nwhat the run said of its machines (seconds from its start):")
        print("\n".join(lines))


def _print_machines(machines: list[MachineStats], scope: str) -> None:
    title = f"\nmachines ({scope}measured: speed from times against other machines'):"
    _table(title, MachineStats.COLUMNS, [m.cells() for m in machines])


def _print_builds(builds: list[BuildRecord]) -> None:
    rows = [
        (
            sanitize(b.name or b.pname),
            b.machine or "-",
            b.status + (" (speculative)" if b.speculative else ""),
            *(_phase(b, p) for p in PHASES),
            format_bytes(b.bytes_sent),
            format_bytes(b.bytes_received),
            b.run_said,
        )
        for b in builds
    ]
    header = ("derivation", "machine", "outcome", *PHASES, "sent", "received", "run")
    _table("\nbuilds (newest first):", header, rows, left=3)
    _print_why(builds)


def _print_why(builds: list[BuildRecord]) -> None:
    """Why each listed build that did not build ended so (a failed build's Nix error, a lost
    one's builder fault), one line each: the table has no room for them, and they are the
    first thing asked of a failure."""
    told = [b for b in builds if b.error]
    if not told:
        return
    sys.stdout.write("\nwhy (newest first):\n")
    for b in told:
        why = " / ".join(line.strip() for line in str(b.error).splitlines() if line.strip())
        if len(why) > _WHY_CHARS:
            why = why[: _WHY_CHARS - 3] + "..."
        name, machine = sanitize(b.name or b.pname), sanitize(b.machine or "-")
        sys.stdout.write(f"  {name} on {machine} ({b.status}, {b.run_said}): {sanitize(why)}\n")


def _phase(build: BuildRecord, phase: str) -> str:
    if not any(p.phase == phase for p in build.phases):
        return "-"
    return format_duration(build.phase_seconds(phase))


def _print_estimates(estimates: dict[str, float], speeds: dict[str, float]) -> None:
    names = sorted(m for m, s in speeds.items() if s > 0)
    rows = [
        (sanitize(p), format_duration(w), *(format_duration(w / speeds[m]) for m in names))
        for p, w in sorted(estimates.items())
    ]
    _table(
        "\nestimates the scheduler uses (work: seconds at speed 1; then on each machine):",
        ("name", "work", *names),
        rows,
    )
