"""Builders' load as the hook's coordinator follows it: their usable slots go with it.

Every session the coordinator opens on a builder (for a build, or a probe waiting for a slot
there, ``offload.hook.links``) reports the builder's load in its start line (``offload.load``;
``Link.on_load``). ``HookLoads`` keeps one ``FollowedLoad`` per builder, the same rule as
``offload build``'s: each whole core of load beyond the builder's cores takes one of its slots
away for this host's builds (down to one), the coordinator's own builds running there left out
(their kernel-style average, counted from when a build takes its slot on this host to when it
gives it back), a slot comes back half a core below the line that cut it, and a builder on this
host's kernel is left alone. The decisions (``offload.hook.decide.cut``) then count only the
usable slots; builds already running go on.

A change is told in the log of the next build placed on that builder (``LOADED_NOTE``: Nix shows
it as the build's own output) and written to ``loads.json`` in the state directory for
``offload status`` (``offload.load_state``), until the builder has all its slots again or the
coordinator ends.

Only the coordinator follows loads. A hook in its own process (``OFFLOAD_HOOK_COORDINATOR=0``,
or no coordinator could start) lives for one derivation: it hears a builder's load only from the
session it opens on the builder it already chose, after deciding, and it cannot know how many
of the builds there are this host's over the last minute (each was another process), so it
could only guess the own-builds share the rule leaves out; it counts slots as before.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

from offload.load import FollowedLoad, RemoteLoad
from offload.load_state import LOADS_FILE, Loaded, record_loads

__all__ = ["LOADED_NOTE", "HookLoads"]

LOADED_NOTE = "offload: builder '{name}' is loaded: {said} for this host's builds"


class HookLoads:
    """Each builder's usable slots by the load its sessions report (module docstring)."""

    def __init__(
        self,
        state: Path,
        local_boot_id: str | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._state = state
        self._local_boot_id = local_boot_id
        self._clock = clock
        self._wall = wall
        self._followed: dict[str, FollowedLoad] = {}
        self._untold: dict[str, str] = {}  # the latest change per builder, not yet in a log

    def _of(self, name: str, full: int | None = None) -> FollowedLoad:
        """Builder ``name``'s, made anew (its own builds kept) when ``full`` changed: its
        machines entry did, or its first builds started before any report (``full`` 0)."""
        old = self._followed.get(name)
        if old is not None and (full is None or old.full == full):
            return old
        new = self._followed[name] = FollowedLoad(full or 0)
        if old is not None:
            new.own = old.own
        return new

    def reported(self, name: str, full: int, load: RemoteLoad) -> None:
        """A session start on builder ``name`` (``full`` slots) reported ``load``."""
        followed = self._of(name, full)
        said = followed.reported(load, self._clock(), self._local_boot_id)
        if said is None:
            return
        self._untold[name] = LOADED_NOTE.format(name=name, said=said)
        entry = Loaded(followed.slots, full, said, self._wall())
        with contextlib.suppress(OSError):  # status shows less; the builds go on
            record_loads(self._state / LOADS_FILE, {name: entry})

    def slots(self) -> dict[str, int]:
        """The builders whose usable slots are cut now, with how many they have."""
        return {name: f.slots for name, f in self._followed.items() if f.slots < f.full}

    def started(self, name: str) -> None:
        """One of the coordinator's builds took a slot on builder ``name``."""
        self._of(name).own.change(self._clock(), +1)

    def ended(self, name: str) -> None:
        self._of(name).own.change(self._clock(), -1)

    def forget(self) -> None:
        """The coordinator ends: its cuts end with it, and ``offload status`` no longer shows
        them."""
        cut = {name: Loaded(f.full, f.full, "", self._wall()) for name, f in self._followed.items()}
        with contextlib.suppress(OSError):
            record_loads(self._state / LOADS_FILE, cut)

    def untold(self, name: str) -> str | None:
        """The change on builder ``name`` not told yet, for the log of a build there."""
        return self._untold.pop(name, None)
