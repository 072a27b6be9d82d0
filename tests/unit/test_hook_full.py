"""The coordinator's full builders: since when, and the probe that waits for a slot there."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from offload.config.machines import Machine, parse_machines
from offload.hook.full import FullBuilders
from offload.hook.links import Unreachable

SYSTEM = "x86_64-linux"


def machine(name: str) -> Machine:
    [one], _ = parse_machines(f"ssh://{name} {SYSTEM} - 2 1\n", source="m", system=SYSTEM)
    return one


class Slots:
    """The builder side, as a probe sees it: a slot is ours once the test frees one."""

    def __init__(self) -> None:
        self.free: dict[str, asyncio.Event] = {}
        self.waits: list[str] = []
        self.unreachable = False

    async def wait_for_slot(self, machine: Machine, env: Mapping[str, str]) -> None:
        del env
        self.waits.append(machine.name)
        await self.free.setdefault(machine.name, asyncio.Event()).wait()
        if self.unreachable:
            raise Unreachable("Connection refused")


def full_builders(slots: Slots, notified: list[int]) -> FullBuilders:
    return FullBuilders(slots, lambda: notified.append(1))  # type: ignore[arg-type]


def test_a_full_builder_is_full_from_the_first_find_until_the_probe_has_a_slot() -> None:
    async def go() -> None:
        slots, notified = Slots(), list[int]()
        full = full_builders(slots, notified)
        a = machine("a")
        full.wait(a, {}, 100.0)
        full.wait(a, {}, 107.0)  # a second derivation: still full since the first find
        assert full.since() == {"a": 100.0}
        await asyncio.sleep(0)
        assert slots.waits == ["a"]  # one probe per builder
        slots.free["a"].set()
        while full.since():
            await asyncio.sleep(0)
        assert notified == [1]  # the dispatch looks again at once
        full.left("a")
        full.left("a")
        await full.aclose()

    asyncio.run(go())


def test_the_last_derivation_to_leave_ends_the_probe() -> None:
    async def go() -> None:
        slots, notified = Slots(), list[int]()
        full = full_builders(slots, notified)
        full.wait(machine("a"), {}, 1.0)
        full.wait(machine("a"), {}, 2.0)
        await asyncio.sleep(0)
        full.left("a")
        assert full.since() == {"a": 1.0}  # one still waits for it
        full.left("a")
        assert full.since() == {}  # moved elsewhere: no probe holds a slot or a marker there
        await asyncio.sleep(0)
        assert notified == []
        full.wait(machine("a"), {}, 9.0)  # found full again later: a new episode
        assert full.since() == {"a": 9.0}
        await asyncio.sleep(0)
        assert slots.waits == ["a", "a"]
        await full.aclose()

    asyncio.run(go())


def test_a_probe_that_cannot_reach_its_builder_ends_and_the_builder_is_tried_again() -> None:
    async def go() -> None:
        slots, notified = Slots(), list[int]()
        slots.unreachable = True
        full = full_builders(slots, notified)
        full.wait(machine("a"), {}, 1.0)
        await asyncio.sleep(0)
        slots.free["a"].set()
        while full.since():
            await asyncio.sleep(0)
        assert notified == [1]  # the next placement there meets the failure and backs it off
        full.left("a")
        await full.aclose()

    asyncio.run(go())
