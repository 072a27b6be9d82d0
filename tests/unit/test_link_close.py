"""Closing a ``Link``: the transport is let go at once (``_release``: an ssh master told to end
while the sessions end) only when no remote process is left to stop over it.

The master's side is run for real in tests/integration/test_link_warm_close.py; here, the
bookkeeping above the transport, with scripted sessions that only answer the serve handshake.
"""

from __future__ import annotations

import asyncio
import contextlib

from typing_extensions import override

from offload.protocol.serve import SERVE_MAGIC_2
from offload.protocol.wire import encode_int
from offload.transport.links.base import SessionPipes
from offload.transport.links.pool import Link
from tests.helpers.worker_wire import Writer, stream


class _Transport:
    """Sessions that answer the handshake; what was asked of the transport, in order."""

    name = "b"

    def __init__(self) -> None:
        self.said: list[str] = []

    async def start(self, stack: contextlib.AsyncExitStack) -> SessionPipes:
        hello = encode_int(SERVE_MAGIC_2) + encode_int(0x205)
        stack.callback(self.said.append, "session closed")
        return SessionPipes(stream(hello), Writer(), None, 100)

    async def kill(self, pid: int, born: str | None = None) -> None:
        self.said.append(f"kill {pid}")

    async def close(self) -> None:
        self.said.append("closed")


class _Link(Link):
    @override
    def _release(self) -> None:
        transport = self._transport
        assert isinstance(transport, _Transport)
        transport.said.append("released")


def test_a_link_with_only_idle_sessions_lets_its_transport_go_before_they_close() -> None:
    transport = _Transport()

    async def go() -> None:
        link = _Link(transport, max_sessions=2)
        await link.warm(2)
        await link.aclose()

    asyncio.run(go())
    assert transport.said == ["released", "session closed", "session closed", "closed"]


def test_a_link_closed_with_a_session_lent_stops_it_before_the_transport_goes() -> None:
    transport = _Transport()

    async def go() -> None:
        link = _Link(transport, max_sessions=2)
        await link.warm(1)
        borrowed, done = asyncio.Event(), asyncio.Event()

        async def borrow() -> None:
            async with link.session():
                borrowed.set()
                await done.wait()

        task = asyncio.create_task(borrow())
        await borrowed.wait()
        await link.aclose()
        done.set()
        await task

    asyncio.run(go())
    assert "released" not in transport.said
    assert transport.said[0] == "kill 100"
    assert transport.said[-1] == "closed"
