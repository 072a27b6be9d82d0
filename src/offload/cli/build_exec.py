"""`offload build`'s run once its settings are read (``offload.cli.build``): the build, with
what offload keeps between runs (history, logs, slots, backoff), its summary and results
(``--dry-run``'s plan: ``offload.cli.build_dry``). Imported while the builders' ssh masters connect.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import sys
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from offload.backoff import Health, connections, earlier_failures
from offload.booleans import nix_bool
from offload.build import DrvGraph, Roots, out_links, run_build
from offload.build.post_hook import post_build_hook
from offload.cli.build import remembered_backoff
from offload.cli.build_args import nix_json, realise_flags
from offload.cli.build_keep import (
    Built,
    forget_old,
    guarded_estimator,
    keep_run,
    opened_history,
    slot_locks,
    warn,
)
from offload.config.pool import Pool
from offload.errors import BuildFailed, OffloadError, SchedulerError
from offload.history.db import History
from offload.history.recorder import RunRecorder
from offload.logs import BuildLogs, LogRecorder
from offload.marks import mark, taken
from offload.names import LOCAL
from offload.nix_results import add_roots, realise_again
from offload.numerals import is_decimal
from offload.paths import daemon_here
from offload.platform_refusal import claimed_not_had
from offload.protocol.records import nix_exit_code
from offload.protocol.serve import BuildOptions, BuildStatus
from offload.scheduler.run import RunReport
from offload.slot_fallback import FALLBACK_FILE
from offload.streams import unless_gone
from offload.ui import RendererKind, make_renderer
from offload.ui.events import Event, MachineEvent, Renderer, ReportWritten, RunStarted, Timing
from offload.ui.nixjson import nix_msg
from offload.ui.plain import machine_warning
from offload.ui.summary import render_summary
from offload.ui.term import sanitize

__all__ = ["Stranded", "build", "build_failed", "execute"]

LOG_TAIL = 10  # Nix's default log-lines


def _log_lines(pool: Pool) -> int:
    """How many of a failed build's last log lines to show: Nix's ``log-lines`` setting
    (nix.conf, NIX_CONFIG, --option), 10 unless set, as nix-build shows them."""
    text = pool.nix_settings.get("log-lines")
    return int(text) if is_decimal(text) else LOG_TAIL


def _print_log_tails(logs: BuildLogs, failed: Mapping[str, str], count: int) -> None:
    """The last ``count`` lines of each failed build's log, as nix-build shows them (none
    for 0, as Nix's ``log-lines = 0``)."""
    if count == 0:
        return
    for drv_path in failed:
        if logs.latest(drv_path) is None:
            continue
        # Streamed (a failed build's log may be huge); an empty log gets no header.
        lines = [line.rstrip("\n") for line in deque(logs.lines(drv_path), maxlen=count)]
        if not lines:
            continue
        name = drv_path.rsplit("/", 1)[-1].split("-", 1)[-1].removesuffix(".drv")
        print(f"last {len(lines)} log lines of {name}:", file=sys.stderr)
        for line in lines:
            print(f"  {name}> {sanitize(line)}", file=sys.stderr)


def build_failed(
    report: RunReport, *, logs_kept: bool = True, logs_shown: bool = True
) -> BuildFailed:
    """A run's failed builds as nix-build reports them: one named (a timed-out one first),
    with its Nix status (MiscFailure when Nix gave none), and the exit status nix-build gives
    for them all (``nix_exit_status``).
    """
    timed_out = [d for d in report.failed if report.statuses.get(d) == BuildStatus.TIMED_OUT]
    first = (timed_out or list(report.failed))[0]
    more = len(report.failed) - 1
    what = "timed out" if timed_out else "failed"
    # Nix's words may begin "error: " as its own lines do: said once, as the line's own.
    said = report.failed[first].removeprefix("error: ")
    # Nix's own words name the derivation ("builder for '/nix/store/...drv' failed with exit
    # code 3"): said alone, as nix-build's last line, not after "build of '...drv' failed:".
    message = said if f"'{first}'" in said else f"build of '{first}' {what}: {said}"
    if more:  # on the first line, the one that names the build (Nix's may be several)
        head, _, rest = message.partition("\n")
        message = f"{head} (and {more} more)" + (f"\n{rest}" if rest else "")
    return BuildFailed(
        message,
        drv_path=first,
        status=report.statuses.get(first, BuildStatus.MISC_FAILURE),
        hint=_failed_hint(report, first, logs_kept=logs_kept, logs_shown=logs_shown),
        exit_code=nix_exit_status(report),
    )


