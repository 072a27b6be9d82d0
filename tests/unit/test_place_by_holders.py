"""Placement with missing-input costs: tiers' earliest starts and the holders, not every
machine, give the same machine as scoring every machine."""

from __future__ import annotations

import math
import random

import pytest

from offload.scheduler.dag import Job
from offload.scheduler.generated import random_machines
from offload.scheduler.policy import MachineSlotSpec
from offload.scheduler.policy.costs import MissingInputs
from offload.scheduler.policy.placement import (
    clear_reservations,
    place_by_holders,
    place_by_machine,
    reserve,
)
from offload.scheduler.policy.pool import Machine, Pool

X86 = frozenset({"x86_64-linux"})


def machine(name: str, speed: float, slots: int = 1) -> MachineSlotSpec:
    return MachineSlotSpec(name, speed, slots, X86, frozenset(), frozenset())


def job(name: str, work: float, *deps: str) -> Job:
    return Job(name, work, deps, "x86_64-linux")


def test_holders_beat_the_tiers_first_machine_and_ties_go_to_the_first() -> None:
    pool = Pool([machine("m1", 2), machine("m2", 2), machine("m3", 2), machine("m4", 1)])
    target = job("c", 8, "a", "b")
    cls = pool.class_for(target)
    # All free: m1 starts first but lacks both inputs (4 + 2 x 0.5); m3 holds both.
    moves = MissingInputs({"a": {"m3"}, "b": {"m3", "m4"}}, 0.5)
    assert place_by_holders(cls, target, 8, 0.0, moves, ready_at=0.0) == (
        pool.machines["m3"],
        0.0,
        4.0,
    )
    # m2 and m3 each lack one input: the first of them in the class's order.
    moves = MissingInputs({"a": {"m3"}, "b": {"m2"}}, 0.5)
    assert place_by_holders(cls, target, 8, 0.0, moves, ready_at=0.0) == (
        pool.machines["m2"],
        0.0,
        4.5,
    )


def test_a_faster_machine_lacking_the_inputs_wins_while_moving_them_is_cheap() -> None:
    pool = Pool([machine("m1", 2), machine("m2", 4)])
    target = job("c", 8, "a", "b")
    cls = pool.class_for(target)
    holders = {"a": {"m1"}, "b": {"m1"}}
    # m2: 8 / 4 + 2 x 0.5 = 3.0 before m1's 4.0; at 2 s an input, m1's 4.0 before 6.0.
    assert place_by_holders(cls, target, 8, 0.0, MissingInputs(holders, 0.5), ready_at=0.0) == (
        pool.machines["m2"],
        0.0,
        3.0,
    )
    assert place_by_holders(cls, target, 8, 0.0, MissingInputs(holders, 2.0), ready_at=0.0) == (
        pool.machines["m1"],
        0.0,
        4.0,
    )


def test_no_machine_when_the_only_holder_has_every_slot_held_by_others() -> None:
    pool = Pool([machine("m1", 2)])
    target = job("c", 8, "a")
    cls = pool.class_for(target)
    pool.withhold(pool.machines["m1"])
    placed = place_by_holders(cls, target, 8, 0.0, MissingInputs({"a": {"m1"}}, 0.5), ready_at=0.0)
    assert placed == (None, math.inf, math.inf)


def _random_state(rng: random.Random, pool: Pool, now: float) -> list[Machine]:
    """Busy slots (some overdue), a machine down, one whose builder holds every free slot
    for others, one loaded by others, and this round's holds and claims."""
    machines = list(pool.machines.values())
    if rng.random() < 0.4:
        pool.withhold(rng.choice(machines))
    for m in machines:
        for _ in range(rng.randint(0, m.spec.slots)):
            start = now - rng.uniform(0, 20)
            pool.take_slot(m, f"r{rng.random()}", start, start + rng.uniform(0.5, 25))
    if rng.random() < 0.3:
        pool.set_up(rng.choice(machines), up=False)
    if rng.random() < 0.3:
        pool.cut(rng.choice(machines), 1)
    reserved: list[Machine] = []
    for _ in range(rng.randint(0, 3)):
        m = rng.choice(machines)
        if m.free <= m.claimed and not (m.reserved or m.ends):
            continue  # no slot of its own to hold: placement never picks it
        start = now + rng.choice([0.0, rng.uniform(0, 10)])
        reserve(m, "held", start, start + rng.uniform(1, 10), now=now, reserved=reserved)
    return reserved


@pytest.mark.parametrize("seed", range(40))
def test_same_placement_as_scoring_every_machine(seed: int) -> None:
    rng = random.Random(seed)  # noqa: S311 -- reproducible test input
    specs = random_machines(rng.choice([3, 8, 20]), seed)
    names = [m.name for m in specs]
    deps = [f"d{i}" for i in range(rng.randint(0, 4))]
    holders = {d: set(rng.sample([*names, "local"], rng.randint(0, 3))) for d in deps}
    moves = MissingInputs(holders, rng.choice([0.05, 1.0, 5.0]))
    target = Job("t", 1.0, tuple(deps), "x86_64-linux")
    for step in range(6):
        pool = Pool(specs)
        cls = pool.class_for(target)
        now = 100.0 + step
        reserved = _random_state(rng, pool, now)
        for work, ready_at in ((0.5, now), (6.0, now), (40.0, now), (6.0, now + rng.uniform(0, 9))):
            want = place_by_machine(cls, target, work, now, moves, ready_at=ready_at)
            # Twice: the second reads the tiers' earliest starts the first one kept.
            assert place_by_holders(cls, target, work, now, moves, ready_at=ready_at) == want
            assert place_by_holders(cls, target, work, now, moves, ready_at=ready_at) == want
        clear_reservations(reserved)
