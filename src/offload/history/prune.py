"""What the history forgets: old runs and builds, never what estimates are learned from.

A history would otherwise grow for ever (about 7 KB per ``offload-hook`` build with 40 inputs,
mostly dependency edges: a builder serving a team adds gigabytes a year). A build is kept while
it is younger than ``KEEP_DAYS`` and among the newest ``KEEP_BUILDS``; past that it goes with its
phases, and a run (``offload build``'s) goes with its dependency edges once it ended before the
same cutoff (so have all its builds). The last ``KEEP_PER_NAME`` successful builds of each name
on each machine stay whatever their age, since estimates are learned from them
(``History.durations`` reads no more):
a package built twice a year keeps its measured duration rather than falling back to a guess.
Those that outlive their run keep their record under the run id ``PRUNED_RUN`` (no run of that
id is ever listed) and lose their phases. Dependency edges of the hook's builds feed only the
tails (the newest 20,000 edges), so they go with their builds' age whether or not the build
stays for its estimate.

Pruning runs at most once per ``PRUNE_EVERY`` (the time of the last is kept in the database),
by whoever keeps a run or reads the hook's tails, in transactions of ``_BATCH`` builds so that
hooks recording builds meanwhile wait a moment, not for the whole pass. Freed pages go back to
the file system where the database was created with incremental auto-vacuum (every one made by
this version); an older file stops growing instead.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "KEEP_BUILDS",
    "KEEP_DAYS",
    "KEEP_PER_NAME",
    "PRUNED_RUN",
    "PRUNE_EVERY",
    "Pruned",
    "prune",
]

KEEP_DAYS = 90
KEEP_BUILDS = 100_000
KEEP_PER_NAME = 5  # as many as History.durations takes the median of
PRUNE_EVERY = 86_400.0  # seconds
PRUNED_RUN = "pruned"
_BATCH = 5_000
_DAY = 86_400.0

_V = TypeVar("_V")
Transaction = Callable[[], AbstractContextManager[sqlite3.Connection]]


@dataclass(frozen=True)
class Pruned:
    """What one pass forgot."""

    builds: int
    runs: int
    edges: int


def cutoff(db: sqlite3.Connection, now: float, *, days: float, builds: int) -> float:
    """The time before which builds and runs go: ``days`` ago, or the end of the newest
    ``builds``-th build if later (it stays)."""
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
    days: float = KEEP_DAYS,
    builds: int = KEEP_BUILDS,
) -> Pruned:
    """Forget what ended before the cutoff (module docstring); ``transaction`` opens one
    (``BEGIN IMMEDIATE``) on ``db``."""
    before = cutoff(db, now, days=days, builds=builds)
    edges = _forget_hook_edges(db, transaction, before)
    gone_runs = [
        str(run_id)
        for (run_id,) in db.execute("SELECT run_id FROM runs WHERE finished < ?", (before,))
    ]
    for chunk in _batches(gone_runs):
        marks = ",".join("?" * len(chunk))
        with transaction() as tx:
            edges += tx.execute(
                f"DELETE FROM deps WHERE run_id IN ({marks})",  # noqa: S608 (only "?"s)
                chunk,
            ).rowcount
            tx.execute(f"DELETE FROM runs WHERE run_id IN ({marks})", chunk)  # noqa: S608
    forgotten = _forget_builds(db, transaction, before)
    _adopt_orphans(db, transaction, before)
    # Nothing where auto_vacuum is off. Not execute(): Python's sqlite3 steps a statement
    # without result columns once, and this one frees a page per step.
    db.executescript("PRAGMA incremental_vacuum;")
    return Pruned(builds=forgotten, runs=len(gone_runs), edges=edges)


def _forget_hook_edges(db: sqlite3.Connection, transaction: Transaction, before: float) -> int:
    """The hook's dependency edges of builds that ended before ``before``."""
    old = [
        str(run_id)
        for (run_id,) in db.execute(
            "SELECT DISTINCT run_id FROM builds WHERE run_id LIKE 'hook-%' AND finished < ?",
            (before,),
        )
    ]
    edges = 0
    for chunk in _batches(old):
        with transaction() as tx:
            edges += tx.execute(
                f"DELETE FROM deps WHERE run_id IN ({','.join('?' * len(chunk))})",  # noqa: S608
                chunk,
            ).rowcount
    return edges


def _forget_builds(db: sqlite3.Connection, transaction: Transaction, before: float) -> int:
    """Builds (and their phases) that ended before ``before`` and teach no estimate."""
    old = [
        int(build_id)
        for (build_id,) in db.execute(
            "SELECT id FROM (SELECT id, finished, status = 'built' AND ROW_NUMBER() OVER"
            " (PARTITION BY pname, machine, status = 'built' ORDER BY finished DESC) <= ?"
            " AS teaches FROM builds) WHERE finished < ? AND NOT teaches",
            (KEEP_PER_NAME, before),
        )
    ]
    for chunk in _batches(old):
        marks = ",".join("?" * len(chunk))
        with transaction() as tx:
            tx.execute(f"DELETE FROM phases WHERE build_id IN ({marks})", chunk)  # noqa: S608
            tx.execute(f"DELETE FROM builds WHERE id IN ({marks})", chunk)  # noqa: S608
    return len(old)


def _adopt_orphans(db: sqlite3.Connection, transaction: Transaction, before: float) -> None:
    """Builds kept for their estimate whose run is gone (or that never had a row: schema 1's):
    under ``PRUNED_RUN``, without phases (``History.runs`` makes a run up from builds of no
    run, which would show a few survivors as a run)."""
    orphans = [
        int(build_id)
        for (build_id,) in db.execute(
            "SELECT id FROM builds WHERE finished < ? AND run_id NOT LIKE 'hook-%'"
            " AND run_id != ? AND run_id NOT IN (SELECT run_id FROM runs)",
            (before, PRUNED_RUN),
        )
    ]
    for chunk in _batches(orphans):
        marks = ",".join("?" * len(chunk))
        with transaction() as tx:
            tx.execute(f"DELETE FROM phases WHERE build_id IN ({marks})", chunk)  # noqa: S608
            tx.execute(
                f"UPDATE builds SET run_id = ? WHERE id IN ({marks})",  # noqa: S608
                [PRUNED_RUN, *chunk],
            )


def _batches(values: list[_V]) -> Iterator[list[_V]]:
    for start in range(0, len(values), _BATCH):
        yield values[start : start + _BATCH]
