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
import math
from collections.abc import Callable, Mapping

from offload.errors import OffloadError, TransportError
from offload.scheduler.run.plan import PoolMember

__all__ = ["SPACING", "Reconnects"]

# Seconds after a reconnect before the same builder is reconnected again.
SPACING = 60.0
# Sessions tried: idle ones of the link's pool may all have died with the connection.
_ATTEMPTS = 4


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
        task = asyncio.create_task(_reconnect(member), name=f"reconnect:{machine}")
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


async def _reconnect(member: PoolMember) -> None:
    """A plain session there that answers a request (back in the link's pool afterwards, for
    the next build to take). One lent from the pool may have died with the connection without
    a word yet: the request finds out, the pool drops it, and the next one is tried (a few:
    then a new one); a new one that does not open ends it."""
    for attempt in range(_ATTEMPTS):
        try:
            async with member.link.session() as client:
                await client.query_valid_paths([])
                return
        except TransportError:
            raise  # a new session did not open: the builder is out of reach
        except OffloadError:
            if attempt == _ATTEMPTS - 1:
                raise
