"""Builders full of other clients' builds, as the hook coordinator sees them.

A derivation accepted for a builder whose own slots are all held by other clients (on any
host: the builder's slot locks, ``offload.hook.links``) does not wait there: it goes back to
the dispatch (``offload.hook.dispatch``), which places it where it is expected to finish first,
the full builder's start taken by ``policy.full``'s rent-or-buy rule (``offload.hook.decide``:
full as long again as it has been full). When the builder is full is kept here, per builder,
from when a derivation first found it full until a slot there is this coordinator's again.

While derivations wait for a full builder, one *probe* per builder waits there for a slot as
a build would (asking again every ``BUSY_POLL`` s, its want marker on the builder taking its
turn for it); once it has one it ends, its session keeps the slot ``LINGER`` s for the build
placed there next, the builder is no longer full and the dispatch looks again at once. A probe
ends when no derivation waits for its builder any more (each moved elsewhere), so an idle
coordinator holds no slot and leaves no want marker there. A probe that cannot reach the
builder just ends: the next build placed there meets the failure and backs the builder off.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Mapping

from offload.config.machines import Machine
from offload.errors import OffloadError
from offload.hook.links import BuilderLinks, Unreachable

__all__ = ["MOVED_NOTE", "WAIT_NOTE", "FullBuilders"]

WAIT_NOTE = (
    "offload: builder '{name}': every slot there is held by another client; waiting for a "
    "slot there, or elsewhere once that finishes it sooner"
)
# Said in the build's log when a derivation accepted for one builder is built on another.
MOVED_NOTE = "offload: moved from builder '{origin}' to '{target}': {why}"


class FullBuilders:
    """Which builders are full, since when, and the probes waiting for a slot on them."""

    def __init__(self, links: BuilderLinks, notify: Callable[[], None]) -> None:
        self._links = links
        self._notify = notify  # the dispatch: look again, a builder has a slot for us
        self._since: dict[str, float] = {}
        self._waiting: Counter[str] = Counter()  # derivations waiting for each full builder
        self._probes: dict[str, asyncio.Task[None]] = {}

    def since(self) -> dict[str, float]:
        """The full builders, each with when it was first found full (wall clock)."""
        return dict(self._since)

    def wait(self, machine: Machine, env: Mapping[str, str], now: float) -> None:
        """A derivation found ``machine`` full at ``now`` and waits in the dispatch: full since
        then (unless known earlier), with a probe waiting for a slot there."""
        name = machine.name
        self._since.setdefault(name, now)
        self._waiting[name] += 1
        if name not in self._probes:
            self._probes[name] = asyncio.get_running_loop().create_task(
                self._probe(machine, env), name=f"probe:{name}"
            )

    def left(self, name: str) -> None:
        """A derivation that waited for ``name`` is placed (or gone): the last one ends the
        probe, and the builder is no longer taken for full."""
        self._waiting[name] -= 1
        if self._waiting[name] > 0:
            return
        del self._waiting[name]
        self._since.pop(name, None)
        probe = self._probes.pop(name, None)
        if probe is not None:
            probe.cancel()

    async def _probe(self, machine: Machine, env: Mapping[str, str]) -> None:
        try:
            with contextlib.suppress(Unreachable, OffloadError):
                await self._links.wait_for_slot(machine, env)
        finally:
            if self._probes.get(machine.name) is asyncio.current_task():
                del self._probes[machine.name]
                self._since.pop(machine.name, None)
                self._notify()

    async def aclose(self) -> None:
        probes, self._probes = list(self._probes.values()), {}
        for probe in probes:
            probe.cancel()
        if probes:
            await asyncio.wait(probes)