def _failed_hint(report: RunReport, drv_path: str, *, logs_kept: bool, logs_shown: bool) -> str:
    """Where to look next: the failed build's log (``offload log`` where the run's state is
    kept; else the run shows it, whole unless -Q or --log-format bar, its tail always), or, for
    a derivation no machine took (no machine can build it), the machines' systems and features:
    it has no log."""
    builders = [j.machine for j in report.finished if j.drv_path == drv_path and j.machine]
    # A builder whose Nix lacks what its line claims (a tester's ARM board on an x86 host).
    claimed = claimed_not_had(report.failed[drv_path], builders[-1]) if builders else None
    if claimed is not None and builders[-1] != LOCAL:
        return claimed
    if builders:
        if logs_kept:
            return f"see its log with `offload log {drv_path}`"
        if logs_shown:
            return "its log is above, and was not kept (no state directory)"
        return "its whole log was not kept (no state directory): rerun with -L to see it"
    return "`offload machines` shows each machine's systems and features"


def nix_exit_status(report: RunReport) -> int:
    """The exit status nix-build 2.8 gives for these failures (``Worker::exitStatus``,
    nix-protocols.md 4.6): 0x60 with a bit per kind of failure the run saw, or 1 when it saw
    none of them. Nix sets the bits from each build's ``BuildResult`` status (``nix_exit_bits``);
    a failure with no bit (an output rejected for another reason than its hash, a repeat that
    differed, a failure Nix gave no status for: no machine could build it, a lost machine)
    counts for nothing, so a run with only those exits 1, as nix-build."""
    return nix_exit_code((report.statuses.get(drv), why) for drv, why in report.failed.items())


def _warn(event: MachineEvent) -> None:
    """A machine left out, backed off or slow to answer, or a build there that could not be
    stopped, as one line on stderr."""
    line = machine_warning(event)
    if line is not None:
        print(line, file=sys.stderr)


def _emitter(
    renderer: Renderer, machine_events: list[MachineEvent], *, warn: bool
) -> Callable[[Event], None]:
    """The run's events to ``renderer``, its machine events kept in ``machine_events`` and,
    with ``warn``, each said on stderr as well (``_warn``)."""
    opened: list[RunStarted] = []

    def emit(event: Event) -> None:
        renderer.handle(event)
        if isinstance(event, RunStarted):
            opened.append(event)
        if isinstance(event, MachineEvent):
            machine_events.append(event)
            # A run that never opened ends on one error line naming the builders down.
            if warn and (opened or event.state != "down"):
                _warn(event)

    return emit


class Stranded(SchedulerError):
    """A run left with no machine mid-run: its error, with what it built until then (its
    summary and report page are made from it, as a run's that failed)."""

    def __init__(self, error: SchedulerError, built: Built) -> None:
        super().__init__(error.message, hint=error.hint)
        self.built = built


def _tee(event: Event, *handlers: Callable[[Event], None]) -> None:
    for handle in handlers:
        handle(event)


