"""Each run's private scratch directory for its ssh masters' sockets and pinned host keys, and
the sweep of those a killed run left behind.

A run removes its directory when it ends, Ctrl-C and SIGTERM included; a SIGKILLed one cannot.
So each directory records its owner (``owner``: pid namespace, pid, the pid's start time),
and a process's first new one sweeps the directories under the same base whose owner is gone:
same uid, same pid namespace (a pid means nothing in another), and no live process with that
pid and start time. A directory without a readable owner (one being made, or an older
offload's) is left.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import stat
import tempfile
from pathlib import Path

from offload.errors import TransportError
from offload.names import LOCAL
from offload.procfs import is_ours, owner_line, pid_namespace

__all__ = ["PREFIX", "private_dir", "sweep"]

PREFIX = "ofl-"
OWNER = "owner"


def private_dir() -> Path:
    """A new 0700 directory for this run, its owner recorded; stale ones swept first.
    ``TransportError`` when it cannot be made whole (nothing left behind)."""
    # Unix socket paths are limited to ~104 bytes; a long $TMPDIR would not fit the ssh socket.
    base = tempfile.gettempdir()
    # 40 leaves room for "/ofl-XXXXXXXX/m" under the limit.
    if len(base) > 40:
        base = "/tmp"  # noqa: S108 - a private 0700 directory is made inside it
    _sweep_once(base)
    made: Path | None = None
    try:
        made = Path(tempfile.mkdtemp(prefix=PREFIX, dir=base))  # mkdtemp makes it 0700
        line = owner_line(os.getpid())
        if line is not None:
            (made / OWNER).write_text(f"{line}\n")
    except OSError as exc:
        # A full disk: said as the link's error, and nothing left that no sweep would find
        # (a directory without its owner is never swept).
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        error = TransportError(
            f"cannot make a private directory in {base}: {exc.strerror or exc}",
            hint="free space there (or point TMPDIR where there is room)",
        )
        error.peer = LOCAL  # this host's disk: no builder is to blame (nor backed off)
        raise error from exc
    return made


@functools.cache
def _sweep_once(base: str) -> None:
    """``sweep`` at a process's first private directory under ``base``: a run makes one per
    builder, and a directory abandoned now was abandoned then."""
    sweep(Path(base))


def _abandoned(directory: Path, namespace: str) -> bool:
    try:
        info = directory.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            return False
        recorded_ns, pid, start = (directory / OWNER).read_text().split()
        return recorded_ns == namespace and not is_ours(int(pid), int(start))
    except (OSError, ValueError):
        return False


def sweep(base: Path) -> list[Path]:
    """Remove the scratch directories under ``base`` whose run is gone; those removed."""
    namespace = pid_namespace()
    removed = []
    with contextlib.suppress(OSError):
        for directory in base.glob(f"{PREFIX}*"):
            if _abandoned(directory, namespace):
                shutil.rmtree(directory, ignore_errors=True)
                removed.append(directory)
    return removed
