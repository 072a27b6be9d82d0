"""A builder's real load, as its serve session's start line reports it, and what it costs in slots.

Nix's hook counts only the slot locks held on its own host, so a builder that other clients keep
busy looks idle to it. offload reads the load at no extra cost: every serve session starts with
one line on stderr, written by the remote ``sh -c`` before it execs ``nix-store --serve``
(``offload.transport.wrapper``)::

    offload-serve-pid <pid> <cores> <contents of /proc/loadavg> <boot_id>

``cores`` is ``nproc``; ``/proc/loadavg`` is five fields (``9.50 7.10 5.00 3/345 6789``), and
``boot_id`` is ``/proc/sys/kernel/random/boot_id``. Anything the builder cannot tell is ``-``: a
builder without ``/proc`` (macOS) says ``offload-serve-pid 123 8 - -`` and its load is unknown;
an older start line (``offload-serve-pid 123``) carries no load either. The model:

- ``RemoteLoad(cores, load1, runnable, boot_id)``: what one start line said. ``load1`` is the
  1-minute load average, ``runnable`` the instant count of runnable tasks (``3`` of ``3/345``,
  kept for people and JSON; the rule below uses ``load1``, which one busy moment cannot swing),
  ``boot_id`` tells which kernel the builder runs on.
- A ``Link`` remembers the load its latest session reported (``link.load``), so reading it costs
  no round trip beyond the sessions a run opens on every builder anyway, and a run hears of it
  again at every session start there (``Link.on_load``).
- The slot rule (``effective_slots``): load beyond the builder's cores is other people's work, and
  each whole core of it takes one of the builder's slots away for this run; one slot always
  stays (a loaded builder is still usable, and a dead one is left to the backoff). A builder
  whose ``boot_id`` equals this machine's shares this kernel: its load is largely this run's own
  work, which the local slots already govern, so it is not adjusted.
- During a run the load also holds the run's own builds there. ``OwnLoad`` says how much: the
  kernel's 1-minute average is an exponential average over ``LOAD1_SECONDS`` of the runnable
  tasks, so this run's share is the same average of the number of its builds running there,
  each counted as one (``own`` in the rule is subtracted from ``load1``). A build that keeps
  several cores busy counts more than one in the kernel's average: the rest reads as others'
  load and may cost a slot, but then the builder's cores are over-full anyway, and one build
  fewer at a time costs it little. A copy counts from its start, waiting for a slot and
  sending inputs included: that makes the cut smaller, never larger.
- ``adjusted_slots`` applies the rule again at each report: slots are cut at once, and given
  back only once the load is ``LIFT_MARGIN`` of a core below the line that cut them, so a load
  hovering at a whole number does not take a slot and give it back at every session start.
- ``FollowedLoad`` is one builder followed through a run (``offload build``'s executor) or a
  hook coordinator's life: its full and current slots and its ``OwnLoad``; each report gives
  the new slots when they change, and ``describe_cut`` the line that tells people.

Everything here is pure but ``local_boot_id``, the one reader of this machine's own boot id.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BOOT_ID_FILE",
    "LIFT_MARGIN",
    "LOAD1_SECONDS",
    "LOADAVG_FILE",
    "UNKNOWN",
    "FollowedLoad",
    "OwnLoad",
    "RemoteLoad",
    "adjusted_slots",
    "describe_cut",
    "effective_slots",
    "local_boot_id",
    "parse_load_report",
]

LOADAVG_FILE = "/proc/loadavg"
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"

UNKNOWN = "-"
# The time constant of the kernel's 1-minute load average (kernel/sched/loadavg.c: every 5 s,
# load1 = load1 * e^(-5/60) + runnable * (1 - e^(-5/60))).
LOAD1_SECONDS = 60.0
# How far (in cores) the load must fall below the line that cut a slot before it comes back.
LIFT_MARGIN = 0.5
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


def effective_slots(
    slots: int, load: RemoteLoad | None, local_boot_id: str | None, own: float = 0.0
) -> int:
    """The slots a builder gets: ``slots`` less one per whole core of load beyond its cores,
    ``own`` (this run's share of ``load1``, ``OwnLoad``) left out."""
    if load is None or slots <= 0:
        return slots
    # Same kernel as ours (the local fleet, a container on this host): its load is mostly this
    # run's own builds, already bounded by the local slots; cutting for it would count them twice.
    if load.boot_id is not None and local_boot_id is not None and load.boot_id == local_boot_id:
        return slots
    excess = math.floor(load.load1 - own - load.cores)
    if excess <= 0:
        return slots
    return max(1, slots - excess)


def adjusted_slots(
    slots: int, current: int, load: RemoteLoad, local_boot_id: str | None, own: float
) -> int:
    """A builder's slots once ``load`` is reported, from ``current`` (of ``slots``): cut at once,
    given back only below the line by ``LIFT_MARGIN`` (module docstring)."""
    given = effective_slots(slots, load, local_boot_id, own)
    if given <= current:
        return given
    return max(current, effective_slots(slots, load, local_boot_id, own - LIFT_MARGIN))


class OwnLoad:
    """What this run's builds on one builder add to its 1-minute load average: the number of
    them running, averaged as the kernel averages (``LOAD1_SECONDS``), from 0 at the start."""

    def __init__(self) -> None:
        self.running = 0
        self._average = 0.0
        self._since = 0.0  # when ``running`` last changed (``_average`` is as of then)

    def value(self, now: float) -> float:
        """The average at ``now`` (on the clock ``change`` is given)."""
        if not self.running and not self._average:
            return 0.0
        decay = math.exp(-max(0.0, now - self._since) / LOAD1_SECONDS)
        return self.running + (self._average - self.running) * decay

    def change(self, now: float, by: int) -> None:
        """``by`` more (or fewer) of this run's builds run there from ``now``."""
        self._average = self.value(now)
        self._since = now
        self.running = max(0, self.running + by)


class FollowedLoad:
    """One builder's usable slots as its reported load has them, from ``full`` (module
    docstring): the caller says when its builds there start and end, and hands in each report."""

    def __init__(self, full: int) -> None:
        self.full = full
        self.slots = full
        self.own = OwnLoad()

    def reported(self, load: RemoteLoad, now: float, local_boot_id: str | None) -> str | None:
        """Take ``load`` (reported at ``now``): the line saying the new slots when they
        changed (``describe_cut``), else None."""
        own = self.own.value(now)
        slots = adjusted_slots(self.full, self.slots, load, local_boot_id, own)
        if slots == self.slots:
            return None
        self.slots = slots
        return describe_cut(load, own, slots, self.full)


def describe_cut(load: RemoteLoad, own: float, slots: int, full: int) -> str:
    """``load 9.5 on 8 cores (1.2 of it this run's builds): 2 of 4 slots``."""
    share = f" ({own:.1f} of it this run's builds)" if round(own, 1) else ""
    given = f"all {full} slots again" if slots == full else f"{slots} of {full} slots"
    return f"{load.describe()}{share}: {given}"


def local_boot_id() -> str | None:
    """This machine's boot id, to tell builders that share its kernel; None if unreadable."""
    try:
        return Path(BOOT_ID_FILE).read_text().strip().lower() or None
    except OSError:
        return None
