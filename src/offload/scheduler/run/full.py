"""Builders full of other clients' builds, as the executor sees them.

A build copy that finds every builder-side slot held by other clients (its session waits,
``BuildCopies.on_full``) is told to the policy, which withholds that builder's free slots and
may move the waiting job elsewhere (``policy.full``). The builder being full is said once per
episode: a ``full`` machine event (one stderr line, a ``--json`` event, a line in the summary).

A builder with withheld slots and no copy of this run waiting there gets a *probe*: a build
session that waits for a slot like any build and, once it has one, ends at once; its session
keeps the slot for ``LINGER`` seconds (``transport.links``) for the next build this run starts
there, and the policy gets one slot back (``on_slot_freed``). So a builder that frees up is
used again within ``BUSY_POLL`` seconds, and never by more builds than it has slots: every
build session there still takes its own slot lock on the builder.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from offload.errors import OffloadError
from offload.scheduler.policy import Policy
from offload.scheduler.run.events import RunEvents
from offload.scheduler.run.plan import PoolMember

__all__ = ["FULL_MESSAGE", "FullBuilders"]

FULL_MESSAGE = "every slot there is held by other clients: builds wait or move elsewhere"


class FullBuilders:
    """Reports copies waiting on full builders to the policy; probes those builders."""

    def __init__(
        self,
        policy: Policy,
        members: Mapping[str, PoolMember],
        events: RunEvents,
        *,
        clock: Callable[[], float],
        poke: Callable[[], None],
    ) -> None:
        self.policy = policy
        self.members = members
        self.events = events
        self.clock = clock
        self.poke = poke  # wakes the executor's loop: the policy has news
        self.probes: dict[asyncio.Task[None], str] = {}
        self._full: set[str] = set()
        # Copies to stop at once: a second copy found its builder full (``on_machine_full``).
        self.drop: list[tuple[str, str]] = []

    def full(self, drv_path: str, machine: str) -> None:
        if self.policy.on_machine_full(drv_path, machine, self.clock()):
            self.drop.append((drv_path, machine))
        if machine not in self._full:
            self._full.add(machine)
            self.events.machine_note(machine, "full", FULL_MESSAGE)
        self.poke()

    def slot_taken(self, drv_path: str, machine: str) -> None:
        self.policy.on_slot_taken(drv_path, machine, self.clock())
        self._freed(machine)

    def _freed(self, machine: str) -> None:
        if machine in self._full:
            self._full.discard(machine)
            self.events.machine_up(machine, "a slot is free there again")
        self.poke()

    def gone(self, machine: str) -> None:
        """``machine`` was backed off: its probes are stopped and it is no longer full, so no
        slot found free there later says it is up while it is not."""
        self._full.discard(machine)
        for task, name in self.probes.items():
            if name == machine:
                task.cancel()

    def probe(self) -> None:
        """Start a probe on each builder with withheld slots and no copy waiting there."""
        probing = set(self.probes.values())
        for name, member in self.members.items():
            if (
                member.remote
                and name not in probing
                and self.policy.withheld(name) > 0
                and not self.policy.waiting(name)
            ):
                task = asyncio.create_task(self._probe(member), name=f"probe:{name}")
                self.probes[task] = name

    async def _probe(self, member: PoolMember) -> None:
        # A slot beyond this run's own: its lingering one is counted free already, and lent
        # to each probe in turn it had given back every withheld slot for one freed.
        async with member.link.build_session(fresh=True):
            pass

    def probed(self, task: asyncio.Task[None]) -> tuple[str, OffloadError | None]:
        """A probe ended: a slot is there again, or the builder failed (the error)."""
        machine = self.probes.pop(task)
        if task.cancelled():
            return machine, None
        error = task.exception()
        if error is None:
            if self.policy.withheld(machine) > 0:
                self.policy.on_slot_freed(machine)
            self._freed(machine)
            return machine, None
        if isinstance(error, OffloadError):
            return machine, error
        raise error
