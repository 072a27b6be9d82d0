"""What the history forgets: old runs and builds, never what estimates are learned from.

A history would otherwise grow for ever (about 7 KB per ``offload-hook`` build with 40 inputs,
mostly dependency edges: a builder serving a team adds gigabytes a year). The cutoff is
``KEEP_DAYS`` ago, or the end of the ``KEEP_BUILDS``-th newest build if that is later. A run
(``offload build``'s) that ended before it goes, with its dependency edges and its builds; a
build of no run kept (the hook's, schema 1's, or one that outlived its run) that ended before it
goes with its phases. Only whole runs go, so a run still listed keeps all its builds. Whatever
its age, a build among the last ``KEEP_PER_NAME`` successful ones of its name on its machine
stays, since estimates are learned from exactly those (``History.durations``): a package built
twice a year keeps its measured duration rather than a guess. Those that outlive their run keep
their record under the run id ``PRUNED_RUN`` (no run of that id is ever listed) without their
phases. So the builds kept number ``KEEP_BUILDS`` plus five per name and machine at most. The
hook's dependency edges feed only the tails, which read the newest 20,000 edges: all but the
newest ``KEEP_EDGES`` go, whatever their age.

A pass runs at most once per ``PRUNE_EVERY`` (the time of the last is kept in the database; a
pass that never ended, stopped by a signal or killed, is due again ``PRUNE_CLAIM`` after it
began) and for at most ``budget`` seconds: each step is a transaction of at most ``BATCH``
rows, so a hook recording a build meanwhile waits milliseconds, and a pass cut by its budget
is taken up where it stopped by the next (its place, the end of the last build it looked at, is
kept too). Freed pages go back to the file system, a few at a time, where the database was made
with incremental auto-vacuum (every one made by this version); an older file stops growing
instead.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

__all__ = [
    "BATCH",
    "KEEP_BUILDS",
    "KEEP_DAYS",
    "KEEP_EDGES",
    "KEEP_PER_NAME",
    "PRUNED_RUN",
    "PRUNE_CLAIM",
    "PRUNE_EVERY",
    "Pruned",
    "prune",
]

KEEP_DAYS = 90
KEEP_BUILDS = 100_000
KEEP_EDGES = 100_000
KEEP_PER_NAME = 5  # as many as History.durations takes the median of
PRUNE_EVERY = 86_400.0  # seconds
# How long a pass's claim holds before it ends: a pass stopped by a signal, or killed, never
# ends, and is due again this long after it began (a pass lasts seconds at most: its budget).
PRUNE_CLAIM = 600.0  # seconds
PRUNED_RUN = "pruned"
BATCH = 500  # rows per statement: SQLite before 3.32 binds at most 999 parameters
_VACUUM_PAGES = 256
_DAY = 86_400.0
# The hook's run ids, as an index range (LIKE cannot use the index: it ignores case).
_HOOK_IDS = "run_id >= 'hook-' AND run_id < 'hook.'"

Transaction = Callable[[], AbstractContextManager[sqlite3.Connection]]


@dataclass(frozen=True)
class Pruned:
    """What one pass forgot, and whether it got to the end (else the next takes it up)."""

    builds: int = 0
    runs: int = 0
    edges: int = 0
    done: bool = True


@dataclass
class _Pass:
    db: sqlite3.Connection
    transaction: Transaction
    deadline: float
    builds: int = 0
    runs: int = 0
    edges: int = 0

    def timed_out(self) -> bool:
        """Out of time: asked after each step, so every pass gets somewhere."""
        return time.monotonic() > self.deadline

    def result(self, *, done: bool) -> Pruned:
        return Pruned(self.builds, self.runs, self.edges, done)


def cutoff(db: sqlite3.Connection, now: float, *, days: float, builds: int) -> float:
    """The time before which runs and builds go (module docstring)."""
    found = now - days * _DAY
    row = db.execute(
        "SELECT finished FROM builds ORDER BY finished DESC LIMIT 1 OFFSET ?", (builds - 1,)
    ).fetchone()
    return found if row is None else max(found, float(row[0]))


def prune(
    db: sqlite3.Connection,
    transaction: Transaction,
    now: float,
    *,
    budget: float,
    start: float = 0.0,
    days: float = KEEP_DAYS,
    builds: int = KEEP_BUILDS,
) -> tuple[Pruned, float]:
    """Forget what ended before the cutoff (module docstring), looking at builds that ended
    from ``start`` on, for about ``budget`` seconds; ``transaction`` opens one (``BEGIN
    IMMEDIATE``) on ``db``. What it forgot, and where the next pass starts (0 when done)."""
    step = _Pass(db, transaction, time.monotonic() + budget)
    before = cutoff(db, now, days=days, builds=builds)
    if not (_forget_edges(step) and _forget_runs(step, before)):
        return step.result(done=False), start
    reached = _forget_builds(step, before, start)
    if reached is not None:
        return step.result(done=False), reached
    return step.result(done=_vacuum(step)), 0.0


def _forget_edges(step: _Pass) -> bool:
    """The hook's edges older than the newest ``KEEP_EDGES``; False if out of time."""
    row = step.db.execute(
        "SELECT rowid FROM deps ORDER BY rowid DESC LIMIT 1 OFFSET ?", (KEEP_EDGES - 1,)
    ).fetchone()
    if row is None:
        return True
    while True:
        with step.transaction() as tx:
            gone = tx.execute(
                "DELETE FROM deps WHERE rowid IN (SELECT rowid FROM deps"  # noqa: S608
                f" WHERE {_HOOK_IDS} AND rowid < ? LIMIT ?)",
                (row[0], BATCH),
            ).rowcount
        step.edges += gone
        if gone < BATCH:
            return True
        if step.timed_out():
            return False


