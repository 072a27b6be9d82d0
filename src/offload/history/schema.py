"""The history database's schema: each version's migration, applied in order.

Each migration only adds (tables, columns with defaults), so a database of any earlier version
keeps every record and reads the same after it. ``PRAGMA user_version`` says which have run; a
newer one than this offload knows is refused (``History``). What older offloads may ignore is
no migration (``EXTRAS``).
"""

from __future__ import annotations

__all__ = ["BUILD_COLUMNS", "EXTRAS", "EXTRA_NAMES", "MIGRATIONS"]

MIGRATIONS: tuple[str, ...] = (
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
    """
    ALTER TABLE builds ADD COLUMN name TEXT NOT NULL DEFAULT '';
    ALTER TABLE builds ADD COLUMN error TEXT;
    ALTER TABLE builds ADD COLUMN speculative INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX builds_run ON builds (run_id);
    CREATE INDEX builds_machine ON builds (machine, finished);
    CREATE TABLE phases (
        build_id INTEGER NOT NULL REFERENCES builds (id),
        phase TEXT NOT NULL,
        started REAL NOT NULL,
        finished REAL NOT NULL
    );
    CREATE INDEX phases_build ON phases (build_id);
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        started REAL NOT NULL,
        finished REAL NOT NULL,
        asked TEXT NOT NULL,
        outcome TEXT NOT NULL,
        machines TEXT NOT NULL,
        estimate REAL,
        lower_bound REAL
    );
    CREATE INDEX runs_started ON runs (started);
    CREATE TABLE deps (
        run_id TEXT NOT NULL,
        drv_path TEXT NOT NULL,
        dep TEXT NOT NULL
    );
    CREATE INDEX deps_run ON deps (run_id);
    """,
)
# Additions an older offload of the same schema version reads past: made where missing at each
# opening, never a version of their own (a new version locks every older offload out, and a
# NixOS rollback or a `nix run` of a newer offload would leave the old one without history).
EXTRAS = """
    CREATE INDEX IF NOT EXISTS builds_finished ON builds (finished);
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value REAL NOT NULL);
"""
EXTRA_NAMES = ("builds_finished", "meta")  # what EXTRAS makes, as sqlite_master names them
BUILD_COLUMNS = (
    "id, run_id, drv_path, pname, machine, started, finished, status, bytes_sent,"
    " bytes_received, name, error, speculative"
)
