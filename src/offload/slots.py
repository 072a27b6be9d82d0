"""Build slots shared by every offload process on this host, and by Nix's own hook.

Nix's build-remote counts a builder's load as the slot files it holds under
``<state>/current-load``: one file per slot, ``<uri with / replaced by _>-<n>``, held with a BSD
``flock`` for the whole build (nix-protocols.md 5.1). offload takes the same locks on the same
files, so two ``offload build`` runs, offload's hook and Nix's stock hook all see one another's
builds and never put more than ``maxJobs`` builds on a machine between them. The local machine
has no such file in Nix (its builds are counted per process); offload uses ``local-<n>`` in the
same directory so that concurrent offload runs share the local slots too.

Every offload process writes one line into the file it holds (``offload.slot_holders``): its pid
and pid namespace, when it expects the build to end (offload's hook, and ``offload build`` for
each copy it starts), which program it is and what it builds there, so another hook deciding
whether to wait for that slot can tell when it frees, and ``offload status`` who builds what
(``probe``). Nix never reads the files' contents and leaves them empty: a held slot whose file
says nothing is Nix's own hook's, which is how ``offload status`` tells the two apart. (Older
offload hooks wrote the bare time.) Nobody empties a file when letting it go (truncating costs a
journal transaction per build), and Nix's hook leaves what it finds, so a line is believed only
while the process it names holds the file's lock (``/proc/locks``); the line of a holder that
let go, or was killed, is nobody's, and a slot held under it is Nix's own hook's, with no
expected end. A pid means nothing in another pid namespace (a container sharing current-load:
/proc/locks gives the holder's pid as seen here, or 0), so a line from another one is believed
as it is, as a line was before.

The directory is Nix's own when it is writable (``/nix/var/nix/current-load``, as root);
otherwise offload's state directory, which at least coordinates offload's own processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import math
import os
import secrets
import stat
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from offload.errors import TransportError
from offload.names import LOCAL
from offload.procfs import pid_namespace
from offload.slot_holders import LINE_BYTES, SlotHolder, holder_line, line_fields, read_holder_line
from offload.slot_waiters import WantMarkers

__all__ = ["NIX_CURRENT_LOAD", "SlotLocks", "SlotProbe", "slot_key"]

NIX_CURRENT_LOAD = Path("/nix/var/nix/current-load")
PROC_LOCKS = Path("/proc/locks")
# This process's pid namespace (``pid:[4026531836]``), named in its slot lines.
_NAMESPACE = pid_namespace()
# What a slot's file says when it names no offload holder (Nix's hook's, or a holder gone).
_NOBODY = SlotHolder(None, None)
# How often a run waiting for a slot held by another process looks again.
POLL_INTERVAL = 0.25


def slot_key(uri: str) -> str:
    """The file-name prefix Nix uses for a machine: its store URI with '/' replaced by '_'."""
    return uri.replace("/", "_")


@dataclass(frozen=True)
class SlotProbe:
    free: int
    busy_ends: tuple[float | None, ...]  # the expected end each holder wrote, if any
    by_nix: int = 0  # held slots whose file is empty: Nix's own hook holds them
    holders: tuple[SlotHolder, ...] = ()  # the offload processes holding the others


class _FlockHolders:
    """Who holds a flock on which file, from /proc/locks read once (at the first question):
    a probe asks it of each slot, and a busy host's table has a line per lock. A table read
    before a later slot's look may be out of date for it (a holder came or went since): where
    that slot's file was touched since, or the table names no holder of its line, it is read
    again (``read_again``)."""

    def __init__(self) -> None:
        self._table: dict[str, set[str]] | None = None
        self._read = False
        self._older = False  # the table was read before the caller's latest look
        self.read_at = math.inf  # when the table was last read (wall clock, before reading)

    def looked(self) -> None:
        """The caller has just looked at a slot: a table read before is older than that."""
        self._older = self._read

    def read_again(self) -> bool:
        """Read /proc/locks again if the table is older than the caller's latest look;
        whether it was read."""
        if not self._older:
            return False
        self._older = False
        self.read_at = time.time()
        self._table = _flock_table()
        return True

    def of(self, fd: int) -> set[str] | None:
        """The pids (as text) holding a flock on ``fd``'s file; None when /proc/locks cannot
        be read (or ``fd`` cannot be looked at)."""
        try:
            inode = os.fstat(fd).st_ino
        except OSError:
            return None
        return self.of_inode(inode)

    def of_inode(self, inode: int) -> set[str] | None:
        """The pids holding a flock on the file of that inode number (one this user may not
        open); None when /proc/locks cannot be read."""
        if not self._read:
            self._read = True
            self.read_at = time.time()
            self._table = _flock_table()
        return None if self._table is None else self._table.get(str(inode), set())


def _held_by_inode(path: Path, holders: _FlockHolders) -> bool:
    """Whether a file this user may not open is flocked (unknown: held)."""
    try:
        pids = holders.of_inode(path.stat().st_ino)
    except FileNotFoundError:
        return False  # gone meanwhile: nobody holds it
    except OSError:
        return True  # cannot be told
    return pids is None or bool(pids)


def _flock_table() -> dict[str, set[str]] | None:
    """/proc/locks's flock holders by inode number. Its lines: ``1: FLOCK  ADVISORY  WRITE 4242
    08:01:1234 0 EOF`` (a waiter's has ``->`` after the number: not a holder). The device is
    left out: it is the file system's own, which on btrfs (each subvolume has a device of its
    own) and on an overlay over several file systems is not the one stat gives. The pid
    must match too, so another file with that number elsewhere is no real risk."""
    try:
        text = PROC_LOCKS.read_text()
    except OSError:
        return None
    table: dict[str, set[str]] = {}
    for line in text.splitlines():
        fields = line.split()[1:]
        if len(fields) >= 5 and fields[0] == "FLOCK":
            table.setdefault(fields[4].rpartition(":")[2], set()).add(fields[3])
    return table


def _read_holder(fd: int, holders: _FlockHolders) -> tuple[bool, SlotHolder] | None:
    """Whether an offload process holds the slot, and what its line says (the end it
    expects, if it wrote one); None when /proc/locks shows no holder at all: it let go since
    the caller's look."""
    try:
        text = os.pread(fd, LINE_BYTES, 0).decode("ascii", "replace").strip()
    except OSError:
        return False, _NOBODY
    fields = line_fields(text)
    ours = fields.get("ns", _NAMESPACE) == _NAMESPACE  # older lines name none: checked
    holding = holders.of(fd) if "pid" in fields and ours else None
    if holding is not None and fields["pid"] not in holding and holders.read_again():
        holding = holders.of(fd)  # taken, or let go, since the table was read
    if holding == set():
        return None
    if holding is not None and fields["pid"] not in holding:
        return False, _NOBODY  # a line left by a holder gone (module docstring)
    return bool(text), read_holder_line(text, same_namespace=ours)