def _forget_runs(step: _Pass, before: float) -> bool:
    """Runs that ended before ``before``, their edges and the builds that teach nothing; the
    others under ``PRUNED_RUN`` without phases. False if out of time."""
    while True:
        gone = [
            str(run_id)
            for (run_id,) in step.db.execute(
                "SELECT run_id FROM runs WHERE finished < ? LIMIT 50", (before,)
            )
        ]
        if not gone:
            return True
        for run_id in gone:
            with step.transaction() as tx:
                step.edges += tx.execute("DELETE FROM deps WHERE run_id = ?", (run_id,)).rowcount
                ids = [
                    int(i)
                    for (i,) in tx.execute("SELECT id FROM builds WHERE run_id = ?", (run_id,))
                ]
                step.builds += _delete_untaught(tx, ids)
                tx.execute("UPDATE builds SET run_id = ? WHERE run_id = ?", (PRUNED_RUN, run_id))
                tx.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
            step.runs += 1
        if step.timed_out():
            return False


def _forget_builds(step: _Pass, before: float, start: float) -> float | None:
    """Builds of no kept run that ended before ``before``, oldest first from ``start``; None
    when all are looked at, else where the next pass takes up."""
    at, last_id = start, -1
    while True:
        rows = step.db.execute(
            "SELECT id, finished FROM builds WHERE finished < ? AND (finished, id) > (?, ?)"
            " AND run_id NOT IN (SELECT run_id FROM runs) ORDER BY finished, id LIMIT ?",
            (before, at, last_id, BATCH),
        ).fetchall()
        if not rows:
            return None
        ids = [int(build_id) for build_id, _ in rows]
        with step.transaction() as tx:
            step.builds += _delete_untaught(tx, ids)
            # Schema 1's survivors too: History.runs would make a run up from them.
            tx.execute(
                f"UPDATE builds SET run_id = ? WHERE id IN ({','.join('?' * len(ids))})"  # noqa: S608
                f" AND NOT ({_HOOK_IDS})",
                [PRUNED_RUN, *ids],
            )
        at, last_id = float(rows[-1][1]), int(rows[-1][0])
        if step.timed_out():
            return at


def _delete_untaught(tx: sqlite3.Connection, ids: list[int]) -> int:
    """Delete those of ``ids`` no estimate is learned from, and every one's phases; how many."""
    gone = 0
    for chunk in _batches(ids):
        marks = ",".join("?" * len(chunk))
        tx.execute(f"DELETE FROM phases WHERE build_id IN ({marks})", chunk)  # noqa: S608
        untaught = [
            int(build_id)
            for (build_id,) in tx.execute(
                f"SELECT id FROM builds b WHERE id IN ({marks}) AND NOT (status = 'built' AND"  # noqa: S608
                " (SELECT COUNT(*) FROM (SELECT 1 FROM builds n WHERE n.pname = b.pname"
                " AND n.machine = b.machine AND n.status = 'built' AND (n.finished, n.id) >"
                " (b.finished, b.id) LIMIT ?)) < ?)",
                [*chunk, KEEP_PER_NAME, KEEP_PER_NAME],
            )
        ]
        if untaught:
            marks = ",".join("?" * len(untaught))
            tx.execute(f"DELETE FROM builds WHERE id IN ({marks})", untaught)  # noqa: S608
        gone += len(untaught)
    return gone


def _vacuum(step: _Pass) -> bool:
    """Give free pages back, a few per transaction; False if out of time first."""
    if step.db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
        return True  # an older file: its free pages are reused, not given back
    while step.db.execute("PRAGMA freelist_count").fetchone()[0] > 0:
        # Not execute(): Python's sqlite3 steps a statement without result columns once, and
        # this one frees a page per step.
        step.db.executescript(f"PRAGMA incremental_vacuum({_VACUUM_PAGES});")
        if step.timed_out():
            return False
    _cut_log(step.db)
    return True


def _cut_log(db: sqlite3.Connection) -> None:
    """Cut the write-ahead log back, if no reader is in it: a TRUNCATE checkpoint waits for
    readers under the busy timeout (30 s) and holds the writers' lock meanwhile, which
    stalled every other run's records and ignored the pass's budget. Not now is fine: the
    next checkpoint that finds the log free resets it (``journal_size_limit``)."""
    (waited,) = db.execute("PRAGMA busy_timeout").fetchone()
    db.execute("PRAGMA busy_timeout = 0")
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        db.execute(f"PRAGMA busy_timeout = {int(waited)}")


def _batches(values: list[int]) -> Iterator[list[int]]:
    for first in range(0, len(values), BATCH):
        yield values[first : first + BATCH]
