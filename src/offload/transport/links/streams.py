"""A session's streams: what passes through its stdin and stdout (protocol bytes, before ssh's
own compression and encryption) counted in its link's ``LinkStats``, and a daemon session's
stderr kept for the error that explains a failure."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from offload.protocol.pump import pump
from offload.protocol.serve import ByteWriter
from offload.protocol.stderr import pump_lines
from offload.protocol.wire import ByteReader
from offload.tasks import stop
from offload.transport.links.base import LinkStats, SessionPipes

__all__ = ["CountingReader", "CountingWriter", "keep_stderr"]


class CountingReader:
    def __init__(self, inner: ByteReader, stats: LinkStats) -> None:
        self._inner = inner
        self._stats = stats

    async def readexactly(self, n: int) -> bytes:
        data = await self._inner.readexactly(n)
        self._stats.bytes_received += len(data)
        return data


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
