"""Temporary garbage-collector roots for the store paths the hook writes, taken as Nix takes them.

Nix's garbage collector deletes every entry of the store directory that is neither a valid path
reachable from a root nor a temporary root: an output's dependency the hook has renamed into
place but not yet registered is invalid, and a temporary tree that is not named as a store path
is deleted whatever roots exist. So before it writes a path, the hook makes it a temporary root
exactly as ``LocalStore::addTempRoot`` does (``gc.cc``: the same protocol from Nix 2.8 to 2.35;
newer Nix also takes a missing socket for a collection not yet listening, and waits 100 ms):

1. a roots file in ``<state>/temproots`` (``$NIX_STATE_DIR``, else ``/nix/var/nix``), opened
   ``O_RDWR | O_CREAT`` with mode 0600 (``offload.hook.lockfiles``: any error on one of these
   files names it) and held under an exclusive ``flock`` for as long as its
   roots count: the collector takes a file it *can* lock for a dead process's and deletes it
   (unlink, then one byte written), so one found non-empty once locked is made again;
2. a shared ``flock`` on ``<state>/gc.lock`` tried without blocking. Taken, no collection runs
   and none can start (it locks exclusively) before the paths are appended to the roots file,
   each NUL-terminated, and the lock let go: the next collection reads them when it starts.
   Refused, a collection runs and has read the roots files already: each path goes to its
   socket, ``<state>/gc-socket/socket``, as a line, answered ``1`` once the collector holds it
   (and, if it was deleting that very path, once that is done), and then into the file too. A
   socket refused or closed means the collection ended meanwhile: the lock is tried again.

The collector keeps a temporary root by its hash part, so that Nix's own ``<path>.lock``,
``.check`` and ``.chroot`` siblings are kept with it: the hook's temporary trees are named with
the hash part of the path they become (``offload.hook.home``), and are kept the same way.

Nix makes one file per store object for its life: named by its pid up to 2.34, and
``temproots-<pid>-<n>`` from 2.35 on (one per ``LocalStore``). The hook's coordinator
can live for days on a busy host, and every path it brought home would be a root for that long;
so here each import has a file of its own, ``<pid>-<n>``, made before its first path is written
and deleted (unlinked, then closed) once they are registered, when the outputs Nix roots for its
build keep them through their references. Nix up to 2.34 reads the name's leading number as a
pid (``std::stoi``, which a name not starting with a digit would make throw: ``<pid>-<n>``, not
2.35's own form); 2.35 shows the name as it is; neither requires more of it, and no Nix process
makes a name starting with a digit and holding a ``-``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import os
from collections.abc import Iterable
from pathlib import Path

from offload.errors import StoreError
from offload.hook.lockfiles import file_errors, nix_lock_file

__all__ = ["TempRoots", "nix_state_dir"]

# A collection that has locked gc.lock but not yet made its socket: Nix retries at once.
_SOCKET_RETRY = 0.01
_FILES = itertools.count()


def nix_state_dir() -> Path:
    """Nix's state directory, as Nix finds it."""
    return Path(os.environ.get("NIX_STATE_DIR") or "/nix/var/nix")


# What every error on the files below is said to be for (``file_errors``).
_PURPOSE = "keeping Nix's garbage collector from the paths being brought home"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class TempRoots:
    """One import's temporary roots, kept until ``release``."""

    def __init__(self, state_dir: Path | None = None) -> None:
        self._state = state_dir or nix_state_dir()
        self._file = self._state / "temproots" / f"{os.getpid()}-{next(_FILES)}"
        self._fd: int | None = None

    async def add(self, paths: Iterable[str]) -> None:
        """Root ``paths``: once this returns, no collection, running or to come, deletes them
        or an entry named with their hash part, until ``release``."""
        paths = list(paths)
        if not paths:
            return
        record = b"".join(os.fsencode(path) + b"\0" for path in paths)
        fd = self._roots_file()
        gc_lock_file = self._state / "gc.lock"
        gc_lock = nix_lock_file(gc_lock_file, _PURPOSE)
        try:
            while True:
                try:
                    with file_errors(gc_lock_file, _PURPOSE):
                        fcntl.flock(gc_lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    if await self._tell_collector(paths):
                        break
                    await asyncio.sleep(_SOCKET_RETRY)
                    continue
                break  # no collection can start before the record is written
            with file_errors(self._file, _PURPOSE):
                _write_all(fd, record)
        finally:
            os.close(gc_lock)  # lets go of the shared lock, if held

    def _roots_file(self) -> int:
        if self._fd is not None:
            return self._fd
        with contextlib.suppress(OSError):  # a directory we cannot make: said when opened
            self._file.parent.mkdir(0o755)  # Nix makes it when it opens the store
        while True:
            with file_errors(self._file, _PURPOSE), contextlib.suppress(FileNotFoundError):
                self._file.unlink()  # a dead process's, whose pid was this one's
            fd = nix_lock_file(self._file, _PURPOSE)
            try:
                with file_errors(self._file, _PURPOSE):
                    fcntl.flock(fd, fcntl.LOCK_EX)  # a collector only tries it, without waiting
                    empty = os.fstat(fd).st_size == 0
            except BaseException:
                os.close(fd)
                raise
            if empty:
                self._fd = fd
                return fd
            os.close(fd)  # a collection took it for stale before we locked it

    async def _tell_collector(self, paths: list[str]) -> bool:
        """Each of ``paths`` to the running collection; False if it is gone (or not yet there)."""
        socket_path = self._state / "gc-socket" / "socket"
        with file_errors(socket_path, _PURPOSE):
            try:
                reader, writer = await asyncio.open_unix_connection(str(socket_path))
            except (ConnectionRefusedError, FileNotFoundError):
                return False
            try:
                for path in paths:
                    writer.write(os.fsencode(path) + b"\n")
                    await writer.drain()
                    if await reader.readexactly(1) != b"1":
                        raise StoreError(f"Nix's garbage collector did not take {path} as a root")
            except (asyncio.IncompleteReadError, BrokenPipeError, ConnectionResetError):
                return False
            finally:
                writer.close()
        return True

    def release(self) -> None:
        """The paths are registered (or removed): their roots go with the file."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(FileNotFoundError):
                self._file.unlink()
            os.close(fd)