def execute(
    roots: Roots,
    pool: Pool,
    state: Path,
    *,
    emit: Callable[[Event], None],
    close: Callable[[], None],
    keep_going: bool = False,
    retry_now: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    fetch_all: bool = False,
    backoff: Mapping[str, Health] | None = None,  # builders left out (None: as remembered)
    run: Callable[[Coroutine[Any, Any, Built]], Built] = asyncio.run,
    shared: Path | None = None,  # ssh masters kept for the next run (transport.persist)
    check: bool = False,  # nix-build --check: a requested output to be built is refused
    nix_said: Callable[[str], None] | None = None,  # the local store's lines (default: stderr)
) -> Built:
    """A build run with what offload keeps between runs: history, logs, slots, backoff; ``close``
    is called once it is over, ``run`` runs it (the command's Runner: the early masters' loop)."""
    logs = BuildLogs(state / "logs")
    remember = RunRecorder(time.time())
    # A run cut short (Ctrl-C, SIGTERM) is kept as well: history shows it as "interrupted",
    # what it built teaches the estimates, and what it learnt of the builders is remembered;
    # so is one stranded with no machine left ("incomplete"; ``keep_run``).
    cut: list[Built] = []
    backoff = remembered_backoff(state, retry_now, pool) if backoff is None else backoff
    with opened_history(state) as history:
        recorder = logs.recorder(for_nix=True)
        try:
            report, graph = run(
                run_build(
                    roots,
                    pool,
                    emit=lambda event: _tee(event, recorder.handle, remember.handle, emit),
                    log_sink=recorder.write,
                    keep_going=keep_going,
                    estimate=guarded_estimator(history, pool),
                    env=env,
                    backoff=backoff,
                    **_from_state(state, pool),
                    **_from_settings(pool, fetch_all=fetch_all),
                    shared=shared,
                    cut_short=lambda report, graph: cut.append((report, graph)),
                    check=check,
                    nix_said=nix_said,
                )
            )
            mark("closed")
            emit(Timing(taken(), time.time()))
        except BaseException as exc:
            if cut:  # the exit stays 130/143: keeping it is no error of the run's either
                keep_run(state, history, remember, cut[0], pool)
            if cut and cut[0][0].stranded and isinstance(exc, SchedulerError):
                raise Stranded(exc, cut[0]) from None
            raise
        finally:
            _close(recorder, close)
        keep_run(state, history, remember, (report, graph), pool)
    return report, graph


def _close(recorder: LogRecorder, close: Callable[[], None]) -> None:
    """Close the run's log files, then ``close`` the run's display; logs that could not all
    be written (a full disk) are a warning after it: the logs are copies, the build is done."""
    unkept = _closed(recorder)
    close()
    if unkept is not None:
        warn(f"build logs are not kept: {unkept.message}", unkept.hint)


def _closed(recorder: LogRecorder) -> OffloadError | None:
    """Close the run's log files; the error if they could not all be written (a full disk)."""
    try:
        recorder.close()
    except OffloadError as exc:
        return exc
    except OSError as exc:
        return OffloadError(str(exc))
    return None


def _from_state(state: Path, pool: Pool) -> dict[str, Any]:
    """What a run is given of what offload keeps between runs, but history and backoff: the
    slot locks, what was learnt of builder-side slots, and the failures of each builder
    whose backoff ended (its next one counts from them: ``offload.backoff``)."""
    return {
        "slots": slot_locks(state),
        "fallbacks": state / FALLBACK_FILE,
        "earlier_failures": earlier_failures(
            state / "backoff.json", time.time(), connections(pool)
        ),
    }


def _from_settings(pool: Pool, *, fetch_all: bool) -> dict[str, Any]:
    """What the local Nix's settings give a run: the timeouts and log limit Nix's build hook
    passes on with each build, and its post-build-hook for the builds on builders (their
    outputs then all come home for it; ``offload.build.post_hook``), or the warning that it
    is not run here."""
    daemon = daemon_here(pool.local_env())
    after_home, not_run = post_build_hook(pool, euid=os.geteuid(), daemon=daemon)
    if not_run is not None:
        print(f"warning: {not_run}", file=sys.stderr)
    return {
        "options": _build_options(pool),
        "after_home": after_home,
        "fetch_all": fetch_all or after_home is not None,
    }


