"""Which history ``offload history`` and ``offload report`` read: the user's, or the
nix-daemon's hook's.

Nix's daemon runs ``offload-hook`` as root with no home, so what it builds is kept under
``/var/lib/offload`` (``offload.state_location``), not in the state of the user who asked for
the build: ``--daemon`` reads that one (root's; ``sudo``), and a reading of the user's own
history says on stderr that the other exists when it does.

Reading changes nothing it need not: the user's history is opened to be written (brought up to
this version's schema) where it may be, and read as it is where it may not (a read-only mount,
another user's directory). Where there is none yet, nothing is made (neither the database nor
the state directory): ``NoHistoryYet``, with the hint to run a build first (``offload history``'s
plain listing makes it a note); a state directory that could not be made is an error
(``offload.paths``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from offload.errors import OffloadError, StoreError
from offload.history.db import History
from offload.history.faults import no_room
from offload.paths import SYSTEM_STATE_DIR, read_state_dir, state_dir, state_hint

__all__ = ["HISTORY_FILE", "NoHistoryYet", "history_file", "open_history"]

HISTORY_FILE = "history.sqlite"


class NoHistoryYet(OffloadError):
    """The user's history is not there: nothing was recorded in this state directory yet."""


def history_file(*, daemon: bool, command: str = "history", note: bool = True) -> Path:
    """The history database ``offload COMMAND`` reads: the daemon hook's (``OffloadError`` if
    it cannot be read or holds nothing yet), or the user's (with ``note``, a note on stderr
    when the daemon's hook keeps one of its own), which may not exist yet."""
    if not daemon:
        if note and state_dir() != SYSTEM_STATE_DIR and _exists(SYSTEM_STATE_DIR / HISTORY_FILE):
            print(
                f"note: the nix-daemon's offload-hook keeps its own history in {SYSTEM_STATE_DIR}:"
                f" `sudo offload {command} --daemon`",
                file=sys.stderr,
            )
        return read_state_dir() / HISTORY_FILE
    path = SYSTEM_STATE_DIR / HISTORY_FILE
    if _exists(path) and not os.access(path, os.R_OK):
        raise OffloadError(
            f"{path}: the nix-daemon's history is root's",
            hint=f"sudo offload {command} --daemon",
        )
    if not path.is_file():
        raise OffloadError(
            f"{path}: no history of the nix-daemon's offload-hook",
            # doctor checks builders, not the hook: `hook install --print` shows the setting
            hint="it has built nothing here yet, Nix's build-hook is not offload-hook (`offload"
            " hook install --print` shows how to set it), or its state is elsewhere"
            " (services.offload.stateDir, the daemon's OFFLOAD_STATE_DIR): read that one with"
            f" `OFFLOAD_STATE_DIR=DIR offload {_own(command)}`, without --daemon",
        )
    return path


def _own(command: str) -> str:
    """``command`` reading a state directory's hook builds as ``--daemon`` would have."""
    return "report --hook" if command == "report" else command


def open_history(*, daemon: bool, command: str = "history", note: bool = True) -> History:
    """``history_file`` opened: the daemon hook's and one this user may not write, read as
    they are."""
    path = history_file(daemon=daemon, command=command, note=note)
    if daemon:
        return History(path, read_only=True)
    if not _exists(path):
        # Made by no reader: `offload report NO-SUCH-RUN` left an empty database behind. A
        # missing state directory could be made (``read_state_dir``): a build would start one.
        if path.parent.is_dir() and not os.access(path.parent, os.W_OK):
            raise OffloadError(
                f"{path}: no history, and {path.parent} cannot be written to start one",
                hint=state_hint(),
            )
        raise NoHistoryYet(
            f"{path}: no history yet",
            hint="run a build first: `offload build` records its runs there (offload-hook, the"
            " builds it takes)",
        )
    if os.access(path.parent, os.W_OK) and os.access(path, os.W_OK):
        try:
            return History(path)
        except StoreError:
            if not no_room(path.parent):
                raise
            # Read as it is (its schema brought up to date by the next run), without what a
            # writer could not move from its -wal into it.
            print(
                f"note: {path.parent} is full: the history is read as it is on disk (the last"
                " runs kept may be missing)",
                file=sys.stderr,
            )
    return History(path, read_only=True)


def _exists(place: Path) -> bool:
    """Whether ``place`` is there, as far as this user can tell (a parent it may not search
    hides it: taken as there, so that the reader is told it is not theirs)."""
    try:
        return place.exists()
    except PermissionError:
        return True