# How far a file's time may lag the clock (the kernel stamps files from a coarse clock).
_COARSE_CLOCK = 0.05


def _slot_held(fd: int, holders: _FlockHolders) -> tuple[bool, SlotHolder] | None:
    """None when ``fd``'s slot is free; else whether offload holds it and what its line says
    (``_read_holder``). Told by /proc/locks where it can be read: a flock of the
    look's own, even a shared one for a moment, made a build taking the slot then (Nix's
    hook's, offload's) find it busy, 5% of tries with a probe in a loop. Where it cannot be
    read, by the file's own flock."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        return True, _NOBODY  # no slot file Nix or offload made (a FIFO): not free for sure
    pids = holders.of(fd)
    if pids == set() and info.st_mtime >= holders.read_at - _COARSE_CLOCK:
        # Touched since the table was read: Nix and offload touch the file they take.
        holders.looked()
        holders.read_again()
        pids = holders.of(fd)
    if pids == set():
        return None
    if pids is None:
        return None if _free_now(fd) else _read_holder(fd, holders) or (False, _NOBODY)
    holders.looked()  # the table may be older than this look: read again if it must be
    return _read_holder(fd, holders)  # None: let go since the table was read


def _free_now(fd: int) -> bool:
    """Whether ``fd``'s slot is free now (a shared flock taken, and let go as ``fd`` closes)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _write_holder(fd: int, line: bytes) -> None:
    """``line`` as the file's whole content. A file that holds a line of the same length (this
    process's, from its last build on that slot) is overwritten in place: truncating it first
    would cost an ext4 journal transaction, which under a busy local store waits for others'
    commits (about 1 ms a build measured on 100 trivial builds); every line offload writes is
    as long (``offload.slot_holders``). A reader sees the old line or the new one whole, never
    a mix of both (one write of ``LINE_BYTES``)."""
    if os.fstat(fd).st_size != len(line):
        os.ftruncate(fd, 0)
    os.pwrite(fd, line, 0)


