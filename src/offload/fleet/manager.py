"""Bringing the local fleet up and down, and looking at it.

``fleet_up`` starts one sshd per member (see ``spec`` for the layout, ``sshd`` for one start),
waits until each one really answers over ssh with the pinned host key, and records what it
started in ``fleet.json`` (``state``). ``fleet_down`` needs nothing but that directory: it stops
each recorded member (``namespace``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import shutil
import sys
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path

from offload.errors import FleetError
from offload.fleet.files import check_owned, prepare_dir, write_client_files
from offload.fleet.namespace import mnt_ns, stop_member
from offload.fleet.records import FleetState, MemberRecord
from offload.fleet.spec import (
    CLIENT_KEY,
    MemberSpec,
    check_fleet_dir,
    check_host,
    check_programs,
    validate_specs,
)
from offload.fleet.sshd import check_ssh, start_member
from offload.fleet.state import STATE_FILE, fleet_of, load_state, member_of, ordered, write_state
from offload.fleet.view import Fleet, Member, MemberStatus
from offload.process import run
from offload.procfs import is_ours
from offload.thread_pool import Executor
from offload.threads import interrupts_held

logger = logging.getLogger(__name__)

__all__ = [
    "Fleet",
    "Member",
    "MemberStatus",
    "fleet_down",
    "fleet_status",
    "fleet_up",
    "open_fleet",
]


def fleet_up(
    dir: Path,  # noqa: A002 - mirrors --dir
    specs: Sequence[MemberSpec],
    *,
    euid: int | None = None,
    platform: str | None = None,
) -> Fleet:
    """Start (or keep) the members ``specs`` in ``dir``; idempotent for an unchanged fleet.

    A running member with a different spec, or a running member not asked for, is an error:
    bring the fleet down first. Dead members are started again.
    """
    check_host(
        os.geteuid() if euid is None else euid, sys.platform if platform is None else platform
    )
    specs = validate_specs(specs)
    check_programs()
    fleet_dir = dir.absolute()
    check_fleet_dir(fleet_dir)
    # Whose it is, and whether it is a fleet's, are told under the lock (``_opened``, ``_up``).
    with _locked(fleet_dir):
        return _up(fleet_dir, specs)


def _up(fleet_dir: Path, specs: Sequence[MemberSpec]) -> Fleet:
    """``fleet_up`` once the directory is checked and locked."""
    _not_taken_over(fleet_dir, {spec.name for spec in specs})
    previous = load_state(fleet_dir)
    kept, dead = _kept_and_dead(fleet_dir, previous, specs)
    prepare_dir(fleet_dir)
    for record in dead:
        # Its sshd is gone, but sessions may linger in its namespace holding the store.
        stop_member(fleet_dir, record)
    system = previous.system if previous else _current_system()
    records: dict[str, MemberRecord] = dict(kept)
    started: list[MemberRecord] = []
    # Each sshd as soon as it runs: a Ctrl-C while a member starts stops it too, and it is
    # recorded at once, so that `fleet down` stops it after this process is killed meanwhile.
    spawned: list[MemberRecord] = []

    def spawn(record: MemberRecord) -> None:
        spawned.append(record)
        now = {**records, record.spec.name: record}
        write_state(fleet_dir, FleetState(system, ordered(now, specs)))

    try:
        for spec in specs:
            if spec.name in kept:
                continue
            record = start_member(fleet_dir, spec, spawn)
            started.append(record)
            records[spec.name] = record
            write_state(fleet_dir, FleetState(system, ordered(records, specs)))
        write_client_files(fleet_dir, system, specs, records)
        # One ssh round trip per new member, concurrently: each costs a key exchange.
        with Executor(max_workers=max(1, len(started))) as pool:
            for future in [pool.submit(check_ssh, fleet_dir, r) for r in started]:
                future.result()
    except BaseException:
        # Bounded (stop_member's timeout); a second Ctrl-C must not leave members running.
        with interrupts_held():
            # A started record (its namespace known) over the same sshd's spawned one.
            left = _stop_started(fleet_dir, {r.pid: r for r in [*spawned, *started]}.values())
            write_state(fleet_dir, FleetState(system, (*kept.values(), *left)))
        raise
    return fleet_of(fleet_dir, FleetState(system, ordered(records, specs)))


# How often the directory may be removed under a waiting lock before it gives up.
_LOCK_TRIES = 20


@contextlib.contextmanager
def _locked(fleet_dir: Path) -> Iterator[None]:
    """The fleet directory (made if new) held for one ``fleet_up`` or ``fleet_down`` at a time:
    two ups at once both started every member (two sshds on one store), or one took the
    other's half-made key for files of the directory's own. The lock is the directory's own:
    one a ``down --purge`` removed while this waited is let go, and the path's new one taken."""
    for _ in range(_LOCK_TRIES):
        fd = _opened(fleet_dir)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = os.fstat(fd)
            with contextlib.suppress(OSError):  # removed: no directory there now
                there = fleet_dir.stat()
                # A removed one has no links left, and its number may be the new one's.
                if held.st_nlink > 0 and (there.st_dev, there.st_ino) == (held.st_dev, held.st_ino):
                    break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    else:
        raise FleetError(
            f"{fleet_dir} was removed and made again {_LOCK_TRIES} times while this waited",
            hint="run it again once the other offload fleet commands there have ended",
        )
    try:
        yield
    finally:
        os.close(fd)


