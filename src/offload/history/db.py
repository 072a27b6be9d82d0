"""The history database: SQLite in the state directory (it, ``rows``, ``prune`` and ``faults``,
what its errors say, are the modules that import sqlite3).

Schema changes are migrations (``offload.history.schema``). Several offload processes may write
at once (a build and hooks), so the database runs in WAL mode with a busy timeout (a wait
longer than a moment is said on stderr, as another process holding it looks like a hang). Estimates
are learned per derivation name without version and per machine; a machine with no record for
a name borrows the others' records scaled by relative speed at the caller.

Runs (``offload build``) have a row in ``runs`` with their builds' dependencies in ``deps``;
each build's phases are rows of ``phases``. Builds of Nix's hook belong to no run (their
``run_id`` starts with ``hook-``), their input derivations in ``deps`` under that id; builds
recorded before runs were (schema 1) belong to runs that ``runs`` makes up from them, without
machines or bound. Old records are forgotten, except what estimates are learned from
(``offload.history.prune``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Concatenate, ParamSpec, Self, TypeVar

from offload.errors import StoreError
from offload.history.faults import damaged, full_disk_error, not_a_file, open_hint
from offload.history.prune import KEEP_BUILDS, PRUNE_CLAIM, PRUNE_EVERY, PRUNED_RUN, Pruned, prune
from offload.history.records import HOOK_ID_PREFIX, BuildRecord, RunRecord
from offload.history.rows import (
    build_row,
    chunks,
    insert_builds,
    legacy_run,
    like_escape,
    machine_row,
    phases_of,
    run_row,
)
from offload.history.schema import BUILD_COLUMNS, EXTRA_NAMES, EXTRAS, MIGRATIONS

__all__ = ["History"]

_T = TypeVar("_T")
_P = ParamSpec("_P")


def _guarded(
    method: Callable[Concatenate[History, _P], _T],
) -> Callable[Concatenate[History, _P], _T]:
    """A damaged file (sqlite3's DatabaseError, a record that is not JSON or not UTF-8, JSON
    without the fields it should have, a value no record holds: ``rows``) is a StoreError."""

    def guarded(self: History, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return method(self, *args, **kwargs)
        except (sqlite3.DatabaseError, ValueError, KeyError, TypeError, ArithmeticError) as exc:
            raise damaged(self.path, exc) from exc

    functools.update_wrapper(guarded, method)
    return guarded


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """``path`` opened to be read, changing nothing.

    SQLite opens a WAL database only with its ``-shm`` file, which the last connection to
    close removes; where it is gone and cannot be made (a read-only mount, another user's
    directory) no process has the file open, so it is read as immutable: as it is on disk (the
    ``-wal`` of a writer that crashed there, if any, is not read: it cannot be applied). So is
    one whose ``-shm`` cannot be sized on a full disk, where no writer commits either."""
    uri = path.absolute().as_uri()
    db = sqlite3.connect(f"{uri}?mode=ro", timeout=30, isolation_level=None, uri=True)
    try:
        db.execute("PRAGMA user_version").fetchone()
    except sqlite3.OperationalError as exc:
        db.close()
        # Its -shm refused: "cannot open" on a read-only mount, "read-only directory" in
        # another user's; "disk I/O error" on a full disk, where it could not be sized.
        refused = exc.sqlite_errorcode in (
            sqlite3.SQLITE_CANTOPEN,
            sqlite3.SQLITE_READONLY_DIRECTORY,
        ) and not os.access(path.parent, os.W_OK)
        if not (refused or full_disk_error(exc.sqlite_errorcode, path)) or not path.is_file():
            raise
        db = sqlite3.connect(f"{uri}?immutable=1", timeout=30, isolation_level=None, uri=True)
    return db


_WAL_LIMIT = 64 * 1024 * 1024
# Seconds of waiting for another process's lock before the user is told: a commit of another
# run's takes milliseconds, so a wait this long is someone holding the file (a hung offload, a
# sqlite3 shell), and a silent 30 s looks like a hang.
NOTE_BUSY_AFTER = 1.5
# Seconds a new run waits for others that are switching a new database to WAL.
_OPEN_PATIENCE = 10.0


class History:
    """The database at ``path``, made and brought to this version's schema if need be; or,
    ``read_only``, read as it is (the nix-daemon's hook's, one in a directory this user may not
    write), changing nothing, not even its schema."""

    def __init__(
        self,
        path: Path,
        *,
        read_only: bool = False,
        wait: float = 30.0,
        on_busy: Callable[[str], None] | None = None,
    ) -> None:
        """``wait``: seconds a statement waits for another process's lock (a hook's event
        loop cannot wait long); ``on_busy`` is told, once, when a wait for it passes
        ``NOTE_BUSY_AFTER`` (default: a note on stderr)."""
        self.path = path
        self.read_only = read_only
        self._wait = wait
        self._on_busy = on_busy or _note_busy
        self._said_busy = False
        if (odd := not_a_file(path)) is not None:
            raise odd
        try:
            if read_only:
                self._db = _connect_read_only(path)
            else:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                self._db = sqlite3.connect(path, timeout=wait, isolation_level=None)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(
                f"{path}: cannot open the history database: {exc}", hint=open_hint(path)
            ) from exc
        try:
            if read_only:
                self._check_version()
            else:
                # Another user's (left by `sudo -E offload build`): read as it is, if it may be.
                with contextlib.suppress(OSError):  # not ours, or a read-only file system
                    path.chmod(0o600)
                self._open()
        except (sqlite3.DatabaseError, ValueError) as exc:  # ValueError: text that is not UTF-8
            self._db.close()
            raise damaged(path, exc) from exc
        except BaseException:
            self._db.close()
            raise

    def _open(self) -> None:
        if self._db.execute("PRAGMA page_count").fetchone()[0] == 0:
            # A new file: pages that pruning frees go back to the file system (``prune``);
            # only possible before the first table.
            self._db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        # Runs that start together on a new database race to switch it to WAL; a loser was
        # seen answered "locked" in spite of the busy timeout (test_concurrent_runs, 2 of 4
        # CI runs): ask again for a while.
        deadline = time.monotonic() + min(_OPEN_PATIENCE, self._wait)
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        # No fsync per commit (WAL stays consistent; a power cut may lose the last builds'
        # records, which are estimates, not data): the hook records one build per commit.
        self._db.execute("PRAGMA synchronous=NORMAL")
        # The log a checkpoint leaves is cut back to this (a pruning pass grows it).
        self._db.execute(f"PRAGMA journal_size_limit = {_WAL_LIMIT}")
        self._migrate()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._begin()
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _begin(self) -> None:
        """BEGIN IMMEDIATE: where a writer waits for another's lock (reads of a WAL database
        do not wait). Asked with a short timeout first, so that a longer wait is said
        before it is waited out; a BEGIN refused as busy started nothing and is asked again."""
        if self._wait <= NOTE_BUSY_AFTER:
            self._db.execute("BEGIN IMMEDIATE")
            return
        try:
            if self._began_within(NOTE_BUSY_AFTER):
                return
            if not self._said_busy:
                self._said_busy = True
                self._on_busy(
                    f"history is busy (another offload?), waiting up to {self._wait:g} s:"
                    f" {self.path}"
                )
            self._db.execute(f"PRAGMA busy_timeout = {round(self._wait * 1000)}")
            # The whole wait from here: what the note promised.
            self._db.execute("BEGIN IMMEDIATE")
        finally:
            self._db.execute(f"PRAGMA busy_timeout = {round(self._wait * 1000)}")

    def _began_within(self, seconds: float) -> bool:
        """Whether BEGIN IMMEDIATE took the lock within ``seconds``."""
        self._db.execute(f"PRAGMA busy_timeout = {round(seconds * 1000)}")
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            # Its extended code (SQLITE_BUSY_RECOVERY, _SNAPSHOT...): busy in the low byte.
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            return False
        return True

    def _up_to_date(self) -> bool:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        marks = ",".join("?" * len(EXTRA_NAMES))
        query = f"SELECT count(*) FROM sqlite_master WHERE name IN ({marks})"  # noqa: S608
        (made,) = self._db.execute(query, EXTRA_NAMES).fetchone()
        return bool(version == len(MIGRATIONS) and made == len(EXTRA_NAMES))

    def _check_version(self) -> None:
        """A file read as it is must be of this version's schema: older lacks what is read."""
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > len(MIGRATIONS):
            msg = f"{self.path}: written by a newer offload (schema {version})"
            raise StoreError(msg, hint="upgrade offload")
        if version == 0:  # made, never written: a first write cut short (a full disk)
            msg = f"{self.path}: holds no history yet (its tables were never written)"
            raise StoreError(msg, hint="the next build that can write there writes them")
        if version < len(MIGRATIONS):
            msg = f"{self.path}: written by an older offload (schema {version})"
            raise StoreError(msg, hint="its next build with this offload brings it up to date")

    def _migrate(self) -> None:
        # Read first: a file already of this schema needs no write lock, and a reader
        # (offload history, report, a dry run) must not wait for a writer's, as WAL lets it.
        if self._up_to_date():
            return
        with self._transaction() as db:
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version > len(MIGRATIONS):
                msg = f"{self.path}: written by a newer offload (schema {version})"
                raise StoreError(msg, hint="upgrade offload or move the file away")
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                _script(db, script)
                db.execute(f"PRAGMA user_version = {number}")
            _script(db, EXTRAS)

    @_guarded
    def record(
        self, records: Iterable[BuildRecord], deps: Mapping[str, Iterable[str]] | None = None
    ) -> None:
        """Builds of no run (``offload-hook``'s), with the input derivations of each
        (``deps``, by derivation: kept under that build's ``run_id``, as a run's are)."""
        records = list(records)
        run_of = {r.drv_path: r.run_id for r in records}
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO deps (run_id, drv_path, dep) VALUES (?, ?, ?)",
                [
                    (run_of[drv], drv, dep)
                    for drv, ins in (deps or {}).items()
                    if drv in run_of  # only the builds recorded here
                    for dep in ins
                ],
            )
            insert_builds(db, records)

    @_guarded
    def prune_if_due(
        self,
        now: float,
        *,
        budget: float,
        every: float = PRUNE_EVERY,
        builds: int = KEEP_BUILDS,
    ) -> Pruned | None:
        """Forget old runs and builds for about ``budget`` seconds, keeping the newest
        ``builds`` (``offload.history.prune``), unless the last pass ended less than ``every``
        seconds ago; None when not due. A pass cut by its budget is due again at once; one
        that never ends (a signal, a kill) ``PRUNE_CLAIM`` seconds after it began."""
        with self._transaction() as db:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if "pruned" in meta and 0 <= now - float(meta["pruned"]) < every:
                return None
            # Claimed first: two processes due at once do not both prune. For a while only: a
            # pass stopped by a signal (the command stops: cli.interrupts) or killed never
            # writes its end, and its claim for a whole PRUNE_EVERY left it for tomorrow's run.
            claim = now - every + min(PRUNE_CLAIM, every)
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('pruned', ?)", (claim,))
        start = float(meta.get("prune_from", 0.0))
        pruned, start = prune(
            self._db, self._transaction, now, budget=budget, start=start, builds=builds
        )
        with self._transaction() as db:
            rows = [("prune_from", start), ("pruned", now if pruned.done else now - every)]
            db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", rows)
        return pruned

    @_guarded
    def recent_deps(self, limit: int = 20000) -> list[tuple[str, str]]:
        """The last ``limit`` dependency edges recorded, (derivation, input derivation), by
        runs and ``offload-hook`` alike, the newest first."""
        with closing(self._db.cursor()) as cur:
            rows = cur.execute(
                "SELECT drv_path, dep FROM deps ORDER BY rowid DESC LIMIT ?", (limit,)
            ).fetchall()
        return [(str(drv), str(dep)) for drv, dep in rows]

    @_guarded
    def record_run(self, run: RunRecord, builds: Iterable[BuildRecord]) -> None:
        """A run and its builds (their ``run_id`` is the run's), all or nothing."""
        machines = [machine_row(m) for m in run.machines]
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO runs (run_id, started, finished, asked, outcome,"
                " machines, estimate, lower_bound) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run.run_id,
                    run.started,
                    run.finished,
                    json.dumps(list(run.asked)),
                    run.outcome,
                    json.dumps(machines),
                    run.estimate,
                    run.lower_bound,
                ),
            )
            db.executemany(
                "INSERT INTO deps (run_id, drv_path, dep) VALUES (?, ?, ?)",
                [(run.run_id, drv, dep) for drv, deps in run.deps.items() for dep in deps],
            )
            insert_builds(db, (dataclasses.replace(b, run_id=run.run_id) for b in builds))

    @_guarded
    def durations(self, pnames: Iterable[str], *, per_name: int = 5) -> dict[str, dict[str, float]]:
        """Median of the last ``per_name`` successful build times, by name then machine."""
        result: dict[str, dict[str, float]] = {}
        names = sorted(set(pnames))
        with closing(self._db.cursor()) as cur:
            for chunk, marks in chunks(names):
                # Only "?" placeholders are formatted in; the names are bound parameters.
                rows = cur.execute(
                    "SELECT pname, machine, finished - started FROM builds"  # noqa: S608
                    f" WHERE status = 'built' AND pname IN ({marks})"
                    " ORDER BY finished DESC, id DESC",  # as prune orders what it keeps
                    chunk,
                ).fetchall()
                seen: dict[tuple[str, str], list[float]] = {}
                for pname, machine, duration in rows:
                    bucket = seen.setdefault((pname, machine), [])
                    if len(bucket) < per_name:
                        bucket.append(float(duration))
                for (pname, machine), values in seen.items():
                    values.sort()
                    result.setdefault(pname, {})[machine] = values[len(values) // 2]
        return result

    @_guarded
    def builds(
        self,
        *,
        drv_path: str | None = None,
        run_id: str | None = None,
        machine: str | None = None,
        name: str | None = None,
        since: float | None = None,
        hook: bool = False,
        limit: int | None = 100,
    ) -> list[BuildRecord]:
        """Builds, newest first, with their phases; ``name`` matches part of the .drv path,
        ``since`` keeps those finished then or later, ``hook`` only ``offload-hook``'s."""
        where: list[str] = ["run_id LIKE ?"] if hook else []
        params: list[object] = [f"{HOOK_ID_PREFIX}%"] if hook else []
        for clause, value in (
            ("drv_path = ?", drv_path),
            ("run_id = ?", run_id),
            ("machine = ?", machine),
            ("instr(drv_path, ?) > 0", name),
            ("finished >= ?", since),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        query = f"SELECT {BUILD_COLUMNS} FROM builds"  # noqa: S608 (constant columns)
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY finished DESC, id DESC LIMIT ?"
        params.append(-1 if limit is None else limit)
        with closing(self._db.cursor()) as cur:
            rows = cur.execute(query, params).fetchall()
            phases = phases_of(cur, [row[0] for row in rows])
        return [build_row(row, phases.get(row[0], ())) for row in rows]

    @_guarded
    def known(self) -> tuple[list[str], list[str]]:
        """The machines and the derivation names (without version) builds are kept under,
        sorted: what a filter that matched nothing could have meant."""
        with closing(self._db.cursor()) as cur:
            machines = cur.execute("SELECT DISTINCT machine FROM builds ORDER BY machine")
            found = [str(m) for (m,) in machines.fetchall() if m]
            pnames = cur.execute("SELECT DISTINCT pname FROM builds ORDER BY pname")
            return found, [str(p) for (p,) in pnames.fetchall() if p]

    @_guarded
    def runs(self, *, run_id: str | None = None, limit: int | None = 20) -> list[RunRecord]:
        """Runs, newest first (``run_id`` matches a prefix), made-up ones included; their
        ``deps`` are read only for one run asked by ``run_id``."""
        prefix = like_escape(run_id or "") + "%"
        with closing(self._db.cursor()) as cur:
            rows = cur.execute(
                "SELECT run_id, started, finished, asked, outcome, machines, estimate,"
                " lower_bound FROM runs WHERE run_id LIKE ? ESCAPE '\\'",
                (prefix,),
            ).fetchall()
            runs = [run_row(row) for row in rows]
            runs += [
                legacy_run(row)
                for row in cur.execute(
                    "SELECT run_id, MIN(started), MAX(finished), SUM(status = 'failed')"
                    " FROM builds WHERE run_id LIKE ? ESCAPE '\\' AND run_id NOT LIKE ?"
                    " AND run_id != ? AND run_id NOT IN (SELECT run_id FROM runs)"
                    " GROUP BY run_id",
                    (prefix, f"{HOOK_ID_PREFIX}%", PRUNED_RUN),
                ).fetchall()
            ]
            runs.sort(key=lambda r: r.started, reverse=True)
            runs = runs if limit is None else runs[:limit]
        if run_id is not None and len(runs) == 1:
            runs = [dataclasses.replace(runs[0], deps=self.inputs([runs[0].run_id]))]
        return runs

    @_guarded
    def inputs(self, run_ids: Iterable[str]) -> dict[str, tuple[str, ...]]:
        """drv -> the input derivations recorded with it by these runs (or hook builds)."""
        found: dict[str, list[str]] = {}
        with closing(self._db.cursor()) as cur:
            for chunk, marks in chunks(sorted(set(run_ids))):
                for drv, dep in cur.execute(
                    "SELECT drv_path, dep FROM deps"  # noqa: S608 (only "?"s)
                    f" WHERE run_id IN ({marks})",
                    chunk,
                ):
                    found.setdefault(drv, []).append(dep)
        return {drv: tuple(dict.fromkeys(deps)) for drv, deps in found.items()}

    @_guarded
    def counts(self, run_ids: Iterable[str]) -> dict[str, dict[str, int]]:
        """run -> build status -> how many builds of the run ended so."""
        found: dict[str, dict[str, int]] = {}
        ids = sorted(set(run_ids))
        with closing(self._db.cursor()) as cur:
            for chunk, marks in chunks(ids):
                for run_id, status, count in cur.execute(
                    "SELECT run_id, status, COUNT(*) FROM builds"  # noqa: S608 (only "?"s)
                    f" WHERE run_id IN ({marks}) GROUP BY run_id, status",
                    chunk,
                ):
                    found.setdefault(run_id, {})[status] = count
        return found


def _note_busy(text: str) -> None:
    sys.stderr.write(f"note: {text}\n")


def _script(db: sqlite3.Connection, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)
