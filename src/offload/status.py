"""The pool right now, as this host sees it: slots in use, backoff, the `offload use` choice.

Nothing here connects to a builder; everything is read from the files offload and Nix share
on this host, so ``offload status`` is instant and safe to run in a loop:

- slots in use: the lock files under Nix's ``current-load`` (``offload.slots``), which
  ``offload build``, offload's hook and Nix's own hook all hold while a build runs; beyond a
  machine's configured slots too, as a run given more takes them (``offload build -j 8``
  holds ``local-0`` to ``local-7`` whatever Nix's max-jobs): in use may exceed the slots. offload
  writes its name into the file it holds and Nix leaves it empty, so the two are counted apart;
  a holder that wrote when it expects to be done says so, and offload's name what they build
  (``offload.slot_holders``): who builds what, as the user a holder runs as (here, in this
  pid namespace) and the program (``offload build``, offload-hook).
- backoff: ``backoff.json`` in each state directory that is read (the user's, and the system
  one the nix-daemon's hook keeps); a machine backed off in both shows the later end. Each
  says why (the error that backed it off, one line); an entry an older offload wrote has no
  reason (``reason`` null in JSON, "not known" in text).
- the builder choice: ``use.json`` (``offload.use``) in the same places; the first one in
  force wins, as the hook reads its own state directory, and where it was found is kept
  (``choice_dir``): one only the nix-daemon's hook has is not the user's own hook's.
- builders whose slots are counted on this host only (no slot lock could be taken on the
  builder: a restricted key, no flock(1), no slot directory), and why, as the last
  ``offload build`` run or hook build there found (``offload.slot_fallback``).
- builders the hook's coordinator gives fewer slots for their load, and the report that cut
  them (``offload.load_state``; gone once it gives them back or exits).
- derivations offload-hook accepted that wait in its coordinator for a builder slot (Nix has
  said "building ... on" a builder for each), the longest waiting first
  (``offload.hook_queue``).
- builders an ssh connection is kept open to, for the next run or hook
  (``offload.transport.persist``): its socket answers; nothing goes to the builder.

A ``MachineStatus`` per machine (the local one first, as ``local``) and the ``Choice`` in force
make up a ``PoolStatus``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from offload.backoff import Health, connections, load_backoffs
from offload.config.machines import Machine
from offload.config.pool import Pool
from offload.errors import ConfigError
from offload.hook_queue import QUEUED_FILE, Queued, load_queued
from offload.load_state import LOADS_FILE, Loaded, load_loads
from offload.names import LOCAL
from offload.procfs import user_of
from offload.slot_fallback import FALLBACK_FILE, Fallback, load_fallbacks
from offload.slot_holders import PROGRAMS, SlotHolder
from offload.slots import SlotLocks, slot_key
from offload.transport.persist import kept, listening
from offload.transport.ssh import ssh_target
from offload.use import Choice, read_choice

__all__ = ["Building", "MachineStatus", "PoolStatus", "pool_status", "read_backoff"]

BACKOFF_FILE = "backoff.json"


class BackoffJson(TypedDict):
    failures: int
    until: float
    reason: str | None  # null: not known (backed off by an offload that did not keep reasons)


class FallbackJson(TypedDict):
    reason: str
    learned: float


class LoadedJson(TypedDict):
    slots: int
    full: int
    said: str
    reported: float


class BuildingJson(TypedDict):
    drv: str | None
    program: str | None
    user: str | None
    pid: int | None
    until: float | None


class MachineStatusJson(TypedDict):
    name: str
    slots: int
    in_use: int
    by_nix: int
    expected_free: list[float]
    backoff: BackoffJson | None
    chosen: bool
    slot_fallback: FallbackJson | None
    loaded: LoadedJson | None
    connected: bool
    builds: list[BuildingJson]


@dataclass(frozen=True)
class Building:
    """A build an offload process on this host holds one of a machine's slots for."""

    drv: str | None  # the derivation's name (``hello-2.12``); None: not said (an older offload)
    program: str | None  # ``offload build`` or ``offload-hook``; None: not said
    user: str | None  # whom its process runs as; None: not known here
    pid: int | None
    until: float | None  # when it expects to end

    @classmethod
    def of(cls, holder: SlotHolder) -> Building:
        program = None if holder.program is None else PROGRAMS[holder.program]
        user = None if holder.pid is None else user_of(holder.pid)
        return cls(holder.drv, program, user, holder.pid, holder.until)

    def as_json(self) -> BuildingJson:
        return {
            "drv": self.drv,
            "program": self.program,
            "user": self.user,
            "pid": self.pid,
            "until": self.until,
        }


