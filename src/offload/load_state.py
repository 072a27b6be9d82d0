"""Builders whose slots the hook's coordinator cut for their load: ``<state>/loads.json``.

The coordinator follows each builder's load as its sessions report it (``offload.hook.loads``)
and writes each change here, so ``offload status``, which connects to nothing, can say which
builders it gives fewer slots and why: an entry per builder cut (its usable and full slots, the
line that said so, and when), none for a builder given all its slots back. The file is rewritten
whole (atomically, mode 0600, in the private state directory) and only on a change, which is
rare: a cut or a slot given back, never a report that changes nothing.

Each entry names the coordinator that wrote it (``owner``: pid namespace, pid, start time,
``offload.procfs.owner_line``). One that ends by itself takes its cuts out; one killed
outright (SIGKILL, the OOM killer) cannot, so an entry whose coordinator is gone is read as
none: its cut ended with it, and ``offload status`` does not show it as in force. An entry
without an owner (an older offload's), or from another pid namespace, is read as before.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from offload.procfs import owner_gone, owner_line
from offload.state_json import latest_entries, merging, write_state_json

__all__ = ["LOADS_FILE", "Loaded", "load_loads", "record_loads"]

LOADS_FILE = "loads.json"


@dataclass(frozen=True)
class Loaded:
    slots: int  # usable now
    full: int  # the builder's slots in the machines file
    said: str  # ``load 9.5 on 8 cores: 2 of 4 slots`` (``offload.load.describe_cut``)
    reported: float  # wall clock
    owner: str | None = None  # the coordinator that cut it (``owner_line``); None: not known


def load_loads(paths: Sequence[Path]) -> dict[str, Loaded]:
    """The entries of every file in ``paths`` (a builder in several: the latest reported); a
    missing or unreadable file, a malformed entry, or one whose coordinator is gone, is none."""
    return latest_entries(paths, _entry, lambda loaded: loaded.reported)


def _entry(entry: object) -> Loaded | None:
    if not isinstance(entry, dict):
        return None
    slots, full, said, reported = (entry.get(k) for k in ("slots", "full", "said", "reported"))
    if not (isinstance(slots, int) and isinstance(full, int) and 0 < slots < full):
        return None
    if not isinstance(said, str) or not isinstance(reported, int | float):
        return None
    owner = entry.get("owner")
    if not isinstance(owner, str | None) or (owner is not None and owner_gone(owner)):
        return None
    return Loaded(slots, full, said, float(reported), owner)


def record_loads(path: Path, changed: Mapping[str, Loaded]) -> None:
    """Merge ``changed`` into ``path``, each entry owned by this process: a builder given all
    its slots back loses its entry if this process (or no known one) cut it, and one whose
    owner is gone loses it too."""
    with merging(path):
        current = load_loads([path])
        merged = dict(current)
        owner = owner_line(os.getpid())
        for name, loaded in changed.items():
            if loaded.slots >= loaded.full:
                # Its own cut ends; another live coordinator's (one of an older offload left
                # running after an upgrade) stands until that one ends it.
                if (there := current.get(name)) is None or there.owner in (None, owner):
                    merged.pop(name, None)
            else:
                merged[name] = replace(loaded, owner=owner)
        if merged == current:
            return
        data = {
            name: {
                "slots": e.slots,
                "full": e.full,
                "said": e.said,
                "reported": e.reported,
                "owner": e.owner,
            }
            for name, e in sorted(merged.items())
        }
        write_state_json(path, data)