def _opened(fleet_dir: Path) -> int:
    """The fleet directory, made if new, open for its lock."""
    try:
        fleet_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        check_owned(fleet_dir)  # made by someone else meanwhile: exist_ok takes it
        return os.open(fleet_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:  # a file there, or a parent one may not write
        raise FleetError(
            f"cannot use {fleet_dir} as the fleet directory: {exc.strerror or exc}",
            hint="name a new or empty directory of your own with --dir",
        ) from exc


def _stop_started(fleet_dir: Path, records: Iterable[MemberRecord]) -> list[MemberRecord]:
    """Stop each member a failed ``fleet_up`` started, every one even if one of them will not
    stop (that one is said, with the error that failed the start): those that did not, which
    stay recorded for `fleet down`."""
    left = []
    for record in records:
        try:
            stop_member(fleet_dir, record)
        except FleetError as exc:
            logger.warning("%s", exc.message)
            left.append(record)
    return left


def _kept_and_dead(
    fleet_dir: Path, previous: FleetState | None, specs: Sequence[MemberSpec]
) -> tuple[dict[str, MemberRecord], list[MemberRecord]]:
    """The recorded members still running as asked, by name, and the ones no longer running
    (or never seen to start); one running with another spec, or not asked for, is an error."""
    wanted = {s.name: s for s in specs}
    kept: dict[str, MemberRecord] = {}
    dead: list[MemberRecord] = []
    for record in previous.members if previous else ():
        if not is_ours(record.pid, record.start_time):
            dead.append(record)
            continue
        if not record.mnt_ns:
            # Recorded as spawned, by an up killed before it listened: its namespace is read
            # now, so that its sessions are swept with it, and it is started again.
            dead.append(dataclasses.replace(record, mnt_ns=mnt_ns(record.pid) or ""))
            continue
        if wanted.get(record.spec.name) != record.spec:
            asked = wanted.get(record.spec.name)
            raise FleetError(
                f"fleet member {record.spec.text} is running in {fleet_dir}, "
                + (f"asked for {asked.text}" if asked else "but was not asked for"),
                hint=f"run `offload fleet down --dir {fleet_dir}` first",
            )
        kept[record.spec.name] = record
    return kept, dead


def fleet_down(dir: Path, purge: bool = False) -> None:  # noqa: A002
    """Stop every member recorded in ``dir``; with ``purge``, remove the directory too."""
    fleet_dir = dir.absolute()
    if not fleet_dir.exists():
        return  # never started: nothing to stop nor remove
    with _locked(fleet_dir):  # whose it is told there (``_opened``)
        _down(fleet_dir, purge)
        if purge and fleet_dir.is_symlink():  # --dir named a link to the directory: it goes too
            fleet_dir.unlink()


def _down(fleet_dir: Path, purge: bool) -> None:
    state = load_state(fleet_dir)
    errors: list[str] = []
    for record in state.members if state else ():
        try:
            stop_member(fleet_dir, record)
        except FleetError as exc:
            errors.append(exc.message)
    if errors:
        raise FleetError("; ".join(errors), hint="stop the listed processes by hand")
    if purge and fleet_dir.exists():
        if not _is_fleets(fleet_dir):
            raise FleetError(
                f"{fleet_dir} does not look like a fleet directory; not removing it",
                hint="remove it by hand if it is really yours",
            )
        _purge(fleet_dir.resolve())


def _purge(fleet_dir: Path) -> None:
    """Remove the fleet's directory, its own files (what ``_is_fleets`` knows it by) last: a
    removal cut short (Ctrl-C in a large store) leaves one ``fleet down --purge`` still takes."""
    marks = {STATE_FILE, CLIENT_KEY}
    for entry in sorted(fleet_dir.iterdir(), key=lambda entry: entry.name in marks):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    fleet_dir.rmdir()


def _is_fleets(fleet_dir: Path, members: Collection[str] = ()) -> bool:
    """Whether the directory ``fleet_dir`` is a fleet's to take or remove whole: it has the
    fleet's own files, or nothing but the directories of ``members``, each holding nothing
    but a member's own entries (a directory ``fast`` of notes was made 0700, and purged)."""
    if (fleet_dir / STATE_FILE).exists() or (fleet_dir / CLIENT_KEY).exists():
        return True
    return all(
        _temporary(entry.name)
        or (
            (entry.name in members and entry.is_dir() and not entry.is_symlink())
            and _a_members(entry)
        )
        for entry in fleet_dir.iterdir()
    )


# What a member's directory holds (``files.prepare_member``, ``sshd``), and the temporary
# names of its files while they are written.
_MEMBER_ENTRIES = frozenset(
    {"nix", "etc-nix", "home", "proc", "sshd_config", "sshd.log", "ssh_host_ed25519_key",
     "ssh_host_ed25519_key.pub"}
)  # fmt: skip


def _a_members(directory: Path) -> bool:
    return all(e.name in _MEMBER_ENTRIES or _temporary(e.name) for e in directory.iterdir())


def _temporary(name: str) -> bool:
    """A key pair or a file being written (``files``), as one cut short leaves it."""
    return name.startswith(".keygen-") or (name.startswith(".") and name.endswith(".tmp"))


def _not_taken_over(fleet_dir: Path, members: set[str]) -> None:
    """A directory that holds files of its own is no fleet's: `fleet up` made it 0700, and
    `fleet down --purge` then removed it whole, with what it held (`--dir /tmp`)."""
    if not fleet_dir.is_dir() or _is_fleets(fleet_dir, members):
        return
    raise FleetError(
        f"{fleet_dir} holds files of its own: it is not a fleet directory",
        hint="name a new or empty directory with --dir: the fleet keeps its files there, and"
        " fleet down --purge removes it",
    )


def fleet_status(dir: Path) -> tuple[MemberStatus, ...]:  # noqa: A002
    fleet_dir = dir.absolute()
    state = load_state(fleet_dir)
    if state is None:
        return ()
    return tuple(
        MemberStatus(member_of(fleet_dir, r), is_ours(r.pid, r.start_time)) for r in state.members
    )


def open_fleet(dir: Path) -> Fleet:  # noqa: A002
    """The fleet recorded in ``dir``, as started by ``fleet_up`` (possibly in another process)."""
    fleet_dir = dir.absolute()
    check_owned(fleet_dir)  # its ssh_config is what ssh reads to reach the members
    state = load_state(fleet_dir)
    if state is None or not state.members:
        raise FleetError(
            f"no fleet in {fleet_dir}", hint=f"run `offload fleet up --dir {fleet_dir}`"
        )
    return fleet_of(fleet_dir, state)


def _current_system() -> str:
    done = run(["nix-instantiate", "--eval", "-E", "builtins.currentSystem"], timeout=60)
    system = done.stdout.strip().strip('"')
    if not system:
        raise FleetError("cannot tell the local Nix system from `nix-instantiate`")
    return system
