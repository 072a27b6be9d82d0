"""Claims on the paths a copy is sending a store (offload.scheduler.run.in_flight): a copy
waits for another's claim on a path it would send, then sends only what did not arrive. The
whole effect on a real builder: tests/integration/test_shared_inputs.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, cast

from offload.protocol.records import PathInfo
from offload.protocol.serve import StoreClient
from offload.scheduler.run.in_flight import InFlight


def _info(path: str) -> PathInfo:
    return PathInfo(path, None, (), 1, "sha256:0")


class _Store:
    """A builder's store as a claim asks it: which paths are valid there now."""

    def __init__(self) -> None:
        self.valid: set[str] = set()

    async def query_valid_paths(self, paths: Iterable[str], **_: Any) -> set[str]:
        return set(paths) & self.valid


def _claims(arrives: bool) -> list[list[str]]:
    """What each of two copies sends: the first claims p and q, the second wants q and r."""
    flight, store = InFlight(), _Store()
    to = cast("StoreClient", store)
    sent: list[list[str]] = []
    first_in = asyncio.Event()

    async def first() -> None:
        async with flight.claimed("b", to, [_info("p"), _info("q")]) as mine:
            sent.append([i.path for i in mine])
            first_in.set()
            # One turn of the loop (no timing): the second copy, woken first, runs until it
            # waits for this claim.
            await asyncio.sleep(0)
            if arrives:
                store.valid |= {"p", "q"}

    async def second() -> None:
        await first_in.wait()
        async with flight.claimed("b", to, [_info("q"), _info("r")]) as mine:
            sent.append([i.path for i in mine])

    async def both() -> None:
        await asyncio.gather(first(), second())

    asyncio.run(both())
    return sent


def test_a_path_another_copy_is_sending_is_waited_for_and_not_sent_again():
    assert _claims(arrives=True) == [["p", "q"], ["r"]]


def test_a_path_whose_copy_was_cut_off_is_sent_by_the_copy_that_waited():
    assert _claims(arrives=False) == [["p", "q"], ["q", "r"]]


def test_claims_on_other_stores_or_other_paths_wait_for_nothing():
    flight, to = InFlight(), cast("StoreClient", _Store())

    async def claims() -> list[list[str]]:
        async with (
            flight.claimed("b", to, [_info("p")]) as one,
            flight.claimed("c", to, [_info("p")]) as other_store,
            flight.claimed("b", to, [_info("q")]) as other_path,
        ):
            return [[i.path for i in c] for c in (one, other_store, other_path)]

    assert asyncio.run(asyncio.wait_for(claims(), 10)) == [["p"], ["p"], ["q"]]
