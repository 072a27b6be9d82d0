"""The sessions a run reads its graph through: one on the local store and one on each builder
that answers, opened all at once while the roots are evaluated, since ssh handshakes are most
of a run's start-up. A builder that does not answer is left out, its error kept."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager

from offload.build.graph import Roots
from offload.errors import OffloadError
from offload.protocol.serve import ServeClient
from offload.scheduler.run import MemberLink
from offload.tasks import cancel_and_wait
from offload.transport.links import MachineLink

__all__ = ["open_sessions", "warming"]

logger = logging.getLogger(__name__)


async def open_sessions(
    stack: contextlib.AsyncExitStack,
    local_link: MemberLink,
    remote: Mapping[str, MemberLink],
    unreachable: dict[str, str],
    roots: Roots,
    *,
    answered: Callable[[str], None] | None = None,
) -> tuple[ServeClient, dict[str, ServeClient], list[tuple[str, str]]]:
    """A local session, one on each builder that answers, and the evaluated roots, all at
    once: ssh handshakes are most of a run's start-up, and evaluation can run meanwhile.

    What opened is closed by ``stack``; an evaluation error wins over a local store error.
    """
    evaluated = asyncio.to_thread(_as_list, roots) if callable(roots) else _ready(list(roots))
    local, clients, result = await asyncio.gather(
        stack.enter_async_context(local_link.session()),
        stack.enter_async_context(_borrow_all(remote, unreachable, answered)),
        evaluated,
        return_exceptions=True,
    )
    for outcome in (result, local, clients):
        if isinstance(outcome, BaseException):
            raise outcome
    assert isinstance(local, ServeClient)
    assert isinstance(clients, dict)
    assert isinstance(result, list)
    return local, clients, result


async def _ready(roots: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return roots


def _as_list(evaluate: Callable[[], Sequence[tuple[str, str]]]) -> list[tuple[str, str]]:
    return list(evaluate())


@contextlib.asynccontextmanager
async def _borrow_all(
    links: Mapping[str, MemberLink],
    unreachable: dict[str, str],
    answered: Callable[[str], None] | None = None,
) -> AsyncIterator[dict[str, ServeClient]]:
    """A session on each builder that answers, opened in parallel; the others are left out
    and their errors put in ``unreachable``. ``answered(name)`` is told of each as it opens."""
    managers = {name: link.session() for name, link in links.items()}

    async def enter(name: str, cm: AbstractAsyncContextManager[ServeClient]) -> ServeClient:
        client = await cm.__aenter__()
        if answered is not None:
            answered(name)
        return client

    entered = await asyncio.gather(
        *(enter(name, cm) for name, cm in managers.items()), return_exceptions=True
    )
    clients: dict[str, ServeClient] = {}
    opened: list[AbstractAsyncContextManager[ServeClient]] = []
    for (name, cm), result in zip(managers.items(), entered, strict=True):
        if isinstance(result, ServeClient):
            clients[name] = result
            opened.append(cm)
        elif isinstance(result, OffloadError):
            unreachable[name] = result.message
        elif isinstance(result, BaseException):
            raise result
    try:
        yield clients
    finally:
        for cm in opened:
            await cm.__aexit__(None, None, None)


@contextlib.asynccontextmanager
async def warming(
    remote: Mapping[str, MemberLink], slots: Mapping[str, int]
) -> AsyncIterator[Callable[[str], None]]:
    """A callback to tell of each builder that answers: sessions for its other ``slots`` open
    while the graph is read, so its first builds do not each wait for a remote nix-store to
    start. Those still opening when the block ends are stopped."""
    tasks: list[asyncio.Task[None]] = []

    def warm(name: str) -> None:
        link = remote[name]
        if isinstance(link, MachineLink):
            tasks.append(asyncio.create_task(link.warm(slots[name])))

    try:
        yield warm
    finally:
        # warm() keeps a builder's failures for its first borrower; anything else is a bug, told
        # here rather than raised over whatever ends the block.
        for error in await cancel_and_wait(tasks):
            logger.error("warming sessions failed: %r", error, exc_info=error)
