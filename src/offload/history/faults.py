"""What the history database's errors say: locked, damaged, or a file that cannot be used as
it is, each with its hint (``offload.history.db`` raises them)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from pathlib import Path

from offload.errors import StoreError

__all__ = ["damaged", "full_disk_error", "no_room", "not_a_file", "open_hint"]

_DAMAGED_HINT = "move the file away: offload starts a new history (estimates are relearned)"
# A file the history is or one beside it that cannot be used as it is (another user's, a
# directory or a device in its place, an I/O error): not necessarily damaged.
_FILES_HINT = "check it and its -wal, -shm and -journal files (this user must read and write them)"
_LOCKED_HINT = (
    "another process holds it (a hung offload, a sqlite3 shell): run this again once it ends"
)


def open_hint(path: Path) -> str:
    """What to do about a history SQLite cannot open ("unable to open database file" says
    nothing of why): a directory in its place, or a file or directory of another user's."""
    with contextlib.suppress(OSError):  # a directory that cannot be searched: the general hint
        if path.is_dir():
            return "a directory is in its place: move it away (offload starts a new history)"
    return (
        "it must be a file this user may read and write, in a directory it may write:"
        " check their owner and mode, or set OFFLOAD_STATE_DIR to another state directory"
    )


def no_room(directory: Path) -> bool:
    """Whether the file system of ``directory`` is full (less than a page of SQLite's free)."""
    try:
        room = os.statvfs(directory)
    except OSError:
        return False
    return room.f_bavail * room.f_frsize < 65536


def full_disk_error(code: int | None, path: Path) -> bool:
    """Whether SQLite's error ``code`` on the database ``path`` is its disk's being full: said
    as "disk I/O error" (an -shm file it could not size there) or as SQLITE_FULL."""
    if code is None:
        return False
    kind = code & 0xFF
    return kind == sqlite3.SQLITE_FULL or (kind == sqlite3.SQLITE_IOERR and no_room(path.parent))


def damaged(path: Path, exc: Exception) -> StoreError:
    detail = " ".join(str(exc).split())
    mangled = detail.startswith(("no such table", "no such column"))  # a table dropped by hand
    # Python's own OperationalError over a column it cannot read ("Could not decode to UTF-8")
    # has no SQLite error code: the file holds what offload never wrote.
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(exc, sqlite3.OperationalError) and code is not None and not mangled:
        # Locked past the busy timeout: another process holds it; it is not to be moved away.
        hint = _LOCKED_HINT if "locked" in detail else _FILES_HINT
        if full_disk_error(code, path):  # its files are fine, not the disk
            hint = f"free space on the file system that holds {path.parent} (df shows it)"
        return StoreError(f"{path}: cannot use the history database: {detail}", hint=hint)
    return StoreError(f"{path}: the history database is damaged: {detail}", hint=_DAMAGED_HINT)


def not_a_file(path: Path) -> StoreError | None:
    """The error for a FIFO, device or socket where the database or its journal is (SQLite
    opens a hot journal when it sees one: a FIFO there blocked it for good, deaf to SIGTERM,
    as SQLite opens again on EINTR), None when each is a file or absent."""
    for name in (path, *(path.with_name(path.name + end) for end in ("-journal", "-wal", "-shm"))):
        try:
            mode = name.stat().st_mode
        except OSError:  # absent, or what SQLite will say it cannot open
            continue
        if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
            return StoreError(
                f"{name}: not a file, which the history database and its journals are",
                hint="move it away: "
                + ("offload starts a new history" if name == path else "SQLite makes its own"),
            )
    return None
