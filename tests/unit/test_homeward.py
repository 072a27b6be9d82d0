"""HomeBatches: a machine's outputs come home one fetch at a time, those asked for meanwhile
together in the next; errors, cancellation and bytes per build."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from offload.errors import TransportError
from offload.protocol.serve import PathInfo
from offload.scheduler.run.homeward import HomeBatches

GUARD = 10.0  # seconds; only a guard against hangs


def _info(path: str, size: int) -> PathInfo:
    return PathInfo(path=path, deriver=None, references=(), nar_size=size, nar_hash="sha256:x")


class _Store:
    """A fetch that waits until the test lets it end; it records what each call asked for."""

    def __init__(self, sizes: dict[str, int], closure: Sequence[PathInfo] = ()) -> None:
        self.sizes = sizes
        self.closure = list(closure)  # copied with every batch: dependencies the store lacked
        self.calls: list[tuple[str, list[str]]] = []
        self.gates: list[asyncio.Future[BaseException | None]] = []
        self.started = asyncio.Event()

    async def fetch(self, machine: str, paths: Sequence[str]) -> Sequence[PathInfo]:
        self.calls.append((machine, list(paths)))
        gate = asyncio.get_running_loop().create_future()
        self.gates.append(gate)
        self.started.set()
        error = await gate
        if error is not None:
            raise error
        return [*self.closure, *(_info(p, self.sizes[p]) for p in paths if p in self.sizes)]

    async def next_call(self, count: int) -> None:
        while len(self.calls) < count:
            self.started.clear()
            await self.started.wait()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, GUARD))


def test_outputs_asked_for_during_a_fetch_come_together_in_the_next():
    async def go():
        store = _Store({"o1": 10, "o2": 20, "o3": 30, "o3-dev": 3})
        home = HomeBatches(store.fetch)
        first = asyncio.create_task(home.fetch("b", "d1", ["o1"]))
        await store.next_call(1)
        later = [
            asyncio.create_task(home.fetch("b", "d2", ["o2"])),
            asyncio.create_task(home.fetch("b", "d3", ["o3", "o3-dev"])),
        ]
        await asyncio.sleep(0)  # they queue behind the running fetch
        store.gates[0].set_result(None)
        await store.next_call(2)
        store.gates[1].set_result(None)
        assert await first == 10
        assert [await t for t in later] == [20, 33]
        assert store.calls == [("b", ["o1"]), ("b", ["o2", "o3", "o3-dev"])]

    run(go())


def test_each_build_of_a_failed_batch_meets_its_error():
    async def go():
        store = _Store({})
        home = HomeBatches(store.fetch)
        first = asyncio.create_task(home.fetch("b", "d1", ["o1"]))
        await store.next_call(1)
        later = [asyncio.create_task(home.fetch("b", d, [d + "-out"])) for d in ("d2", "d3")]
        await asyncio.sleep(0)
        store.gates[0].set_result(None)
        await store.next_call(2)
        store.gates[1].set_result(TransportError("b: connection lost"))
        assert await first == 0
        for task in later:
            with pytest.raises(TransportError, match="connection lost"):
                await task
        assert len(store.calls) == 2

    run(go())


def test_a_cancelled_fetch_hands_the_outputs_it_carried_to_the_next():
    async def go():
        store = _Store({"o2": 2, "o3": 3})
        home = HomeBatches(store.fetch)
        blocker = asyncio.create_task(home.fetch("b", "d0", ["o0"]))
        await store.next_call(1)
        carrier = asyncio.create_task(home.fetch("b", "d1", ["o1"]))
        others = [asyncio.create_task(home.fetch("b", d, [o])) for d, o in (("d2", "o2"),)]
        await asyncio.sleep(0)
        store.gates[0].set_result(None)
        await store.next_call(2)  # the carrier's batch: o1 and o2
        assert store.calls[1] == ("b", ["o1", "o2"])
        carrier.cancel()
        with pytest.raises(asyncio.CancelledError):
            await carrier
        await store.next_call(3)  # o2 again, without the cancelled build's output
        assert store.calls[2] == ("b", ["o2"])
        store.gates[2].set_result(None)
        assert [await t for t in others] == [2]
        await blocker

    run(go())


def test_machines_fetch_at_once():
    async def go():
        store = _Store({"a": 1, "b": 2})
        home = HomeBatches(store.fetch)
        tasks = [
            asyncio.create_task(home.fetch("m1", "d1", ["a"])),
            asyncio.create_task(home.fetch("m2", "d2", ["b"])),
        ]
        await store.next_call(2)
        assert {machine for machine, _ in store.calls} == {"m1", "m2"}
        for gate in store.gates:
            gate.set_result(None)
        assert [await t for t in tasks] == [1, 2]

    run(go())


def test_the_rest_of_a_batch_closure_is_told_for_its_first_build():
    async def go():
        store = _Store({"o0": 1, "o1": 10, "o2": 20}, closure=[_info("dep", 5)])
        home = HomeBatches(store.fetch)
        first = asyncio.create_task(home.fetch("b", "d0", ["o0"]))
        await store.next_call(1)
        later = [
            asyncio.create_task(home.fetch("b", d, [o])) for d, o in (("d1", "o1"), ("d2", "o2"))
        ]
        await asyncio.sleep(0)
        store.gates[0].set_result(None)
        await store.next_call(2)
        store.gates[1].set_result(None)
        assert await first == 1 + 5
        assert [await t for t in later] == [10 + 5, 20]

    run(go())
