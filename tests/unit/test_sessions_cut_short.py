"""``open_sessions`` stopped (Ctrl-C cancels the run) before its builders' sessions began to
open: nothing it made is left unawaited (Python said "RuntimeWarning: coroutine '_after' was
never awaited" on stderr after "error: interrupted")."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from typing import cast

import pytest

from offload.build.sessions import open_sessions
from offload.protocol.serve import StoreClient
from offload.scheduler.run import MemberLink
from offload.transport.fake import FakeLink, FakeStore


def test_a_run_cancelled_as_its_sessions_start_leaves_no_coroutine_unawaited() -> None:
    async def go() -> None:
        local, remote = FakeLink(FakeStore("local")), FakeLink(FakeStore("fast"))
        async with contextlib.AsyncExitStack() as stack:
            opening = asyncio.ensure_future(
                open_sessions(stack, local, {"fast": remote}, {}, [], grace=1.5, late={})
            )
            await asyncio.sleep(0)  # it waits for its sessions, none of which has begun
            opening.cancel()
            with pytest.raises(asyncio.CancelledError):
                await opening

    asyncio.run(go())
    gc.collect()  # a coroutine never awaited is said as it is collected


class _Link:
    """A builder whose session opens at once (``hang`` False) or never; says which are open."""

    def __init__(self, hang: bool, open_now: set[str], name: str) -> None:
        self.hang, self.open_now, self.name = hang, open_now, name

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[StoreClient]:
        if self.hang:
            await asyncio.Event().wait()
        self.open_now.add(self.name)
        try:
            yield cast("StoreClient", object())
        finally:
            self.open_now.discard(self.name)


def test_sessions_open_when_the_run_is_cancelled_are_closed_by_it() -> None:
    # Ctrl-C while one builder had answered and another was still connecting: the answered
    # one's session was left to the garbage collector, which printed a traceback ("generator
    # didn't stop after athrow()") after "error: interrupted".
    open_now: set[str] = set()

    async def go() -> None:
        answered = asyncio.Event()
        links = {"fast": _Link(False, open_now, "fast"), "slow": _Link(True, open_now, "slow")}
        async with contextlib.AsyncExitStack() as stack:
            opening = asyncio.ensure_future(
                open_sessions(
                    stack,
                    FakeLink(FakeStore("local")),
                    cast("dict[str, MemberLink]", links),
                    {},
                    [],
                    answered=lambda _name: answered.set(),
                )
            )
            await answered.wait()
            assert open_now == {"fast"}
            opening.cancel()
            with pytest.raises(asyncio.CancelledError):
                await opening
            assert open_now == set()  # closed by the run, before its stack unwinds

    asyncio.run(go())
