"""Bringing a hook build's outputs home while Nix holds their locks.

Nix locks a derivation's outputs (``<path>.lock``) before it asks the hook, and the local store
takes the same lock to add a path: so a ``nix-store --serve`` or ``--import`` of ours would wait
forever for the parent that waits for us. build-remote gets round it from inside the process
(``locksHeld``); a separate program does what the store would do, without the lock, which is
safe because the lock we skip is held for us:

0. every path is made a temporary garbage-collector root (``offload.hook.temproots``), before
   it is locked, as Nix's ``LocalStore::addToStore`` does: else a collection (systemd's nix-gc
   timer during a nixos-rebuild) could delete a dependency renamed into place and not yet
   registered: the registration then fails (Nix 2.8 looks for each path first), or, deleted
   between that look and its commit, the path is valid and missing;
1. each missing path's NAR is streamed from the builder into ``nix-store --restore`` (or, when
   small, read into memory and unpacked by ``offload.hook.unpack``) under a temporary name
   beside the store directory's entries, and hashed as it goes. The name is
   ``<hash>-offload-hook-temp-<pid>-<batch>-<n>``, with the hash part of the path it becomes:
   the collector deletes any entry not named as a store path, and keeps a temporary root by its
   hash part (as it keeps Nix's own ``<path>.lock`` and ``.check``). A tree outside the store
   directory would escape it too, but could not be renamed in: on NixOS the store is a
   read-only bind mount, writable in the daemon's mount namespace only (``EXDEV``). Newer Nix
   also spares a ``tmp-*`` directory locked by its writer; Nix 2.8 does not;
2. the hash and size are checked against what the builder says (a mismatch registers nothing);
3. the temporary tree is renamed to its store path (atomic, same directory);
4. all of them are registered at once, dependencies included, with
   ``nix-store --register-validity --hash-given`` (which also canonicalises owners, modes and
   times, as the store does).

Anything that fails removes what it restored or renamed: no path is ever registered unless it
arrived whole. Once the registration has begun it is waited for, even by a build cancelled
meanwhile (a Ctrl-C, the hook's Nix gone): ``nix-store`` may commit it whatever happens to
us, and a path removed after that would be valid in the database and missing on disk, which
Nix then takes for built. A hook killed mid-copy leaves a temporary tree that its guard
(``offload.hook.guard``) removes; a renamed but unregistered path is invalid, and Nix deletes
invalid paths before it writes them (its collector too, once the hook's roots are gone with
it). The roots go once the paths are registered (or removed): from then on the outputs Nix
roots for its build keep their dependencies through their references.

Only the derivation's outputs come home, whose locks Nix holds: Nix made the inputs valid here
before it asked, so an honest builder's closure of the outputs holds nothing else missing
here. Any other path it names is refused before a byte is read (``offload.hook.remote``), and
nothing is registered: brought home, it would be a path of the builder's choosing made valid
in this host's store as root, unsigned (a "bash" nothing here ever built or fetched). Nix's own
hook copies the outputs alone, and fails such a build when it registers them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import re
import shutil
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TypeVar

from offload.errors import StoreError, TransportError
from offload.hook.temproots import TempRoots
from offload.hook.unpack import SMALL_NAR, unpack_nar
from offload.names import LOCAL
from offload.process import run_async, spawn
from offload.procfs import running
from offload.protocol.serve import PathInfo, StoreClient
from offload.store.nar import nar_hash_nix32
from offload.store.path import STORE_DIR, StorePath

_T = TypeVar("_T")
__all__ = ["TEMP_MARK", "import_outputs", "registration_text", "sweep_leftovers", "temp_name"]

# After a store path's hash part and "-", as the name of that path's temporary tree.
TEMP_MARK = "offload-hook-temp-"
_TEMP_NAME = re.compile(r"[0-9a-df-np-sv-z]{32}-" + TEMP_MARK + r"([0-9]+)-[0-9]+-[0-9]+")
# The temporary trees of hooks before that name (offload before 5b2b79a): still swept, since an
# old coordinator killed mid-copy left one that nothing else removes short of a full collection.
_OLD_TEMP_NAME = re.compile(r"\.offload-hook-([0-9]+)-[0-9]+-[0-9]+")
# Temporary names are <pid>-<batch>-<n>: one coordinator process imports for many builds at once.
_BATCHES = itertools.count()


def temp_name(path: str, batch: int, n: int) -> str:
    """The temporary tree's name for ``path``, kept by the collector with ``path``'s root."""
    hash_part = Path(path).name[:32]
    return f"{hash_part}-{TEMP_MARK}{os.getpid()}-{batch}-{n}"


def registration_text(infos: Sequence[PathInfo]) -> str:
    """``nix-store --register-validity --hash-given`` input: per path its name, hash, size,
    deriver, then the number of references and each reference."""
    lines: list[str] = []
    for info in infos:
        lines += [info.path, info.nar_hash, str(info.nar_size), info.deriver or ""]
        lines += [str(len(info.references)), *sorted(info.references)]
    return "\n".join(lines) + "\n"


async def _restore(remote: StoreClient, info: PathInfo, temp: Path) -> None:
    if info.nar_size <= SMALL_NAR:
        await _restore_small(remote, info, temp)
        return
    digest = hashlib.sha256()
    async with _here(spawn(["nix-store", "--restore", str(temp)])) as proc:
        assert proc.stdin is not None
        stdin = proc.stdin

        async def sink(chunk: bytes) -> None:
            digest.update(chunk)
            stdin.write(chunk)
            await stdin.drain()

        size = await remote.dump_store_path(info.path, sink, limit=info.nar_size)
        stdin.close()
        _, err = await proc.communicate()
    if proc.returncode != 0:
        raise StoreError(f"cannot unpack {info.path}: {err.decode(errors='replace').strip()}")
    _check(info, size, digest.hexdigest())


async def _restore_small(remote: StoreClient, info: PathInfo, temp: Path) -> None:
    """In memory, checked before anything is written (``offload.hook.unpack``)."""
    data = bytearray()

    async def sink(chunk: bytes) -> None:
        data.extend(chunk)

    size = await remote.dump_store_path(info.path, sink, limit=info.nar_size)
    _check(info, size, hashlib.sha256(data).hexdigest())
    unpack_nar(bytes(data), temp)


def _check(info: PathInfo, size: int, sha256_hex: str) -> None:
    got = nar_hash_nix32(sha256_hex)
    # Registered with --hash-given: a path whose hash the builder did not say (or said in
    # another form) is not registered on its word.
    if size != info.nar_size or got != info.nar_hash:
        raise StoreError(
            f"{info.path} arrived damaged ({size} bytes, {got}; "
            f"the builder said {info.nar_size} bytes, {info.nar_hash})"
        )


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        # Restored trees are read-only only after registration; before it they are ours.
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.asynccontextmanager
async def _here(started: AbstractAsyncContextManager[_T]) -> AsyncIterator[_T]:
    """``started``, whose failure to start (EAGAIN, EMFILE) is this host's, not the
    builder's: unsaid, the builder was backed off for it, every builder in turn."""
    try:
        async with started as value:
            yield value
    except TransportError as exc:
        if exc.peer is None:  # a session's faults name their builder
            exc.peer = LOCAL
        raise


