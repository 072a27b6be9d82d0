"""Builders whose connection was lost mid-run, reconnected at once.

A copy lost with its connection backs its builder off (``Endings._machine_failed``): a builder
that is down must not cost the run a connect timeout per build. But a connection is lost too
where the builder is fine: this host's ssh master ended (killed; a persistent one ended by
``ssh -O exit``), or the network dropped for a moment (a laptop's Wi-Fi, a VPN reconnecting).
ssh says nothing that tells these apart (it exits 255 either way), so such a fall starts a
*reconnect*: a session opened there at once, as the run's first one was (a new ssh master
where the old one is gone, the builder's store program answering). Opened, the builder takes
work again at once, its failure kept (``Policy.retry_now``: failing again backs it off
longer); not, its backoff stands, as before. A fall that is no lost connection (a builder
whose disk filled up, Nix's answer there) is not reconnected, and a builder is reconnected at
most once per ``SPACING`` seconds: one whose connections keep dropping is backed off.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Mapping

from offload.errors import OffloadError
from offload.scheduler.run.plan import MemberLink, PoolMember
from offload.transport.links import BuilderFullError

__all__ = ["SPACING", "Reconnects", "answers"]

# Seconds after a reconnect before the same builder is reconnected again.
SPACING = 60.0


class Reconnects:
    """The reconnects under way, one task each (``tasks``: task -> builder)."""

    def __init__(self, members: Mapping[str, PoolMember], *, clock: Callable[[], float]) -> None:
        self.members = members
        self.clock = clock
        self.tasks: dict[asyncio.Task[None], str] = {}
        self._last: dict[str, float] = {}

    def start(self, machine: str) -> None:
        """Reconnect ``machine``, fallen by a lost connection, unless it is the local machine,
        is being reconnected, or was within ``SPACING`` seconds."""
        member = self.members.get(machine)
        now = self.clock()
        if (
            member is None
            or not member.remote
            or machine in self.tasks.values()
            or now - self._last.get(machine, -math.inf) < SPACING
        ):
            return
        self._last[machine] = now
        task = asyncio.create_task(answers(member.link, machine), name=f"reconnect:{machine}")
        self.tasks[task] = machine

    def ended(self, task: asyncio.Task[None]) -> tuple[str, bool]:
        """A reconnect ended: its builder, and whether it answered. An error of its link
        (``OffloadError``) is a builder still down; any other is a bug's, raised."""
        machine = self.tasks.pop(task)
        if task.cancelled():
            return machine, False
        error = task.exception()
        if error is not None and not isinstance(error, OffloadError):
            raise error
        return machine, error is None


async def answers(link: MemberLink, name: str) -> None:
    """Builder ``name`` answers on ``link``: a new session opens there, over a new connection
    if the last one ended (every slot held by others is an answer too); the link's error if
    not. Never one lent from the link's pool: one dead with the connection would pass for an
    answer, and one asked would be stopped as cut short, which on a builder still out of reach
    is a warning that its process could not be stopped. Asked as a probe (``fresh``: as no
    client), it leaves no want marker there for others to yield to. offload-hook's
    coordinator reconnects with it too (``offload.hook.reconnects``)."""

    def full() -> None:
        raise BuilderFullError(name)

    with contextlib.suppress(BuilderFullError):
        async with link.build_session(on_wait=full, fresh=True):
            pass
