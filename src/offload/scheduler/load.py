"""A builder's real load, as far as one look over the connection can tell.

Nix's hook counts only the slot locks held on its own host, so a builder that other clients
keep busy looks idle to it. offload reads the builder's 1-minute load average and core count
once per run: load beyond the cores is other people's work, and each whole core of it takes one
of the builder's slots away for this run (one slot always stays, so the builder is still used
when nothing else can build a job).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["LOAD_COMMAND", "RemoteLoad", "parse_load", "usable_slots"]

# /proc/loadavg, then the number of online cores; POSIX sh and getconf, as on any Linux builder.
LOAD_COMMAND = ["sh", "-c", "cat /proc/loadavg && getconf _NPROCESSORS_ONLN"]


@dataclass(frozen=True)
class RemoteLoad:
    load1: float
    cores: int


def parse_load(text: str) -> RemoteLoad | None:
    """``/proc/loadavg`` followed by a core count; None when it is not that."""
    lines = text.split("\n")
    try:
        load1 = float(lines[0].split()[0])
        cores = int(lines[1].strip())
    except (IndexError, ValueError):
        return None
    if not math.isfinite(load1) or load1 < 0 or cores < 1:
        return None
    return RemoteLoad(load1, cores)


def usable_slots(slots: int, load: RemoteLoad) -> int:
    if slots <= 0:
        return slots
    excess = math.floor(load.load1 - load.cores)
    return max(1, slots - max(0, excess))
