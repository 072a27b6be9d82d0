"""The coordinator's dispatch: accepted derivations waiting for a builder slot."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence

import pytest

from offload.hook.dispatch import Dispatch, Placement
from offload.hook_queue import Queued


def _slot_fd() -> int:
    return os.open(os.devnull, os.O_RDONLY)


@pytest.mark.parametrize(
    ("priorities", "first"),
    [((None, None), "long"), ((60.0, 50.0), "short")],
    ids=["by work", "by priority"],
)
def test_the_highest_priority_waiting_derivation_takes_a_freed_slot_first(
    priorities: tuple[float | None, float | None], first: str
) -> None:
    # By work when no priority is given; else by priority (a short build with the longest
    # path after it: the critical one, history.tails).
    async def go() -> list[str]:
        dispatch = Dispatch(tick=60)  # only notify() wakes it: no timing in this test
        free = {"slots": 0}
        order: list[str] = []

        def pick(name: str) -> Placement | None:
            if free["slots"] == 0:
                return None
            free["slots"] -= 1
            order.append(name)
            return Placement("b", _slot_fd(), 0.0)

        async def wait(name: str, work: float, priority: float | None) -> None:
            placement = await dispatch.take(work, lambda _ahead: pick(name), priority=priority)
            os.close(placement.fd)

        tasks = {
            "short": asyncio.create_task(wait("short", 1.0, priorities[0])),
            "long": asyncio.create_task(wait("long", 50.0, priorities[1])),
        }
        while len(dispatch.queued()) < 2:
            await asyncio.sleep(0)
        # In the order they are asked: the pick of each counts the ones before it there.
        assert dispatch.queued() == ([50.0, 1.0] if first == "long" else [1.0, 50.0])
        # A newcomer of priority 55 comes after a waiter of 60, before one of 50.
        assert dispatch.queued(above=55.0) == ([] if priorities[0] is None else [1.0])
        free["slots"] = 1
        dispatch.notify()
        await tasks[first]
        second = "short" if first == "long" else "long"
        assert not tasks[second].done()
        free["slots"] = 1
        dispatch.notify()
        await tasks[second]
        await dispatch.aclose()
        return order

    assert asyncio.run(go()) == [first, "short" if first == "long" else "long"]


def test_a_failing_pick_fails_only_its_own_waiter() -> None:
    async def go() -> str:
        dispatch = Dispatch(tick=60)

        def broken(_ahead: tuple[float, ...]) -> Placement | None:
            raise RuntimeError("no builder left")

        try:
            await dispatch.take(1.0, broken)
        except RuntimeError as exc:
            return str(exc)
        finally:
            await dispatch.aclose()
        return "placed"

    assert asyncio.run(go()) == "no builder left"


def test_a_cancelled_waiter_leaves_the_queue() -> None:
    async def go() -> list[float]:
        dispatch = Dispatch(tick=60)
        waiter = asyncio.create_task(dispatch.take(3.0, lambda _ahead: None))
        while not dispatch.queued():
            await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.wait([waiter])
        await dispatch.aclose()
        return dispatch.queued()

    assert asyncio.run(go()) == []


def test_each_pick_counts_the_waiters_before_it_that_stay_queued() -> None:
    """A waiter that stays queued takes its slot before the shorter ones asked after it, so
    they are told of it."""

    async def go() -> dict[str, tuple[float, ...]]:
        dispatch = Dispatch(tick=60)
        seen: dict[str, tuple[float, ...]] = {}
        queued = {"long", "mid"}

        def pick(name: str, ahead: tuple[float, ...]) -> Placement | None:
            seen[name] = ahead
            return None if name in queued else Placement("b", _slot_fd(), 0.0)

        async def wait(name: str, work: float) -> None:
            placement = await dispatch.take(work, lambda ahead: pick(name, ahead))
            os.close(placement.fd)

        tasks = {
            name: asyncio.create_task(wait(name, work))
            for name, work in (("short", 1.0), ("mid", 5.0), ("long", 50.0))
        }
        while "short" not in seen or len(dispatch.queued()) < 2:
            await asyncio.sleep(0)
        await tasks["short"]
        for name in ("long", "mid"):
            tasks[name].cancel()
        await asyncio.wait(list(tasks.values()))
        await dispatch.aclose()
        return seen

    seen = asyncio.run(go())
    assert seen["long"] == ()
    assert seen["mid"] == (50.0,)
    assert seen["short"] == (50.0, 5.0)


def test_a_derivation_that_waits_again_keeps_its_first_come_turn() -> None:
    """Of two waiters of one priority, the one that came first and waits again (its builder
    turned out full) is still asked first, before the one that came after it."""

    async def go() -> list[str]:
        dispatch = Dispatch(tick=60)
        asked: list[str] = []

        def pick(name: str) -> Placement | None:
            asked.append(name)
            return None

        first = dispatch.ticket()  # it came first, was placed, and found its builder full
        later = asyncio.create_task(dispatch.take(5.0, lambda _ahead: pick("later")))
        while not dispatch.queued():
            await asyncio.sleep(0)
        again = asyncio.create_task(dispatch.take(5.0, lambda _ahead: pick("first"), ticket=first))
        while len(dispatch.queued()) < 2:
            await asyncio.sleep(0)
        asked.clear()
        dispatch.notify()
        while len(asked) < 2:
            await asyncio.sleep(0)
        for task in (later, again):
            task.cancel()
        await asyncio.wait([later, again])
        await dispatch.aclose()
        return asked

    assert asyncio.run(go()) == ["first", "later"]


def _recording(told: list[list[str]]) -> Callable[[Sequence[Queued]], bool]:
    """An ``on_queue`` that keeps the names told in ``told``."""

    def record(waiting: Sequence[Queued]) -> bool:
        told.append([q.drv for q in waiting])
        return True

    return record


def test_what_waits_is_told_as_it_changes_for_offload_status() -> None:
    told: list[list[str]] = []

    async def go() -> None:
        on_queue = _recording(told)
        dispatch = Dispatch(tick=60, on_queue=on_queue, tell_every=0)  # each change, at once
        free = {"slots": 0}

        def pick() -> Placement | None:
            if free["slots"] == 0:
                return None
            free["slots"] -= 1
            return Placement("b", _slot_fd(), 0.0)

        waits = [
            asyncio.create_task(dispatch.take(work, lambda _ahead: pick(), name=name))
            for name, work in (("small", 1.0), ("big", 9.0))
        ]
        for _ in range(3):
            await asyncio.sleep(0)  # the dispatch looks: neither is placed
        free["slots"] = 1
        dispatch.notify()
        [placed], [waiting] = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        os.close(placed.result().fd)
        free["slots"] = 1
        dispatch.notify()
        os.close((await waiting).fd)
        await dispatch.aclose()

    asyncio.run(go())
    assert told == [["big", "small"], ["small"], []]  # in the order they are asked


def test_changes_within_the_tell_interval_are_told_once() -> None:
    told: list[list[str]] = []

    async def go() -> None:
        on_queue = _recording(told)
        dispatch = Dispatch(tick=60, on_queue=on_queue, tell_every=3600)
        waits = [
            asyncio.create_task(dispatch.take(1.0, lambda _ahead: None, name=name))
            for name in ("a", "b", "c")
        ]
        for _ in range(3):
            await asyncio.sleep(0)
        assert told == []  # not yet: once the interval is up, what waits then
        for wait in waits:
            wait.cancel()
        await asyncio.wait(waits)
        await dispatch.aclose()

    asyncio.run(go())
    assert told == []  # nothing was told, so nothing is taken back


def test_a_queue_that_could_not_be_kept_is_told_again() -> None:
    # A write that failed (a full disk for a moment) left the file saying what waited then,
    # for as long as the coordinator ran with nothing new waiting.
    told: list[list[str]] = []

    def on_queue(waiting: Sequence[Queued]) -> bool:
        told.append([q.drv for q in waiting])
        return len(told) > 1  # the first write fails

    async def go() -> None:
        dispatch = Dispatch(tick=60, on_queue=on_queue, tell_every=0.01)
        wait = asyncio.create_task(dispatch.take(1.0, lambda _ahead: None, name="a"))
        while len(told) < 2:
            await asyncio.sleep(0.01)
        wait.cancel()
        await asyncio.wait([wait])
        await dispatch.aclose()

    asyncio.run(go())
    assert told[:2] == [["a"], ["a"]]  # again, as it still waits
