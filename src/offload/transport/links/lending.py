"""What a ``Link`` (``pool``) keeps of each session it opened, and the small helpers its
lending and teardown share: a session's stderr route, the busy answer of a slot wrapper, and
waits that a second cancellation does not cut short."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field

from offload.protocol.store import StoreClient
from offload.transport.links.base import TAIL, LogSink, SessionPipes

__all__ = [
    "BuilderFullError",
    "LogRoute",
    "PooledSession",
    "check_slot",
    "close_shielded",
    "wait_teardown",
]


class BuilderFullError(Exception):
    """Every builder-side slot is held by another session (another client's, most often)."""


@dataclass(eq=False)
class LogRoute:
    """A session's stderr: kept as a short tail for errors, passed to the current borrower."""

    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL))
    sink: LogSink | None = None

    def log(self, line: str) -> None:
        self.tail.append(line)
        if self.sink is not None:
            self.sink(line)


@dataclass(eq=False)
class PooledSession:
    client: StoreClient
    stack: contextlib.AsyncExitStack
    pipes: SessionPipes
    logs: LogRoute
    teardown: asyncio.Task[None] | None = None
    opened: float = field(default_factory=time.monotonic)  # when its turn began (``TURN``)


def check_slot(name: str, pipes: SessionPipes) -> None:
    if pipes.slot == "busy":  # the wrapper exited: every slot there is held
        raise BuilderFullError(name)


async def wait_teardown(task: asyncio.Task[None]) -> None:
    """Wait for a teardown; a second cancellation of the waiter does not stop the teardown."""
    await asyncio.shield(task)


async def close_shielded(stack: contextlib.AsyncExitStack) -> None:
    """Close ``stack`` to the end even if the caller is cancelled meanwhile."""
    task = asyncio.get_running_loop().create_task(stack.aclose())
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise
