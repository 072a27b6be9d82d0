"""The history database: SQLite in the state directory, the only module that imports sqlite3.

Schema changes are migrations keyed by ``PRAGMA user_version``. Several offload processes may
write at once (a build and hooks), so the database runs in WAL mode with a busy timeout.
Estimates are learned per derivation name without version and per machine; a machine with no
record for a name borrows the others' records scaled by relative speed at the caller.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Self

from offload.errors import StoreError
from offload.history.records import BuildRecord

__all__ = ["History"]

_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE builds (
        id INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL,
        drv_path TEXT NOT NULL,
        pname TEXT NOT NULL,
        machine TEXT NOT NULL,
        started REAL NOT NULL,
        finished REAL NOT NULL,
        status TEXT NOT NULL,
        bytes_sent INTEGER NOT NULL DEFAULT 0,
        bytes_received INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX builds_pname_machine ON builds (pname, machine, finished);
    CREATE INDEX builds_drv ON builds (drv_path, finished);
    """,
)


class History:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self._db = sqlite3.connect(path, timeout=30, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot open the history database: {exc}") from exc
        try:
            path.chmod(0o600)
            self._db.execute("PRAGMA journal_mode=WAL")
            # No fsync per commit (WAL stays consistent; a power cut may lose the last builds'
            # records, which are estimates, not data): the hook records one build per commit.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _migrate(self) -> None:
        with self._transaction() as db:
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version > len(_MIGRATIONS):
                msg = f"{self.path}: written by a newer offload (schema {version})"
                raise StoreError(msg, hint="upgrade offload or move the file away")
            for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")

    def record(self, records: Iterable[BuildRecord]) -> None:
        rows = [
            (
                r.run_id,
                r.drv_path,
                r.pname,
                r.machine,
                r.started,
                r.finished,
                r.status,
                r.bytes_sent,
                r.bytes_received,
            )
            for r in records
        ]
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO builds (run_id, drv_path, pname, machine, started, finished,"
                " status, bytes_sent, bytes_received) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def durations(self, pnames: Iterable[str], *, per_name: int = 5) -> dict[str, dict[str, float]]:
        """Median of the last ``per_name`` successful build times, by name then machine."""
        result: dict[str, dict[str, float]] = {}
        names = sorted(set(pnames))
        with closing(self._db.cursor()) as cur:
            for start in range(0, len(names), 500):
                chunk = names[start : start + 500]
                marks = ",".join("?" * len(chunk))
                # Only "?" placeholders are formatted in; the names are bound parameters.
                rows = cur.execute(
                    "SELECT pname, machine, finished - started FROM builds"  # noqa: S608
                    f" WHERE status = 'built' AND pname IN ({marks})"
                    " ORDER BY finished DESC",
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

    def builds(self, *, drv_path: str | None = None, limit: int = 100) -> list[BuildRecord]:
        query = (
            "SELECT run_id, drv_path, pname, machine, started, finished, status, bytes_sent,"
            " bytes_received FROM builds"
        )
        params: tuple[object, ...] = ()
        if drv_path is not None:
            query += " WHERE drv_path = ?"
            params = (drv_path,)
        query += " ORDER BY finished DESC LIMIT ?"
        rows = self._db.execute(query, (*params, limit)).fetchall()
        return [BuildRecord(*row) for row in rows]
