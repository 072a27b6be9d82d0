"""The first session over a master that was there already, started before the run asks.

A run that finds a builder's persistent master alive (kept by an earlier run or by
offload-hook, ``offload.transport.persist``) has nothing left to connect there, yet its first
session on that builder (a plain one: the run reads what the builder holds with it) still costs
an ssh session over the master and the start of the builder's serve program, most of a kept
run's start-up after evaluation. ``SshTransport.connect_early`` therefore begins it at once,
while the run imports what it builds with, and the run's first plain session takes it
(``take``). Its hello is written as it starts: the event loop may not run again before the
imports are done, and the builder's program answers meanwhile. One nobody took (the run ended
first, or its first session was another kind) is ended by ``drop``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from offload.tasks import stop
from offload.transport.links.base import SessionPipes

__all__ = ["FirstSession"]


@dataclass(frozen=True)
class FirstSession:
    stack: contextlib.AsyncExitStack  # owns the session's process
    opening: asyncio.Task[SessionPipes]

    @classmethod
    async def begin(
        cls,
        spawn: Callable[[contextlib.AsyncExitStack], Awaitable[asyncio.subprocess.Process]],
        hello: bytes,
        opened: Callable[[asyncio.subprocess.Process], Coroutine[Any, Any, SessionPipes]],
    ) -> FirstSession | None:
        """The session ``spawn`` starts, sent ``hello``, opening (``opened``) in a task; None
        if it could not be started: the session started later meets the same error and says
        it."""
        stack = contextlib.AsyncExitStack()
        try:
            proc = await spawn(stack)
            assert proc.stdin is not None
            proc.stdin.write(hello)
        except Exception:  # noqa: BLE001 - said by the session that meets it again
            await stack.aclose()
            return None
        return cls(stack, asyncio.get_running_loop().create_task(opened(proc)))

    async def take(self, stack: contextlib.AsyncExitStack) -> SessionPipes:
        """The session, now ``stack``'s to close, once it has opened (or its error)."""
        await stack.enter_async_context(self.stack)
        return await self.opening

    async def drop(self) -> None:
        """Its opening stopped and its process ended."""
        with contextlib.suppress(Exception):  # its failure was for a session to tell: none asked
            await stop(self.opening)
        await self.stack.aclose()