def _build_options(pool: Pool) -> BuildOptions:
    """What every build gets on every machine: the timeouts, log limit, repeats and
    keep-failed Nix's build hook passes on (keep-failed: serve protocol 2.7, the builder
    keeps the directory)."""
    return BuildOptions.from_settings(pool.nix_settings.get)


def _print_logs(args: argparse.Namespace) -> bool:
    """Build logs are shown as nix-build shows them: unless -Q, or --log-format bar or raw
    (their ``-with-logs`` forms show them); offload's -L shows them whatever the format."""
    return bool(
        args.print_build_logs or not (args.no_build_output or args.log_format in {"bar", "raw"})
    )


def _nix_lines(line: str) -> None:
    """A line of the local store's Nix, with internal-json: as Nix's JSON logger writes it."""
    print(nix_msg(line), file=sys.stderr)


def _verbosity(args: argparse.Namespace) -> int:
    """Nix's verbosity for these flags: info (3), -v up and --quiet down; --debug is debug."""
    if getattr(args, "nix_debug", False):
        return 6
    return int(min(max(3 + args.verbose - args.quiet, 0), 7))


def _quiet(args: argparse.Namespace) -> bool:
    """nix-build's --quiet (more of them than -v): Nix then leaves out its own lines ("these
    derivations will be built", "building ...") and shows the builds' logs, warnings and
    errors; offload leaves out its progress lines, live view and summary the same way."""
    return bool(args.quiet > args.verbose and not args.json)


def _warnings_apart(args: argparse.Namespace) -> bool:
    """Are a machine's warnings (down, slow, its key file missing...) lines of their own on
    stderr? With --json (the renderer writes to stdout: people read stderr), and with --quiet's
    plain renderer, which writes no line of offload's: Nix still shows its warnings then, until
    a third --quiet takes its verbosity below them (lvlInfo less 3 is lvlError)."""
    quiet = _kind(args) == "plain" and _quiet(args) and args.quiet - args.verbose < 3
    return bool(args.json or quiet)


def _kind(args: argparse.Namespace) -> RendererKind:
    if args.json:
        return "json"
    if nix_json(args):
        return "nixjson"
    if _quiet(args):  # no live view, whatever the format (README): the logs and warnings
        return "plain"
    if args.log_format is not None:
        # bar: the live view where it can be one, plain lines into a file, as Nix's bar.
        return "plain" if args.log_format in {"raw", "raw-with-logs"} else "auto"
    return "auto"


def _renderer(args: argparse.Namespace) -> Renderer:
    return make_renderer(
        _kind(args),
        print_logs=_print_logs(args),
        progress=not _quiet(args),
        verbosity=_verbosity(args),
    )


@contextlib.contextmanager
def _report_unwritten_said(target: Path | None) -> Iterator[None]:
    """A run stopped (Ctrl-C, SIGTERM) writes no ``--report`` page: said, with the command
    that writes it from history, where the stopped run is kept (the latest)."""
    try:
        yield
    except KeyboardInterrupt:
        if target is not None:
            warn(
                f"the run's report was not written to {target}: the run was stopped",
                f"`offload report -o {shlex.quote(str(target))}` writes it from history",
            )
        raise


def _write_report(
    state: Path, run_id: str, target: Path, renderer: Renderer, *, kept: bool
) -> None:
    """The run's page into ``target``, then one line on stderr saying where (and a ``report``
    event for --json); one that cannot be written (its directory gone during the run, a full
    disk, the run not in history) is a warning: the page is not the build, so its outputs,
    links and exit status stand. A run whose state is not ``kept`` is named by no id, there
    or in the page's title: `offload report` could not show it."""
    import dataclasses

    from offload.report import check_target, load_model, not_history, write_page, written

    try:
        with History(state / "history.sqlite") as history:
            check_target(target)
            not_history(target, history.path)
            model = load_model(history, run_id)
        if not kept:
            started = time.strftime("%F %T", time.localtime(model.run.started))
            model = dataclasses.replace(model, title=f"offload run of {started} (not kept)")
        write_page(model, target)
    except OffloadError as exc:
        warn(f"the run's report was not written: {exc.message}", exc.hint)
        return
    what = f"run {run_id}" if kept else "this run (not kept: no state directory to keep it in)"
    print(written(model, f"offload: report of {what}", target), file=sys.stderr)
    renderer.handle(ReportWritten(str(target.absolute()), time.time()))


