"""Accepted derivations waiting for a builder slot, in the coordinator.

A hook on its own can only ``postpone`` a derivation whose best builder is busy, and Nix 2.8
asks about it again only after its poll interval (5 s), however soon the slot frees. The
coordinator instead accepts it (Nix does not care how long a hook takes after accepting, nor on
which machine it really builds) and keeps it here until a slot is worth taking. Each waiter
brings a ``pick``: given the builders now, the slot it should take now (held, with its expected
end written in), or None to keep waiting because a busy builder still finishes it sooner. The
dispatcher asks waiters highest priority first (its work and the work history saw after it,
``history.tails``: its critical path; its work alone where none was seen), so when a fast slot
frees the derivation with the most work behind it takes it; it asks again whenever one of our
builds ends (``notify``) and at least every ``TICK`` seconds, for slots freed by other
processes and expected ends that have passed. Among equal priorities the first come is asked
first; a derivation that waits again (its builder turned out full, or failed) keeps the turn it
first came with (``ticket``), as Nix's own queue would. What waits (each derivation's name and
since when) is told to ``on_queue`` when that changes (again, if it says it could not keep
it), at most once every ``TELL_EVERY`` seconds: the coordinator writes it for ``offload
status`` (``offload.hook_queue``), about a millisecond a write, which a nix-build of many
small derivations would otherwise pay hundreds of times.

Each pick is given the works of the waiters asked before it that stay queued: they take the
slots they wait for first, so a waiter counts them there (``decide.place_queued``). Without
them every waiter saw the same next slot of the fastest builder as its own, all of them waited
for it, and a free slot on a slower builder stood idle although the queue on the fast one would
finish them later: on the bench's layered graph the fast builder was kept 18% busier than
``offload build`` keeps it and the slow one a third as busy, and the wide graph took 27.8 s
where it now takes 23.0 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from offload.hook_queue import Queued

__all__ = ["TICK", "Dispatch", "Pick", "Placement"]

TICK = 0.25
TELL_EVERY = 0.5


@dataclass(frozen=True)
class Placement:
    machine: str
    fd: int  # the held slot lock: closing it frees the slot
    expected_end: float


# Given the works of the waiters asked before it that stay queued: the slot to take, or None
# (it waits for a busy builder's slot, and the waiters after it count it there).
Pick = Callable[[tuple[float, ...]], Placement | None]


@dataclass(eq=False)
class _Waiter:
    work: float
    pick: Pick
    priority: float  # asked in this order, the highest first
    ticket: int  # then the first come first (``Dispatch.ticket``)
    queued: Queued  # its name and since when it waits, for ``offload status``
    placed: asyncio.Future[Placement] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Dispatch:
    def __init__(
        self,
        tick: float = TICK,
        on_queue: Callable[[Sequence[Queued]], bool] | None = None,
        tell_every: float = TELL_EVERY,
    ) -> None:
        self.tick = tick
        self._on_queue = on_queue
        self._tell_every = tell_every
        self._told: list[Queued] = []  # what waited when ``on_queue`` was last told
        self._telling: asyncio.TimerHandle | None = None  # a tell to come
        self._waiters: list[_Waiter] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._tickets = itertools.count()

    def queued(self, above: float = -math.inf) -> list[float]:
        """The works of the derivations waiting with a priority of at least ``above`` (those
        that take a slot before one of that priority), in the order they are asked: the
        coordinator's queue on the builders."""
        return [w.work for w in self._in_turn() if not w.placed.done() and w.priority >= above]

    def _in_turn(self) -> list[_Waiter]:
        """The waiters in the order they are asked: the highest priority first, then the
        first come."""
        return sorted(self._waiters, key=lambda w: (-w.priority, w.ticket))

    def ticket(self) -> int:
        """A derivation's turn among equal priorities, taken when it first waits and given
        to every ``take`` of it."""
        return next(self._tickets)

    def notify(self) -> None:
        """A slot may have freed (one of our builds ended): look again now."""
        self._wake.set()

    async def take(
        self,
        work: float,
        pick: Pick,
        priority: float | None = None,
        ticket: int | None = None,
        *,
        name: str = "",
        since: float | None = None,
    ) -> Placement:
        """Wait until ``pick`` places the derivation (``name``, waiting since ``since``: now
        when not given); its slot is then the caller's to free. ``priority``: its place in the
        queue (its work when not given); ``ticket``: its turn among equal priorities (a new
        one when not given)."""
        if ticket is None:
            ticket = self.ticket()
        priority = work if priority is None else priority
        queued = Queued(name, time.time() if since is None else since)
        waiter = _Waiter(work, pick, priority, ticket, queued)
        self._waiters.append(waiter)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="dispatch")
        self.notify()
        try:
            return await waiter.placed
        except asyncio.CancelledError:
            if waiter.placed.done() and not waiter.placed.cancelled():
                os.close(waiter.placed.result().fd)  # placed as we were cancelled: free it
            raise
        finally:
            self._waiters.remove(waiter)
            self._tell()

    def _tell(self) -> None:
        """What waits changed, maybe: told to ``on_queue`` now, or once ``tell_every`` is up
        since the last tell (what waits then)."""
        if self._on_queue is None or self._telling is not None:
            return
        if self._tell_every <= 0:
            self._told_now()
            return
        loop = asyncio.get_running_loop()
        self._telling = loop.call_later(self._tell_every, self._told_now)

    def _told_now(self) -> None:
        self._telling = None
        waiting = [w.queued for w in self._in_turn() if not w.placed.done()]
        if self._on_queue is None or waiting == self._told:
            return
        if self._on_queue(waiting):
            self._told = waiting
        elif self._tell_every > 0:  # not kept (a full disk): told again, or the file says
            self._tell()  # for hours what waited once

    async def _run(self) -> None:
        while any(not w.placed.done() for w in self._waiters):
            self._wake.clear()
            ahead: list[float] = []  # works of the waiters asked so far that stay queued
            for waiter in self._in_turn():
                if waiter.placed.done():
                    continue
                try:
                    placement = waiter.pick(tuple(ahead))
                except Exception as exc:  # noqa: BLE001 - the waiter's own failure, given to it
                    waiter.placed.set_exception(exc)
                    continue
                if placement is None:
                    ahead.append(waiter.work)
                else:
                    waiter.placed.set_result(placement)
            self._tell()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tick)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        if self._telling is not None:
            self._telling.cancel()
            self._telling = None
        if self._told and self._on_queue is not None:  # nothing waits here any more
            self._told = []
            self._on_queue([])
