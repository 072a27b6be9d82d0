"""Nix's path locks, taken as Nix takes them, for a store path the hook writes that Nix did not
lock for it.

Nix (2.3 and later: libstore ``pathlocks.cc``, BSD locks since 2.3; before, POSIX ``fcntl``
ones, which do not exclude a BSD lock) locks a store path P by an exclusive ``flock`` on
``P.lock``, opened ``O_RDWR | O_CREAT`` with mode 0600 (``offload.hook.lockfiles``), before
it builds, substitutes or imports P (``LocalStore::addToStore``), checks P's validity again once
it holds it, and only then removes an invalid P and writes it. A holder done with P unlinks the
lock file and then writes one byte into it before closing it: a waiter that gets the lock on a
file that has been written to holds a deleted file that others can no longer see, and opens the
path again. Several paths are locked in sorted order (``PathLocks::lockPaths``), so two
processes that each want several never hold one the other waits for.

Nix waits for a lock however long it is held, in one blocking ``flock``. Here the attempt is
repeated every 0.25 s without blocking, with the file kept open between attempts as Nix keeps
it, so the hook's own cancellation (a Ctrl-C, its Nix gone) stops the wait at once; and the
wait ends, with a ``StoreError`` naming the path and its lock file, after ``patience`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from offload.errors import StoreError
from offload.hook.lockfiles import file_errors, nix_lock_file

__all__ = ["LOCK_POLL", "LockAttempt", "PathLocks"]

LOCK_POLL = 0.25


class LockAttempt:
    """One path's lock file, tried without blocking as often as the caller likes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock_file = f"{path}.lock"
        self.purpose = f"Nix's lock on {path}"
        self.fd: int | None = None

    def try_once(self) -> bool:
        """True once this process holds the path's lock (on the file now at that name)."""
        while True:
            if self.fd is None:
                self.fd = nix_lock_file(self.lock_file, self.purpose)
            try:
                with file_errors(self.lock_file, self.purpose):
                    fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    if os.fstat(self.fd).st_size == 0:
                        return True
            except BlockingIOError:
                return False
            # Stale: its holder deleted it (and wrote to it) before letting go; another
            # process may already hold the lock on the file now at that name.
            self.close()

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


class PathLocks:
    """Locks held on store paths until ``release``."""

    def __init__(self) -> None:
        self._held: list[LockAttempt] = []

    async def lock(
        self, paths: Iterable[str], *, patience: float, waiting: Callable[[str], None]
    ) -> None:
        """Lock each of ``paths`` in sorted order; ``waiting(path)`` is called once for each
        path found locked by another process. Raises ``StoreError`` after ``patience`` s."""
        for path in sorted(set(paths)):
            attempt = LockAttempt(path)
            try:
                await _acquire(attempt, patience, waiting)
            except BaseException:
                attempt.close()
                raise
            self._held.append(attempt)

    def release(self, *, done: bool) -> None:
        """Let go of every lock. ``done``: the paths are valid now, so the lock files are
        deleted as Nix deletes them then (unlinked, then written to, then closed)."""
        held, self._held = self._held, []
        for attempt in held:
            if done and attempt.fd is not None:
                with contextlib.suppress(OSError):
                    Path(attempt.lock_file).unlink()
                with contextlib.suppress(OSError):
                    os.write(attempt.fd, b"d")
            attempt.close()


async def _acquire(attempt: LockAttempt, patience: float, waiting: Callable[[str], None]) -> None:
    if attempt.try_once():
        return
    waiting(attempt.path)
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        await asyncio.sleep(LOCK_POLL)
        if attempt.try_once():
            return
    raise StoreError(
        f"{attempt.path} has stayed locked by another process for {patience:g} s (a build or "
        f"copy of it here, or a process stuck holding {attempt.lock_file}: `fuser "
        f"{attempt.lock_file}` names it); not brought home, build again once that is done"
    )