def _told(
    args: argparse.Namespace,
    report: RunReport,
    machine_events: Sequence[MachineEvent],
    state: Path,
    renderer: Renderer,
    *,
    kept: bool,
) -> None:
    """The run's summary on stderr and its ``--report`` page: after a run that ended, or one
    stranded with no machine left (what it did until then, and the machines that fell)."""
    # Quiet when nothing was to do; and where stderr is for a program (internal-json).
    people = not (_quiet(args) or args.json or nix_json(args))
    if people and (report.finished or machine_events):
        render_summary([*report.finished, *machine_events], sys.stderr, logs_kept=kept)
    if args.report is not None:
        _write_report(state, report.run_id, args.report, renderer, kept=kept)


def _results(args: argparse.Namespace, graph: DrvGraph) -> None:
    """The result links, then the output paths on stdout, as nix-build makes and prints
    them (a link that cannot be made prints none; a reader that has gone reads none)."""
    links = out_links(graph.roots, graph, args.out_link or "result")
    if args.out_link is not None:
        add_roots(links)
    if args.json:
        return
    with unless_gone(sys.stdout):  # its reader gone (`| head -1`): the build stands, as Nix's
        for path, _ in links:
            print(path, flush=True)


def build(
    args: argparse.Namespace,
    pool: Pool,
    evaluate: Callable[[], list[tuple[str, str]]],
    state: Path,
    *,
    backoff: Mapping[str, Health],
    run: Callable[[Coroutine[Any, Any, Built]], Built],
    shared: Path | None,
    kept: bool = True,
) -> int:
    """``offload build`` once its settings are read: the run, its summary, the results
    (``shared``: where ssh masters are kept for the next run, as ``cli.build`` started them;
    ``kept``: whether ``state`` outlives the run)."""
    renderer = _renderer(args)
    machine_events: list[MachineEvent] = []
    emit = _emitter(renderer, machine_events, warn=_warnings_apart(args))

    # Evaluated while the connections to the builders open (run_build).
    try:
        with _report_unwritten_said(args.report):
            report, graph = execute(
                evaluate,
                pool,
                state,
                emit=emit,
                close=renderer.close,
                # -k, or Nix's keep-going setting (nix.conf, NIX_CONFIG, --option), as nix-build
                # reads it.
                keep_going=args.keep_going or nix_bool(pool.nix_settings.get("keep-going")),
                retry_now=args.on,
                fetch_all=args.fetch_all,
                backoff=backoff,
                run=run,
                shared=shared,
                # Nothing is built for it: Nix checks what was built before.
                check=args.mode == "check",
                nix_said=_nix_lines if nix_json(args) else None,
            )
    except Stranded as stranded:
        _told(args, stranded.built[0], machine_events, state, renderer, kept=kept)
        raise
    _told(args, report, machine_events, state, renderer, kept=kept)
    if report.failed:
        shown = _print_logs(args) and not args.json
        # As nix-build: the tail only where the log was not shown (-Q, --log-format bar,
        # --json); shown, it came twice. With internal-json it went as the activity's lines.
        if not shown and not nix_json(args):
            _print_log_tails(BuildLogs(state / "logs"), report.failed, _log_lines(pool))
        raise build_failed(report, logs_kept=kept, logs_shown=shown)
    if report.skipped:
        msg = f"{len(report.skipped)} derivation(s) were not built"
        raise OffloadError(msg)
    if args.mode is not None:
        realise_again(graph.roots, args.mode, pool.local_env(), realise_flags(args))
    _results(args, graph)
    forget_old(state)
    return 0
