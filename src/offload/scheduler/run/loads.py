"""Builders' load during a run, as the executor follows it: their usable slots go with it.

Every session start on a builder reports its load (``offload.load``; ``Link.on_load`` in the
transport), which the run hands to ``Loads.reported``; the first, before the run starts, is the
start-of-run cut. The builder's usable slots are set again by the rule of ``offload.load``
(``FollowedLoad``, which the hook's coordinator follows too), with this run's own builds there
left out of the load (``OwnLoad``: the executor says when a copy starts and ends there). A
builder sharing this host's kernel is never adjusted. A change goes to the policy
(``Policy.on_load``: running copies go on, fewer start, or more again), to the member's spec
(this host's slot locks, the run's events and its ETA count the new number), and out as a
``loaded`` machine event with the load and the slots: one stderr line, a ``--json`` event, a
line in the summary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from offload.load import FollowedLoad, RemoteLoad
from offload.scheduler.policy import Policy
from offload.scheduler.run.events import RunEvents
from offload.scheduler.run.plan import PoolMember

__all__ = ["Loads"]


class Loads:
    """Each builder's usable slots, by the load its sessions report (module docstring)."""

    def __init__(
        self,
        policy: Policy,
        members: dict[str, PoolMember],
        events: RunEvents,
        *,
        clock: Callable[[], float],
        poke: Callable[[], None],
        local_boot_id: str | None,
    ) -> None:
        self.policy = policy
        self.members = members  # the executor's own: a change is seen by every part of it
        self.events = events
        self.clock = clock
        self.poke = poke  # wakes the executor's loop: the policy has news
        self.local_boot_id = local_boot_id
        self._followed = {name: FollowedLoad(member.spec.slots) for name, member in members.items()}

    def started(self, machine: str) -> None:
        """A copy of this run's started on ``machine``."""
        self._followed[machine].own.change(self.clock(), +1)

    def ended(self, machine: str) -> None:
        self._followed[machine].own.change(self.clock(), -1)

    def reported(self, machine: str, load: RemoteLoad) -> None:
        """A session start on ``machine`` reported ``load``."""
        member = self.members.get(machine)
        if member is None or not member.remote:
            return
        followed = self._followed[machine]
        said = followed.reported(load, self.clock(), self.local_boot_id)
        if said is None:
            return
        slots = followed.slots
        self.policy.on_load(machine, slots)
        spec = dataclasses.replace(member.spec, slots=slots)
        self.members[machine] = dataclasses.replace(member, spec=spec)
        self.events.machine_note(machine, "loaded", said, slots)
        self.poke()
