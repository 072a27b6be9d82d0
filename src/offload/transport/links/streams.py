"""A session's streams: what passes through its stdin and stdout (protocol bytes, before ssh's
own compression and encryption) counted in its link's ``LinkStats``, and a daemon session's
stderr kept for the error that explains a failure.

A session over ssh whose stdout ends is asked why (``silence``): a builder that stopped
answering (hung, stopped, or the network to it cut) and a builder that closed the session both
end it the same way, ssh exiting 255 without a word (its "Timeout, server not responding" is
logged at INFO, which LogLevel ERROR or QUIET hides, and by the master, not by the session's
client, which says nothing at any level). What tells them apart here: the connection (the ssh
master's control socket) is gone, not only the session, and nothing came from the builder on
the session for at least ssh's keepalive budget (``Keepalive.budget``: ``ServerAliveInterval``
x ``ServerAliveCountMax``, or 1 s less than the interval with a count of 0; below the least
silence after which ssh gives a connection up). The budget is the session's own
(``SessionPipes.keepalive``): the values its ssh was given, a user's in ``NIX_SSHOPTS`` before
offload's 4 and 2 (8 s). A builder that closed the connection after a shorter silence, or
closed only the session, is still said to have closed it. One that closed the connection after
a longer silence (sshd killed during a quiet build) is taken for one that stopped answering:
the silence said is still true. With keepalives off (``ServerAliveInterval=0``) ssh never
gives up, and a connection that ended is always said to be closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from offload.errors import PeerSilent
from offload.protocol.pump import pump
from offload.protocol.serve import ByteWriter
from offload.protocol.stderr import pump_lines
from offload.protocol.wire import ByteReader
from offload.tasks import stop
from offload.transport.links.base import LinkStats, SessionPipes

__all__ = ["CountingReader", "CountingWriter", "keep_stderr", "silence"]


class CountingReader:
    """``inner`` counted; at its end, ``ended(last)`` (``last``: when bytes last came, monotonic)
    may say the peer stopped answering, raised in place of the end."""

    def __init__(
        self,
        inner: ByteReader,
        stats: LinkStats,
        ended: Callable[[float], PeerSilent | None] = lambda _last: None,
    ) -> None:
        self._inner = inner
        self._stats = stats
        self._ended = ended
        self.last = time.monotonic()

    async def readexactly(self, n: int) -> bytes:
        try:
            data = await self._inner.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:  # it said something to the last
                self.last = time.monotonic()
            silent = self._ended(self.last)
            if silent is not None:
                raise silent from exc
            raise
        self.last = time.monotonic()
        self._stats.bytes_received += len(data)
        return data


def silence(
    pipes: SessionPipes, heard: Callable[[], float]
) -> Callable[[float], PeerSilent | None]:
    """Why ``pipes``'s stdout ended, when the builder stopped answering (module docstring);
    ``heard()``: when its stderr last said something."""

    def ended(last: float) -> PeerSilent | None:
        quiet = time.monotonic() - max(last, heard())
        if not pipes.over_ssh or quiet < pipes.keepalive.budget or not pipes.connection_gone():
            return None
        return PeerSilent(
            quiet,
            "ssh's keepalives unanswered: the builder is hung or stopped, or the network to it "
            "is down",
        )

    return ended


class CountingWriter:
    def __init__(self, inner: ByteWriter, stats: LinkStats) -> None:
        self._inner = inner
        self._stats = stats

    def write(self, data: bytes) -> None:
        self._stats.bytes_sent += len(data)
        self._inner.write(data)

    async def pump_from(self, src: int, limit: int | None) -> int:
        """Bytes from a child's pipe into the connection (``offload.protocol.pump``), counted."""
        moved = await pump(src, self._inner, limit)
        self._stats.bytes_sent += moved
        return moved

    async def drain(self) -> None:
        await self._inner.drain()

    def close(self) -> None:
        self._inner.close()

    async def wait_closed(self) -> None:
        wait_closed = getattr(self._inner, "wait_closed", None)
        if wait_closed is not None:
            await wait_closed()


def keep_stderr(
    stack: contextlib.AsyncExitStack, pipes: SessionPipes, log: Callable[[str], None]
) -> None:
    """A daemon session's stderr (ssh's and the daemon's own words, never build logs: those
    come in-band) given to ``log`` (the tail that explains a failure) until ``stack`` closes;
    read, or ssh blocks on a full pipe. The serve client reads its own."""
    stderr = pipes.stderr
    if pipes.dialect.name != "daemon" or stderr is None:
        return
    task = asyncio.get_running_loop().create_task(
        pump_lines(stderr, lambda raw: log(raw.decode(errors="replace").rstrip()))
    )
    stack.push_async_callback(stop, task)
