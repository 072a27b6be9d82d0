"""bench/window_bound.py: a bound that holds, and is tighter where a spine holds work back."""

from __future__ import annotations

import random

import pytest
from bench.optimum import optimum
from bench.window_bound import window_bound

from offload.scheduler.dag import Job
from offload.scheduler.policy import MachineSlotSpec
from offload.scheduler.simulate import lower_bound

X86 = frozenset({"x86_64-linux"})
BIG = frozenset({"big-parallel"})
POOL = [MachineSlotSpec("fast", 2.0, 1, X86, BIG), MachineSlotSpec("slow", 1.0, 2, X86)]


def spine_with_a_fan(fan: int) -> list[Job]:
    # A spine of three 2 s jobs, then `fan` jobs of 3 s that all wait for its end.
    spine = [Job("s0", 2.0, ()), Job("s1", 2.0, ("s0",)), Job("s2", 2.0, ("s1",))]
    return spine + [Job(f"f{i}", 3.0, ("s2",)) for i in range(fan)]


def test_work_held_back_by_a_spine_is_counted_after_it(monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = spine_with_a_fan(8)
    # The spine takes 3 s at speed 2; the fan's 24 s of work then needs 6 s of the pool's 4
    # work-seconds per second: 9 s. Apart, the chain (4.5 s) and all work (30/4 = 7.5 s) say less.
    assert lower_bound(jobs, POOL) == pytest.approx(7.5)
    assert window_bound(jobs, POOL) == pytest.approx(9.0)
    monkeypatch.setattr("bench.optimum.window_bound", lambda *_args: 0.0)
    assert optimum(jobs, POOL, seconds=5).makespan >= window_bound(jobs, POOL) - 1e-9


def test_work_that_must_come_first_is_counted_before_a_chain():
    # Eight 3 s jobs that one 2 s job waits for, then its chain of two more.
    fan = [Job(f"f{i}", 3.0, ()) for i in range(8)]
    chain = [
        Job("c0", 2.0, tuple(f"f{i}" for i in range(8))),
        Job("c1", 2.0, ("c0",)),
        Job("c2", 2.0, ("c1",)),
    ]
    assert window_bound(fan + chain, POOL) == pytest.approx(24 / 4 + 3.0)


def test_a_layer_between_a_root_and_a_tail_is_counted_in_its_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # j0, then three jobs side by side (15 s of work), then j4 and j5 after them: the three start
    # no sooner than 1 s (j0 at speed 2) and must end 4 s before the end (j4 then j5 at speed
    # 2), so 1 + 15/4 + 4 = 8.75 s. Each job's own windows say 8.25 s, the plain bound 8 s.
    jobs = [
        Job("j0", 2.0, ()),
        Job("j1", 5.0, ("j0",)),
        Job("j2", 6.0, ("j0",)),
        Job("j3", 4.0, ("j0",)),
        Job("j4", 3.0, ("j0", "j1", "j2", "j3")),
        Job("j5", 5.0, ("j0", "j3", "j4")),
    ]
    assert lower_bound(jobs, POOL) == pytest.approx(8.0)
    assert window_bound(jobs, POOL) == pytest.approx(8.75)
    monkeypatch.setattr("bench.optimum.window_bound", lambda *_args: 0.0)
    assert optimum(jobs, POOL, seconds=5).makespan >= 8.75


def test_a_cost_per_build_counts_on_chains_and_as_work_held_in_a_slot():
    jobs = spine_with_a_fan(8)
    # Each spine job 1 + 0.5 s; each fan job holds a slot 0.5 s more, at least 0.5 work-seconds.
    assert window_bound(jobs, POOL, cost=0.5) == pytest.approx(4.5 + (24 + 8 * 0.5) / 4)


POOLS = {
    "plain": POOL,
    # A machine with no slot, and one only big-parallel builds may use (mandatory).
    "odd": [
        MachineSlotSpec("fast", 2.0, 1, X86, BIG, BIG),
        MachineSlotSpec("slow", 1.0, 2, X86),
        MachineSlotSpec("none", 8.0, 0, X86, BIG),
    ],
}


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("cost", [0.0, 0.5])
@pytest.mark.parametrize("seed", range(4))
def test_it_never_passes_the_optimum(
    seed: int, cost: float, pool: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The solver's own floor is the bound under test: without it, nothing that holds it up.
    monkeypatch.setattr("bench.optimum.window_bound", lambda *_args: 0.0)
    rng = random.Random(seed)  # noqa: S311 -- reproducible test input
    jobs: list[Job] = []
    for i in range(9):
        deps = tuple(j.id for j in jobs if rng.random() < 0.3)
        features = BIG if rng.random() < 0.2 else frozenset()
        work = float(rng.randint(0, 6))  # some of no work at all
        jobs.append(Job(f"j{i}", work, deps, "x86_64-linux", features))
    found = optimum(jobs, POOLS[pool], seconds=5, cost=cost)
    assert found.solved
    assert found.gap == pytest.approx(0.0, abs=1e-3)  # proven: the optimum itself
    assert window_bound(jobs, POOLS[pool], cost) <= found.makespan + 1e-9


def test_a_job_no_machine_builds_leaves_the_bound_to_the_plain_one():
    jobs = [Job("a", 1.0, ()), Job("kvm", 1.0, ("a",), "x86_64-linux", frozenset({"kvm"}))]
    assert window_bound(jobs, POOL) == 0.0
