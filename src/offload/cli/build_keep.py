"""What an ``offload build`` run keeps beyond itself, and what it does when it cannot.

History (estimates, and what ``offload history`` shows), the builders' health (backoff) and
the build logs are kept so that later runs do better; none of them is the build. A history
that cannot be opened (damaged, written by a newer offload, a full disk, a file of another
user's) leaves the run without estimates; one that cannot be asked mid-run, or written at
the end, and logs that cannot be kept, are warned of on stderr. The run's outputs and exit
code are the build's own either way, as a build stopped by Ctrl-C already was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from offload.backoff import Health, connections, save_backoff
from offload.build import DrvGraph
from offload.config.pool import Pool
from offload.errors import ConfigError, OffloadError
from offload.history.db import History
from offload.history.estimates import Estimator, estimator
from offload.history.nix_logs import NixLogs, default_drvs_dir
from offload.history.recorder import RunRecorder
from offload.names import LOCAL
from offload.scheduler.run import RunReport
from offload.slots import SlotLocks
from offload.state_location import spare_state

__all__ = [
    "PRUNE_BUDGET",
    "Built",
    "forget_old",
    "guarded_estimator",
    "keep_run",
    "opened_history",
    "speeds",
    "warn",
]

Built = tuple[RunReport, DrvGraph]


# Seconds a run may spend forgetting old history once its results are out (``forget_old``).
PRUNE_BUDGET = 0.3


def warn(text: str, hint: str | None = None) -> None:
    print(f"warning: {text}" + (f" (hint: {hint})" if hint else ""), file=sys.stderr)


def slot_locks(state: Path) -> SlotLocks:
    """The run's slot locks; where its state directory cannot hold them (read-only: a
    user's on a read-only mount), those under the temporary directory this user's hooks
    keep, said once: a run never fails for where it counts its slots."""
    try:
        slots = SlotLocks.default(state, program="build")
        if os.access(slots.directory, os.W_OK):  # EROFS too, which root's rights do not pass
            return slots
        why = "read-only"
    except OSError as exc:
        why = exc.strerror or str(exc)
    try:
        instead = Path(spare_state())
    except OSError as exc:
        raise ConfigError(
            f"{state / 'current-load'}: cannot hold build slots there ({why}), nor in the "
            f"temporary directory ({exc.strerror or exc})",
            hint="set OFFLOAD_STATE_DIR to a writable directory",
        ) from exc
    warn(
        f"{state / 'current-load'}: cannot hold build slots there ({why}); held in "
        f"{instead / 'current-load'} instead",
        "set OFFLOAD_STATE_DIR to a writable directory",
    )
    return SlotLocks.default(instead, program="build")


def speeds(pool: Pool) -> dict[str, float]:
    """Each machine's speed factor, the local machine's by its one name."""
    found = {m.name: m.speed_factor for m in pool.machines}
    if pool.local is not None:
        found[LOCAL] = pool.local.speed_factor
    return found


@contextlib.contextmanager
def opened_history(state: Path) -> Iterator[History | None]:
    """The history, or None (said) where it cannot be used: the run builds without it. One
    that cannot be written (a read-only file system, another user's) is read as it is: its
    estimates hold, and the run is not kept (said once)."""
    path = state / "history.sqlite"
    try:
        if path.is_file() and not (os.access(path, os.W_OK) and os.access(state, os.W_OK)):
            history = History(path, read_only=True)
            warn(f"{path}: cannot be written here; this run is kept in no history (its"
                 " estimates are read from it)", "make it a file this user may write")  # fmt: skip
        else:
            history = History(path)
    except (OffloadError, OSError) as exc:
        message, hint = (exc.message, exc.hint) if isinstance(exc, OffloadError) else (exc, None)
        warn(f"{message}; this run builds without estimates and is not kept in history", hint)
        yield None
        return
    with history:
        yield history


def guarded_estimator(history: History | None, pool: Pool) -> Estimator | None:
    """``estimator`` over ``history`` and Nix's build logs, guessing (no estimates, said) when
    it fails mid-run."""
    if history is None:
        return None
    estimate = estimator(history, speeds(pool), NixLogs(default_drvs_dir()))

    def guarded(pnames: Iterable[str]) -> Mapping[str, float]:
        try:
            return estimate(pnames)
        except OffloadError as exc:
            warn(f"{exc.message}; this run builds without estimates", exc.hint)
            return {}

    return guarded


def keep_run(
    state: Path, history: History | None, remember: RunRecorder, built: Built, pool: Pool
) -> None:
    """The run into history (what ``offload history`` shows), the builders' health into
    backoff; a failure to is a warning, never the run's error. A run stranded with no machine
    left keeps no backoff: the next run would only retry its dead builders at once, when
    nothing else can build, and back them off longer, a run's display for one error line."""
    report, graph = built
    try:
        if history is not None and not history.read_only:  # else said as it opened
            _record(history, remember, report, graph, pool)
    except (OffloadError, OSError) as exc:
        message, hint = (exc.message, exc.hint) if isinstance(exc, OffloadError) else (exc, None)
        warn(f"the run is not kept: {message}", hint)
    if report.stranded:
        return
    backoff = state / "backoff.json"
    try:
        changes, last_built = _health(report, pool)
        save_backoff(backoff, changes, time.time(), healthy_at=last_built)
    except OSError as exc:  # the run is kept all the same: said as what it is
        warn(*unkept_backoff(backoff, exc))


def unkept_backoff(backoff: Path, exc: OSError) -> tuple[str, str]:
    """The warning and its hint for a backoff file ``exc`` kept from being written."""
    said = f"{backoff}: the builders' backoff is not kept: {exc.strerror or exc}"
    if exc.errno == errno.ENOSPC:
        return said, f"free space on the file system that holds {backoff.parent} (df shows it)"
    return said, "make it a file offload can write"


def _health(report: RunReport, pool: Pool) -> tuple[dict[str, Health | None], dict[str, float]]:
    """The builders' backoff as the run learnt it, each entry with the line it failed with
    and when it was written (``offload.backoff``), and when each builder last built for the
    run: a backoff written since (offload-hook found it down) stays."""
    now, lines = time.time(), connections(pool)
    changes = {
        name: None if health is None else dataclasses.replace(
            health, connection=lines.get(name), since=now
        )
        for name, health in report.health.items()
    }  # fmt: skip
    built: dict[str, float] = {}
    for job in report.finished:
        if job.status == "built" and job.machine:
            built[job.machine] = max(built.get(job.machine, 0.0), job.finished)
    return changes, built


def _record(
    history: History, remember: RunRecorder, report: RunReport, graph: DrvGraph, pool: Pool
) -> None:
    slots = {m.name: m.max_jobs for m in pool.machines}
    if pool.local is not None:
        slots[LOCAL] = pool.local.max_jobs
    history.record_run(
        *remember.run(
            report,
            asked=[graph.drvs[drv].name for drv, _ in graph.roots if drv in graph.drvs],
            speeds=speeds(pool),
            slots=slots,
            deps={drv: tuple(d.input_drvs) for drv, d in graph.drvs.items()},
            finished=time.time(),
        )
    )


def forget_old(state: Path) -> None:
    """Forget old history if it is due (``History.prune_if_due``), for at most
    ``PRUNE_BUDGET`` seconds: once the run's results are out, so a run pays it only then. A
    signal meanwhile stops the command as anywhere else (``cli.interrupts``: its status is the
    first signal's, not the build's 0); the step it cut is rolled back, and the rest is left
    for a run ``PRUNE_CLAIM`` seconds on (the pass's claim). A history that cannot be opened
    was said to be unusable as the run began; a pass that fails is a warning."""
    try:
        history = History(state / "history.sqlite")
    except (OffloadError, OSError):
        return
    try:
        with history:
            history.prune_if_due(time.time(), budget=PRUNE_BUDGET)
    except OffloadError as exc:
        warn(f"old history not forgotten: {exc.message}", exc.hint)