async def _register(infos: Sequence[PathInfo]) -> None:
    try:
        done = await run_async(
            ["nix-store", "--register-validity", "--hash-given"],
            stdin=registration_text(infos).encode(),
            check=False,
        )
    except TransportError as exc:  # it could not start: this host's fault
        exc.peer = LOCAL
        raise
    if done.returncode != 0:
        raise StoreError(f"cannot register outputs: {done.stderr.strip()}")


async def import_outputs(
    remote: StoreClient,
    infos: Sequence[PathInfo],
    store_dir: str = STORE_DIR,
    *,
    held: Collection[str],
) -> int:
    """Make ``infos`` (dependencies first) valid locally from ``remote``; returns bytes moved.
    ``held``: the paths whose locks Nix holds for us (the derivation's outputs), the only ones
    brought home (module docstring)."""
    if not infos:  # --check: the outputs were valid here already (Nix 2.8 refuses "\n")
        return 0
    for info in infos:
        # The path is the builder's word, and each one is removed, replaced and (on failure)
        # removed again here, as root under the daemon: one outside the store, or a sub-path,
        # would be any file of this host's.
        StorePath.parse(info.path, store_dir)
        if info.path not in held:
            raise StoreError(f"{info.path} is no output of the derivation: not brought home")
    roots = TempRoots()
    try:
        # Rooted first, as Nix roots what it adds.
        await roots.add(info.path for info in infos)
        return await _place(remote, infos, Path(store_dir))
    finally:
        roots.release()


async def _place(remote: StoreClient, infos: Sequence[PathInfo], store: Path) -> int:
    """Restore, rename and register ``infos``, whose paths are locked for us."""
    if not infos:
        return 0
    placed: list[Path] = []
    temps: list[Path] = []
    moved = 0
    batch = next(_BATCHES)
    registering: asyncio.Task[None] | None = None
    try:
        for n, info in enumerate(infos):
            temp = store / temp_name(info.path, batch, n)
            temps.append(temp)
            _remove(temp)
            await _restore(remote, info, temp)
            final = Path(info.path)
            # An invalid leftover whose lock is ours (or Nix's, for us): Nix deletes it too.
            _remove(final)
            temp.rename(final)
            placed.append(final)
            moved += info.nar_size
        registering = asyncio.ensure_future(_register(infos))
        await _to_its_end(registering)
    except BaseException:
        # Not begun, or ended without committing: nothing of it is registered. Still running
        # (the loop itself stopped): it may yet commit, and an invalid leftover is what Nix
        # deletes, a valid path missing what it trusts.
        if registering is None or (
            registering.done() and (registering.cancelled() or registering.exception() is not None)
        ):
            for path in [*temps, *placed]:
                _remove(path)
        raise
    return moved


async def _to_its_end(task: asyncio.Task[None]) -> None:
    """Wait for ``task`` to end, cancelled or not (every cancellation meanwhile is raised
    after it), then for its result."""
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError as exc:
            cancelled = exc
    if cancelled is not None:
        raise cancelled
    task.result()


def sweep_leftovers(store_dir: str = STORE_DIR) -> None:
    """Remove temporary trees of hook processes that died without cleaning up, under today's
    name or the one before; a tree whose writer still runs (an old coordinator finishing its
    builds beside an upgraded one) is left to it."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(store_dir):
            match = _TEMP_NAME.fullmatch(entry.name) or _OLD_TEMP_NAME.fullmatch(entry.name)
            # A zombie writer (killed, not yet reaped by its parent) writes nothing any more.
            if match is not None and not running(int(match[1])):
                _remove(Path(entry.path))