@dataclass(frozen=True)
class MachineStatus:
    name: str
    slots: int
    in_use: int
    by_nix: int  # of in_use, the slots Nix's own hook holds (the rest are offload's)
    expected_free: tuple[float, ...]  # wall-clock ends the holders wrote, soonest first
    backoff: Health | None
    chosen: bool  # in the `offload use` choice (True when there is none)
    # Counted on this host only, as last learned (None: on the builder, or not known yet).
    slot_fallback: Fallback | None = None
    # Its usable slots cut for its load by the hook's coordinator (None: not cut).
    loaded: Loaded | None = None
    connected: bool = False  # an ssh connection to it is kept open on this host
    builds: tuple[Building, ...] = ()  # offload's builds holding its slots, soonest end first

    def as_json(self) -> MachineStatusJson:
        backoff: BackoffJson | None = None
        if self.backoff is not None:
            backoff = {
                "failures": self.backoff.failures,
                "until": self.backoff.until,
                "reason": self.backoff.reason,
            }
        return {
            "name": self.name,
            "slots": self.slots,
            "in_use": self.in_use,
            "by_nix": self.by_nix,
            "expected_free": list(self.expected_free),
            "backoff": backoff,
            "chosen": self.chosen,
            "slot_fallback": None
            if self.slot_fallback is None
            else {"reason": self.slot_fallback.reason, "learned": self.slot_fallback.learned},
            "loaded": None if self.loaded is None else _loaded_json(self.loaded),
            "connected": self.connected,
            "builds": [building.as_json() for building in self.builds],
        }


def _loaded_json(loaded: Loaded) -> LoadedJson:
    return {
        "slots": loaded.slots,
        "full": loaded.full,
        "said": loaded.said,
        "reported": loaded.reported,
    }


@dataclass(frozen=True)
class PoolStatus:
    machines: tuple[MachineStatus, ...]
    choice: Choice | None
    slot_dir: Path
    # The state directory the choice is in (None with no choice), and the user's own (the
    # first read): a choice only in another is the nix-daemon's hook's.
    choice_dir: Path | None = None
    own_dir: Path | None = None
    queued: tuple[Queued, ...] = ()  # accepted by offload-hook, waiting for a builder slot


def read_backoff(places: Sequence[Path], now: float, pool: Pool | None = None) -> dict[str, Health]:
    """The backoff in force in the state directories ``places``; with ``pool``, not that of a
    machine whose line was mended since (``offload.backoff``)."""
    paths = [place / BACKOFF_FILE for place in places]
    return load_backoffs(paths, now, None if pool is None else connections(pool))


def _chosen(pool: Pool, choice: Choice | None) -> set[str] | None:
    """The names the choice keeps (``local`` included), or None when every machine is in."""
    if choice is None:
        return None
    try:
        kept = pool.select(on=choice.machines)
    except ConfigError:
        # A choice naming no machine of this pool is ignored, as the hook ignores it (it
        # builds on the whole pool, saying so): every machine is in.
        return None
    return {m.name for m in kept.machines} | ({LOCAL} if kept.local is not None else set())


def _connected(
    machine: Machine, places: Sequence[Path], sshopts: str, sockets: list[str] | None
) -> bool:
    if not machine.is_ssh or machine.host is None:
        return False
    target = ssh_target(machine)
    return any(kept(place, target, sshopts, sockets) for place in places)


def _extent(directory: Path, key: str, count: int) -> int:
    """How many of ``key``'s slot files to look at: its ``count`` slots, and the files past
    them a run given more slots made; every holder takes the first free one from 0 on, so
    they are numbered with no gap."""
    extent = count
    # lexists: a directory this user may not search (root's, made by `sudo offload`) is
    # none to look at here, not an error that stops the whole status (its probe says held).
    while os.path.lexists(directory / f"{key}-{extent}"):
        extent += 1
    return extent


def pool_status(
    pool: Pool,
    places: Sequence[Path],
    slots: SlotLocks,
    now: float,
    sshopts: str = "",
) -> PoolStatus:
    """The status of every machine of ``pool``; ``places`` are the state directories to read,
    ``sshopts`` the NIX_SSHOPTS the kept connections were made with. Slots held in the
    directory ``slots.others`` names are counted too (Nix's own, where root's hooks and the
    daemon's hold theirs, read by a user whose own slots are in its state directory)."""
    choice, choice_dir = next(
        ((c, p) for p in places if (c := read_choice(p, now)) is not None), (None, None)
    )
    chosen = _chosen(pool, choice)
    backoff = read_backoff(places, now, pool)
    fallbacks = load_fallbacks([place / FALLBACK_FILE for place in places])
    loads = load_loads([place / LOADS_FILE for place in places])
    entries = [(LOCAL, LOCAL, pool.local.max_jobs, False)] if pool.local is not None else []
    sockets = listening()
    entries += [
        (m.name, slot_key(m.uri), m.max_jobs, _connected(m, places, sshopts, sockets))
        for m in pool.machines
    ]
    machines = []
    for name, key, count, connected in entries:
        busy, by_nix = 0, 0
        held_ends: list[float | None] = []
        builds: list[Building] = []
        for where in (slots, slots.others) if slots.others is not None else (slots,):
            extent = _extent(where.directory, key, count)
            probe = where.probe(key, extent)
            busy, by_nix = busy + extent - probe.free, by_nix + probe.by_nix
            held_ends += probe.busy_ends
            builds += map(Building.of, probe.holders)
        ends = sorted(end for end in held_ends if end is not None)
        builds.sort(key=lambda b: math.inf if b.until is None else b.until)
        machines.append(
            MachineStatus(
                name,
                count,
                busy,
                by_nix,
                tuple(ends),
                backoff.get(name),
                chosen is None or name in chosen,
                None if name == LOCAL else fallbacks.get(name),
                None if name == LOCAL else loads.get(name),
                connected,
                tuple(builds),
            )
        )
    own = places[0] if places else None
    queued = tuple(load_queued([place / QUEUED_FILE for place in places]))
    return PoolStatus(tuple(machines), choice, slots.directory, choice_dir, own, queued)