class SlotLocks:
    """The slot files of ``directory``, made if ``make`` (a reader, ``offload status``, only
    probes, and leaves nothing behind); ``program``, which offload program holds them
    (``offload.slot_holders.PROGRAMS``), is written into each slot it takes."""

    def __init__(
        self,
        directory: Path,
        *,
        make: bool = True,
        others: SlotLocks | None = None,
        program: str | None = None,
    ) -> None:
        self.directory = directory
        self.program = program
        # Slots held where this process cannot take them (Nix's directory, for a user that
        # may not write it: the daemon's hook holds them there) count as taken here too.
        self.others = others
        # This process's copies waiting for a slot of a key, first come first (``hold``), and
        # the markers that tell other processes since when (``offload.slot_waiters``).
        self._waiting: dict[str, list[asyncio.Event]] = {}
        self._wants = WantMarkers(directory, secrets.token_hex(6))
        if make:
            directory.mkdir(parents=True, exist_ok=True)

    @classmethod
    def default(cls, fallback: Path, *, make: bool = True, program: str | None = None) -> SlotLocks:
        """Nix's own directory where this user may write there (root), else ``current-load``
        under the state directory ``fallback``, which is made private (0700) if missing, with
        Nix's directory's held slots counted as taken (``others``) where it may be looked in."""
        if os.access(NIX_CURRENT_LOAD.parent, os.W_OK):
            return cls(NIX_CURRENT_LOAD, make=make, program=program)
        if make:
            fallback.mkdir(parents=True, exist_ok=True, mode=0o700)
        looked_in = os.access(NIX_CURRENT_LOAD, os.X_OK)
        others = SlotLocks(NIX_CURRENT_LOAD, make=False) if looked_in else None
        return cls(fallback / "current-load", make=make, others=others, program=program)

    def probe(self, key: str, slots: int) -> SlotProbe:
        """How many of ``key``'s slots are free, and who holds the others. Only
        reads: a slot whose file was never made is free, and so is every one after it (Nix and
        offload both take the lowest free slot, making its file only then), so a machine of
        many slots costs a look at the files there are, not one made for each of its slots
        (``offload status`` is read-only, and may run in a loop)."""
        free, by_nix = 0, 0
        ends: list[float | None] = []
        said: list[SlotHolder] = []
        holders = _FlockHolders()
        for slot in range(slots):
            path = self.directory / f"{key}-{slot}"
            try:
                # Not blocking: a FIFO in its place (damage) would hang the look for ever.
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            except FileNotFoundError:
                free += slots - slot
                break
            except PermissionError:
                # Another user's (root's: the daemon's hook), read by its lock alone: held or
                # not, by whom and until when unknown. Not a slot that is free for sure.
                held = _held_by_inode(path, holders)
                free += not held
                if held:
                    ends.append(None)
                continue
            try:
                holding = _slot_held(fd, holders)
            finally:
                os.close(fd)
            if holding is None:
                free += 1
                continue
            by_offload, holder = holding
            ends.append(holder.until)
            by_nix += not by_offload
            if by_offload and holder != _NOBODY:
                said.append(holder)
        return SlotProbe(free, tuple(ends), by_nix, tuple(said))

    def try_acquire(
        self, key: str, slots: int, until: float | None = None, drv: str | None = None
    ) -> int | None:
        """Hold a free slot of ``key`` (an open, flocked fd), or None when all are taken.

        ``until``: the wall-clock time the holder expects to be done, and ``drv``: the name of
        the derivation it builds there, written into the file (``offload.slot_holders``).
        A slot file that cannot be opened or written (a full disk, no more file descriptors,
        the directory gone) is ``TransportError`` naming this host's store: no builder's
        fault, and never an internal error ending the run.
        """
        try:
            return self._try_acquire(
                key, slots, holder_line(os.getpid(), _NAMESPACE, until, self.program, drv)
            )
        except OSError as exc:
            error = TransportError(
                f"cannot hold a slot file in {self.directory}: {exc.strerror or exc}",
                hint=f"check {self.directory}: this user must write it, and its disk have room",
            )
            error.peer = LOCAL
            raise error from exc

    def _try_acquire(self, key: str, slots: int, line: bytes) -> int | None:
        elsewhere = self._held_elsewhere(key, slots)
        if elsewhere and slots - self.probe(key, slots).free + elsewhere >= slots:
            return None  # the builder's slots are all held, here and there together
        for slot in range(slots):
            path = self.directory / f"{key}-{slot}"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                # Nix touches the file it takes (futimens); so do we, for anyone watching.
                os.utime(fd)
                _write_holder(fd, line)
            except BaseException:
                os.close(fd)  # a full disk, say: the slot is not left held for nothing
                raise
            return fd
        return None

    def _held_elsewhere(self, key: str, slots: int) -> int:
        """How many of ``key``'s slots are held in ``others`` (Nix's hook's, the daemon's):
        a user's builds and the daemon's together never put more than ``slots`` there."""
        if self.others is None:
            return 0
        try:
            return slots - self.others.probe(key, slots).free
        except OSError:
            return 0  # its directory gone, say: no slot of it is known held

    @contextlib.asynccontextmanager
    async def hold(
        self,
        key: str,
        slots: int,
        on_wait: Callable[[], None] | None = None,
        until: Callable[[], float] | None = None,
        drv: str | None = None,
    ) -> AsyncIterator[None]:
        """Hold one slot for the body; ``on_wait`` is called once if all are taken at first;
        ``until`` gives, when a slot is taken, the end its holder expects, and ``drv`` names
        what it builds there (``try_acquire``).

        This process's waiters for ``key`` take its slots in turn, and a slot this process lets
        go is looked at again at once by the first of them: the policy gives a slot out as soon
        as it counts it free, which may be before the copy stopped there lets go of its file,
        and the build given it first must not lose it to one given it later. A waiter of
        another process that has waited longer goes first (``offload.slot_waiters``)."""
        queue = self._waiting.setdefault(key, [])
        fd = None
        if not queue and not self._wants.waited_before(key, time.time()):
            fd = self.try_acquire(key, slots, None if until is None else until(), drv)
        if fd is None:
            if on_wait is not None:
                on_wait()
            fd = await self._wait_turn(queue, key, slots, until, drv)
        try:
            yield
        finally:
            os.close(fd)
            if queue:
                queue[0].set()

    async def _wait_turn(
        self,
        queue: list[asyncio.Event],
        key: str,
        slots: int,
        until: Callable[[], float] | None,
        drv: str | None,
    ) -> int:
        """Wait in ``queue`` until first in it, first on this host (no other process's waiter
        has waited longer) and a slot is free (another process's is looked at again every
        ``POLL_INTERVAL``); the slot held."""
        turn, since = asyncio.Event(), time.time()
        queue.append(turn)
        try:
            with self._wants.waiting(key, since):
                while True:
                    if queue[0] is turn and not self._wants.waited_before(key, since):
                        fd = self.try_acquire(key, slots, None if until is None else until(), drv)
                        if fd is not None:
                            return fd
                    turn.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(POLL_INTERVAL):
                            await turn.wait()
        finally:
            queue.remove(turn)
            if queue:
                queue[0].set()
