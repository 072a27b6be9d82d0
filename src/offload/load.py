"""A builder's real load, as its serve session's start line reports it, and what it costs in slots.

Nix's hook counts only the slot locks held on its own host, so a builder that other clients keep
busy looks idle to it. offload reads the load at no extra cost: every serve session starts with
one line on stderr, written by the remote ``sh -c`` before it execs ``nix-store --serve``
(``offload.transport.ssh``)::

    offload-serve-pid <pid> <cores> <contents of /proc/loadavg> <boot_id>

``cores`` is ``nproc``; ``/proc/loadavg`` is five fields (``9.50 7.10 5.00 3/345 6789``), and
``boot_id`` is ``/proc/sys/kernel/random/boot_id``. Anything the builder cannot tell is ``-``: a
builder without ``/proc`` (macOS) says ``offload-serve-pid 123 8 - -`` and its load is unknown;
an older start line (``offload-serve-pid 123``) carries no load either. The model:

- ``RemoteLoad(cores, load1, runnable, boot_id)``: what one start line said. ``load1`` is the
  1-minute load average, ``runnable`` the instant count of runnable tasks (``3`` of ``3/345``,
  kept for people and JSON; the rule below uses ``load1``, which one busy moment cannot swing),
  ``boot_id`` tells which kernel the builder runs on.
- A ``Link`` remembers the load its first session reported (``link.load``), so reading it costs
  no round trip beyond the session a run opens on every builder anyway.
- The slot rule (``effective_slots``): load beyond the builder's cores is other people's work, and
  each whole core of it takes one of the builder's slots away for this run; one slot always
  stays (a loaded builder is still usable, and a dead one is left to the backoff). A builder
  whose ``boot_id`` equals this machine's shares this kernel: its load is largely this run's own
  work, which the local slots already govern, so it is not adjusted.

Everything here is pure: reading ``/proc`` locally is the caller's business.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from offload.scheduler.policy import MachineSlotSpec

__all__ = [
    "BOOT_ID_FILE",
    "LOADAVG_FILE",
    "UNKNOWN",
    "RemoteLoad",
    "effective_slots",
    "loaded_specs",
    "parse_load_report",
]

LOADAVG_FILE = "/proc/loadavg"
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"

UNKNOWN = "-"
_DECIMAL = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?")
_COUNT = re.compile(r"[0-9]{1,9}")
_RUNNABLE = re.compile(r"([0-9]{1,9})/[0-9]{1,12}")
_BOOT_ID = re.compile(r"[0-9A-Za-z-]{1,64}")


@dataclass(frozen=True)
class RemoteLoad:
    """A builder's cores and load as one start line reported them (see the module docstring)."""

    cores: int
    load1: float
    runnable: int | None = None
    boot_id: str | None = None

    def describe(self) -> str:
        """``load 9.5 on 8 cores``."""
        return f"load {self.load1:g} on {self.cores} core{'s' if self.cores != 1 else ''}"


def parse_load_report(text: str) -> RemoteLoad | None:
    """``<cores> <loadavg fields...> <boot_id>`` (the start line after its pid) as a RemoteLoad.

    None when the load cannot be told: an old start line, ``-`` for the cores or the load, or
    anything malformed. Never raises.
    """
    fields = text.split()
    if len(fields) < 3 or not _COUNT.fullmatch(fields[0]) or not _DECIMAL.fullmatch(fields[1]):
        return None
    cores = int(fields[0])
    load1 = float(fields[1])
    if cores < 1 or not math.isfinite(load1):
        return None
    # The boot id is always last; /proc/loadavg has five fields on Linux, but LXCFS and other
    # kernels may differ, so the rest is read only if it is there and well-formed.
    loadavg = fields[1:-1]
    runnable = _RUNNABLE.fullmatch(loadavg[3]) if len(loadavg) > 3 else None
    boot = fields[-1]
    return RemoteLoad(
        cores=cores,
        load1=load1,
        runnable=int(runnable.group(1)) if runnable else None,
        boot_id=boot.lower() if boot != UNKNOWN and _BOOT_ID.fullmatch(boot) else None,
    )


def effective_slots(slots: int, load: RemoteLoad | None, local_boot_id: str | None) -> int:
    """The slots a builder gets this run: ``slots`` less one per whole core of excess load."""
    if load is None or slots <= 0:
        return slots
    # Same kernel as ours (the local fleet, a container on this host): its load is mostly this
    # run's own builds, already bounded by the local slots; cutting for it would count them twice.
    if load.boot_id is not None and local_boot_id is not None and load.boot_id == local_boot_id:
        return slots
    excess = math.floor(load.load1 - load.cores)
    if excess <= 0:
        return slots
    return max(1, slots - excess)


def loaded_specs(
    specs: Sequence[MachineSlotSpec],
    loads: Mapping[str, RemoteLoad],
    local_boot_id: str | None,
) -> dict[str, MachineSlotSpec]:
    """The specs whose slots the load cuts, by name, with their new slots; others are left out."""
    cut: dict[str, MachineSlotSpec] = {}
    for spec in specs:
        slots = effective_slots(spec.slots, loads.get(spec.name), local_boot_id)
        if slots != spec.slots:
            cut[spec.name] = dataclasses.replace(spec, slots=slots)
    return cut
