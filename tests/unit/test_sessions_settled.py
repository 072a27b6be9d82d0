"""``open_sessions`` where the requested outputs are all valid here: a builder still connecting
is not waited for (a no-op run with a builder away waited out the whole grace and said it was
slow), and the question, asked on the local session, is never cut mid-way by the last builder
answering meanwhile (the graph is read on that session next)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import cast

import pytest

from offload.build.sessions import Opened, Settled, open_sessions
from offload.protocol.serve import StoreClient
from offload.scheduler.run import MemberLink
from offload.transport.fake import FakeLink, FakeStore

ROOTS = [("/nix/store/00000000000000000000000000000000-a.drv", "out")]


class _Link:
    """A builder whose session opens once ``answer`` is set."""

    def __init__(self, answer: asyncio.Event) -> None:
        self.answer = answer

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[StoreClient]:
        await self.answer.wait()
        yield cast("StoreClient", object())


async def _opened(
    answer: asyncio.Event,
    settled: Settled,
    late: dict[str, asyncio.Task[None]],
    grace: float = 3600.0,
) -> Opened:
    async with contextlib.AsyncExitStack() as stack:
        opened = await asyncio.wait_for(
            open_sessions(
                stack,
                FakeLink(FakeStore("local")),
                cast("dict[str, MemberLink]", {"away": _Link(answer)}),
                {},
                ROOTS,
                late=late,
                grace=grace,
                settled=settled,
            ),
            timeout=60,  # a guard: without the answer it waits the whole grace (an hour)
        )
        for task in late.values():
            task.cancel()
        await asyncio.gather(*late.values(), return_exceptions=True)
        return opened


def test_nothing_to_build_waits_for_no_builder() -> None:
    asked: list[Sequence[tuple[str, str]]] = []

    async def settled(_local: StoreClient, roots: Sequence[tuple[str, str]]) -> bool:
        asked.append(roots)
        return True

    late: dict[str, asyncio.Task[None]] = {}
    opened = asyncio.run(_opened(asyncio.Event(), settled, late))
    assert opened.settled
    assert asked == [ROOTS]
    assert list(late) == ["away"]
    assert opened.clients == {}


def test_something_to_build_waits_out_the_grace() -> None:
    asked: list[Sequence[tuple[str, str]]] = []

    async def settled(_local: StoreClient, roots: Sequence[tuple[str, str]]) -> bool:
        asked.append(roots)
        return False

    late: dict[str, asyncio.Task[None]] = {}
    opened = asyncio.run(_opened(asyncio.Event(), settled, late, grace=0.0))
    assert asked == [ROOTS]
    assert not opened.settled
    assert list(late) == ["away"]


def test_a_bug_in_the_question_is_raised_not_taken_for_the_grace_s_end() -> None:
    async def settled(_local: StoreClient, _roots: Sequence[tuple[str, str]]) -> bool:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        asyncio.run(_opened(asyncio.Event(), settled, {}))


def test_the_question_is_not_cut_when_the_last_builder_answers_meanwhile() -> None:
    finished: list[bool] = []

    async def go() -> Opened:
        answer = asyncio.Event()

        async def settled(_local: StoreClient, _roots: Sequence[tuple[str, str]]) -> bool:
            answer.set()  # the builder answers while the local store is being asked
            for _ in range(20):  # the store's reply takes a few turns of the loop
                await asyncio.sleep(0)
            finished.append(True)
            return True

        return await _opened(answer, settled, {})

    opened = asyncio.run(go())
    assert finished == [True]
    assert list(opened.clients) == ["away"]
