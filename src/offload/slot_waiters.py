"""Who on this host waits for a machine's slot, and since when: first come, first served.

A process that lets a slot go looks at once for its own next waiter (``SlotLocks.hold``), while
other processes look again every ``POLL_INTERVAL``: without more, a run with builds to spare
kept a machine's slots for as long as it had work, and a second client on the same host (an
``offload build``, a laptop's small build beside a large one) waited for all of it. So each
waiter leaves a *want marker* beside the slot files, ``<key>.want.<holder>.<n>``, holding when
it began to wait (wall clock) and held under ``flock`` for as long as it waits; a free slot is
taken only by the waiter that has waited longest, this process's or another's. A marker whose
lock can be taken is a dead process's (killed, even by SIGKILL): removed by whoever finds it.
Nix's own hook neither leaves nor reads markers (it never waits for a slot: it declines).

Markers are looked for at every slot request, in a directory that also holds every slot file
Nix and offload ever made on this host (hundreds where test fleets came and went: 0.8 ms a
scan here). So the names of markers are kept from one scan to the next while the directory's
mtime stays what it was, and trusted only when that mtime was older than ``SETTLED`` at the
scan: a marker made in the same clock tick or timestamp granule as the scan could leave the
mtime as it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["SETTLED", "WantMarkers"]

# Nanoseconds a directory's mtime must be in the past for a scan of it to be reused, so that a
# later change cannot carry the same mtime: past the kernel's clock tick, and past the file
# system's timestamp granularity (1 s on ext4 with small inodes, 2 s on FAT), which rounds a
# change made a moment ago down to a time that already looks old.
SETTLED = 3_000_000_000


class WantMarkers:
    """The want markers of one process's waiters (``holder``: a name of its own)."""

    def __init__(self, directory: Path, holder: str) -> None:
        self.directory = directory
        self.holder = holder
        self._serial = itertools.count()
        self._scanned: tuple[int, list[str]] | None = None  # (mtime, markers' names) reused

    @contextlib.contextmanager
    def waiting(self, key: str, since: float) -> Iterator[None]:
        """A marker that a waiter of ``key`` waits since ``since``, for the body; none where
        the directory cannot take one (the wait goes on, first come first served no more)."""
        name = f"{key}.want.{self.holder}.{next(self._serial)}"
        path, made = self.directory / name, self.directory / f".{name}"
        try:
            fd = os.open(made, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError:
            yield
            return
        try:
            # Locked and written under another name first: a marker seen is whole, and held.
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, f"{since:.6f}".encode())
            made.rename(path)
        except OSError:
            with contextlib.suppress(OSError):
                made.unlink()
            os.close(fd)
            yield
            return
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
            os.close(fd)

    def waited_before(self, key: str, since: float) -> bool:
        """Whether a waiter of another process has waited for ``key`` since before ``since``."""
        prefix = f"{key}.want."
        mine = f"{prefix}{self.holder}."
        try:
            names = self._markers()
        except OSError:
            return False
        return any(
            (began := _waiting_since(self.directory / name)) is not None and began < since
            for name in names
            if name.startswith(prefix) and not name.startswith(mine)
        )

    def _markers(self) -> list[str]:
        """The names of every want marker in the directory, from the last scan while the
        directory has not changed since."""
        mtime = self.directory.stat().st_mtime_ns
        if self._scanned is not None and self._scanned[0] == mtime:
            return self._scanned[1]
        settled = time.time_ns() - mtime > SETTLED
        names = [e.name for e in os.scandir(self.directory) if ".want." in e.name]
        self._scanned = (mtime, names) if settled else None
        return names


def _waiting_since(path: Path) -> float | None:
    """Since when the waiter that marked ``path`` waits; None if it no longer does (its
    process is gone: the marker is removed) or the marker cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return float(os.pread(fd, 64, 0).decode(errors="replace"))
            except ValueError:
                return None  # not offload's: no waiter of ours
        with contextlib.suppress(OSError):
            path.unlink()  # its waiter's process is gone
        return None
    finally:
        os.close(fd)
