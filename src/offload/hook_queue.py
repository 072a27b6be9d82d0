"""Derivations offload-hook accepted that wait for a builder slot: ``<state>/queued.json``.

Nix prints "building '...' on '<builder>'" as soon as the hook accepts a derivation, but the
hook's coordinator keeps it until a slot is worth taking (``offload.hook.dispatch``), on that
builder or another: ``offload status``, which connects to nothing, read only the slots held and
showed none of them. So the coordinator writes what waits there, each derivation's name and
since when (it was accepted), when that changes (at most twice a second); ``offload status``
reads it. The file holds an entry per coordinator (``owner``: ``offload.procfs.owner_line``),
rewritten whole, atomically, mode 0600; an entry whose coordinator is gone (killed outright,
which cannot take it out) is read as none.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from offload.procfs import owner_gone, owner_line
from offload.state_json import merging, read_state_json, write_state_json

__all__ = ["QUEUED_FILE", "Queued", "load_queued", "record_queued"]

QUEUED_FILE = "queued.json"


@dataclass(frozen=True)
class Queued:
    drv: str  # the derivation's name (``hello-2.12``)
    since: float  # wall clock: when it began to wait

    def as_json(self) -> dict[str, object]:
        """As the file and ``offload status --json`` hold it."""
        return {"drv": self.drv, "since": self.since}


def load_queued(paths: Sequence[Path]) -> list[Queued]:
    """What waits in every live coordinator whose file is in ``paths``, the longest waiting
    first; a missing or unreadable file, or a malformed entry, is none."""
    found: list[Queued] = []
    for path in paths:
        for owner, waiting in _entries(path).items():
            if not owner_gone(owner):
                found += waiting
    return sorted(found, key=lambda queued: queued.since)


def record_queued(path: Path, waiting: Sequence[Queued]) -> None:
    """``waiting`` as this process's entry in ``path`` (none when empty); the entries of
    coordinators that are gone are dropped."""
    owner = owner_line(os.getpid())
    if owner is None:
        return
    with merging(path):
        before = _entries(path)
        current = {o: w for o, w in before.items() if not owner_gone(o)}
        if waiting:
            current[owner] = list(waiting)
        else:
            current.pop(owner, None)
        if current == before:
            return
        data = {o: [q.as_json() for q in w] for o, w in current.items()}
        write_state_json(path, data)


def _entries(path: Path) -> dict[str, list[Queued]]:
    data = read_state_json(path)
    if not isinstance(data, dict):
        return {}
    entries: dict[str, list[Queued]] = {}
    for owner, waiting in data.items():
        if isinstance(waiting, list):
            entries[str(owner)] = [q for raw in waiting if (q := _queued(raw)) is not None]
    return entries


def _queued(raw: object) -> Queued | None:
    if not isinstance(raw, dict):
        return None
    drv, since = raw.get("drv"), raw.get("since")
    if not isinstance(drv, str) or not isinstance(since, int | float) or isinstance(since, bool):
        return None
    return Queued(drv, float(since))
