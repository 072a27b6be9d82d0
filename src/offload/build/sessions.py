"""The sessions a run reads its graph through: one on the local store and one on each builder
that answers, opened all at once while the roots are evaluated, since ssh handshakes are most
of a run's start-up. A builder that fails to answer is left out, its error kept.

A builder that is merely slow (a host that accepts the TCP connection and then says nothing
costs ssh's whole connect timeout) must not hold the run up: with ``grace``, the builders that
have not answered once the graph could be read go on connecting in the background (``late``,
one task each, ending when the builder's session is open and back in its pool, or with the
link's error), and the run starts without them. Nor are they waited for where the requested
outputs are all valid here (``settled``): nothing is to be built, as nix-build would find
without asking a builder, and a builder that is away costs a no-op run nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager
from typing import Any, NamedTuple, cast

from offload.build.graph import Roots
from offload.errors import NotStarted, OffloadError
from offload.protocol.serve import StoreClient
from offload.scheduler.run import MemberLink
from offload.tasks import cancel_and_wait
from offload.transport.links import MachineLink
from offload.transport.sshopts_check import SSHOPTS_FIX, sshopts_refused

__all__ = ["Opened", "Settled", "open_sessions", "warming"]

logger = logging.getLogger(__name__)

# Whether the evaluated roots' outputs are all valid in the local store, asked on its session.
Settled = Callable[[StoreClient, Sequence[tuple[str, str]]], Awaitable[bool]]


class Opened(NamedTuple):
    local: StoreClient
    clients: dict[str, StoreClient]  # the builders that answered
    roots: list[tuple[str, str]]  # evaluated
    settled: bool  # the roots' outputs were all valid here: the late builders were not awaited


async def open_sessions(
    stack: contextlib.AsyncExitStack,
    local_link: MemberLink,
    remote: Mapping[str, MemberLink],
    unreachable: dict[str, str],
    roots: Roots,
    *,
    answered: Callable[[str], None] | None = None,
    late: dict[str, asyncio.Task[None]] | None = None,
    grace: float | None = None,
    settled: Settled | None = None,
    faults_here: set[str] | None = None,
) -> Opened:
    """A local session, one on each builder that answers, and the evaluated roots, all at
    once: ssh handshakes are most of a run's start-up, and evaluation can run meanwhile.

    Builders that have not answered ``grace`` seconds after the local session and the roots
    are ready are put in ``late`` (see the module docstring), at once where ``settled`` says
    the roots need nothing; without ``grace`` every builder is waited for. What opened is
    closed by ``stack``; an evaluation error wins over a local store error. The caller owns
    the ``late`` tasks. ``faults_here`` is told the builders left out for a fault of this
    host's (a program it could not start: no ssh, no file descriptors), which says nothing of
    the builder.
    """
    evaluated = asyncio.to_thread(_as_list, roots) if callable(roots) else _ready(list(roots))
    here = [
        asyncio.ensure_future(stack.enter_async_context(local_link.session())),
        asyncio.ensure_future(evaluated),
    ]
    found_settled: list[bool] = []
    deadline = None if grace is None else _after(here, grace, settled, found_settled)
    borrowed = _borrow_all(remote, unreachable, answered, deadline, late, faults_here=faults_here)
    try:
        local, clients, result = await asyncio.gather(
            here[0], stack.enter_async_context(borrowed), here[1], return_exceptions=True
        )
    finally:
        if deadline is not None:
            # Never started when the run was cancelled (Ctrl-C) before the builders' sessions
            # began to open: else Python says it was "never awaited" after "interrupted".
            deadline.close()
    for outcome in (result, local, clients):
        if isinstance(outcome, BaseException):
            raise outcome
    assert not isinstance(local, BaseException)
    assert isinstance(clients, dict)
    assert isinstance(result, list)
    return Opened(cast("StoreClient", local), clients, result, bool(found_settled))


async def _ready(roots: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return roots


async def _after(
    ready: Sequence[asyncio.Future[Any]],
    grace: float,
    settled: Settled | None,
    found: list[bool],
) -> None:
    """Returns ``grace`` seconds after every one of ``ready`` (the local session, the roots)
    is done (however it ended), or at once where ``settled`` finds the roots' outputs all
    valid (said in ``found``)."""
    await asyncio.wait(ready)
    if settled is not None and all(_opened(future) for future in ready):
        asking = asyncio.ensure_future(settled(ready[0].result(), ready[1].result()))
        try:
            # Never cut mid-way (the last builder answering cancels this): the local session
            # refuses every request after one cut short, and the graph is read on it next.
            if await asyncio.shield(asking):
                found.append(True)
                return
        except asyncio.CancelledError:
            await asyncio.wait([asking])
            if not asking.cancelled():
                asking.exception()  # retrieved: the graph's reading meets it again
            raise
        except OffloadError:
            pass  # the graph's reading says it
    await asyncio.sleep(grace)


def _as_list(evaluate: Callable[[], Sequence[tuple[str, str]]]) -> list[tuple[str, str]]:
    return list(evaluate())


@contextlib.asynccontextmanager
async def _borrow_all(
    links: Mapping[str, MemberLink],
    unreachable: dict[str, str],
    answered: Callable[[str], None] | None = None,
    deadline: Coroutine[Any, Any, None] | None = None,
    late: dict[str, asyncio.Task[None]] | None = None,
    *,
    faults_here: set[str] | None = None,
) -> AsyncIterator[dict[str, StoreClient]]:
    """A session on each builder that answers, opened in parallel; the others are left out
    and their errors put in ``unreachable``. ``answered(name)`` is told of each as it opens.
    Those still opening when ``deadline`` returns go on in ``late`` (``_joining``)."""
    managers = {name: link.session() for name, link in links.items()}
    waiting = {name: asyncio.ensure_future(cm.__aenter__()) for name, cm in managers.items()}
    told = {name: functools.partial(_told, answered, name) for name in waiting}
    for name, task in waiting.items():
        task.add_done_callback(told[name])
    try:
        await _until(list(waiting.values()), deadline)
    except BaseException:
        await cancel_and_wait(list(waiting.values()))
        # Those that had opened are closed here, not by the garbage collector (a traceback
        # of a generator that "didn't stop" after a Ctrl-C as sessions were opening).
        await _close(managers[name] for name, task in waiting.items() if _opened(task))
        raise
    clients: dict[str, StoreClient] = {}
    opened: list[AbstractAsyncContextManager[StoreClient]] = []
    for name, cm in managers.items():
        task = waiting[name]
        if not task.done():
            assert late is not None  # a deadline comes with a place for the late ones
            task.remove_done_callback(told[name])  # the run, not the warming, takes it on
            late[name] = asyncio.create_task(_joining(task, cm), name=f"joining {name}")
            continue
        result = task.exception() or task.result()
        if not isinstance(result, BaseException):
            clients[name] = result
            opened.append(cm)
        elif isinstance(result, OffloadError):
            unreachable[name] = result.message
            if faults_here is not None and isinstance(result, NotStarted):
                faults_here.add(name)
                unreachable[name] += f"; {result.hint}" if result.hint else ""
        else:
            await _close(managers[other] for other, done in waiting.items() if _opened(done))
            raise result
    try:
        if faults_here is not None:
            await _sshopts_at_fault(unreachable, faults_here, managers.keys())
        yield clients
    finally:
        await _close(opened)


async def _sshopts_at_fault(
    unreachable: dict[str, str], faults_here: set[str], asked: Iterable[str]
) -> None:
    """Builders of ``asked`` that failed to connect, said failed for NIX_SSHOPTS where ssh
    refuses it whatever the host (``transport.sshopts_check``): this host's fault, kept
    against none of them (they were backed off for later runs, their lines to check)."""
    failed = [name for name in asked if name in unreachable and name not in faults_here]
    if failed and (whole := await sshopts_refused(os.environ)) is not None:
        for name in failed:
            unreachable[name] = f"{whole}; {SSHOPTS_FIX}"
            faults_here.add(name)


def _opened(task: asyncio.Future[Any]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is None


async def _close(managers: Iterable[AbstractAsyncContextManager[StoreClient]]) -> None:
    for cm in managers:
        await cm.__aexit__(None, None, None)


def _told(answered: Callable[[str], None] | None, name: str, task: asyncio.Future[Any]) -> None:
    if answered is not None and not task.cancelled() and task.exception() is None:
        answered(name)


async def _until(
    tasks: list[asyncio.Future[StoreClient]], deadline: Coroutine[Any, Any, None] | None
) -> None:
    """Wait for every task, or until ``deadline`` returns if that is sooner."""
    if not tasks:  # no builders: nothing to wait for (the deadline is never started)
        if deadline is not None:
            deadline.close()
        return
    if deadline is None:
        await asyncio.wait(tasks)
        return
    timer = asyncio.ensure_future(deadline)
    pending: set[asyncio.Future[Any]] = set(tasks)
    try:
        while pending and not timer.done():
            _, pending = await asyncio.wait({*pending, timer}, return_when=asyncio.FIRST_COMPLETED)
            pending.discard(timer)
    finally:
        failed = await cancel_and_wait([timer])
    if failed:  # a bug in the deadline (its ``settled`` question): said, not taken for its end
        raise failed[0]


async def _joining(
    opening: asyncio.Future[StoreClient], cm: AbstractAsyncContextManager[StoreClient]
) -> None:
    """A late builder's session: once open it goes back to its link's pool, ready for the
    first build there; the link's error, if it does not open, is the task's."""
    try:
        await opening
    except BaseException:
        opening.cancel()
        raise
    await cm.__aexit__(None, None, None)


@contextlib.asynccontextmanager
async def warming(
    remote: Mapping[str, MemberLink], slots: Mapping[str, int]
) -> AsyncIterator[Callable[[str], None]]:
    """A callback to tell of each builder that answers: build sessions for its ``slots``, each
    holding a builder-side slot, open while the graph is read (``Link.warm_builds``), so its
    first builds do not each wait for a remote nix-store to start. Those still opening when
    the block ends are stopped."""
    tasks: list[asyncio.Task[None]] = []

    def warm(name: str) -> None:
        link = remote[name]
        if isinstance(link, MachineLink):
            tasks.append(asyncio.create_task(link.warm_builds(slots[name])))

    try:
        yield warm
    finally:
        # warm() keeps a builder's failures for its first borrower; anything else is a bug, told
        # here rather than raised over whatever ends the block.
        for error in await cancel_and_wait(tasks):
            logger.error("warming sessions failed: %r", error, exc_info=error)
