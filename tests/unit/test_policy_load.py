"""A builder's load cuts its slots mid-run (``Policy.on_load``, ``Pool.cut``): running copies go
on, fewer start, what is cut while busy is paid by the next slots to free, and slots come back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from offload.scheduler.dag import Job
from offload.scheduler.policy import (
    BandwidthTransferCost,
    Decision,
    MachineSlotSpec,
    Policy,
    Start,
    Wait,
)
from offload.scheduler.policy.pool import Machine, Pool, Run
from tests.unit.test_policy_full import job, machine


def started(decisions: list[Decision]) -> list[str]:
    return [d.job for d in decisions if isinstance(d, Start)]


def jobs(count: int, work: float = 10.0) -> list[Job]:
    return [job(f"j{i}", work) for i in range(count)]


def test_a_cut_before_the_run_starts_fewer_builds_there():
    policy = Policy(jobs(6), [machine("busy", slots=4)])
    policy.on_load("busy", 2)
    assert len(started(policy.next_decisions(0.0))) == 2


def test_a_cut_below_the_running_copies_stops_none_and_their_ends_pay_for_it():
    policy = Policy(jobs(8), [machine("busy", slots=4)])
    first = started(policy.next_decisions(0.0))
    assert len(first) == 4
    policy.on_load("busy", 1)
    assert policy.next_decisions(1.0) == []  # nothing starts, nothing moves
    assert len(policy.running("busy")) == 4  # nothing is stopped either
    # Three of the four ends go to the cut; only the last one's slot is free again.
    for n, done in enumerate(first):
        assert policy.on_finished(done, "busy", 10.0 + n, ok=True).accepted
        now_started = started(policy.next_decisions(10.0 + n))
        assert len(now_started) == (1 if n == len(first) - 1 else 0)
        assert len(policy.running("busy")) == max(1, len(first) - 1 - n)


def test_slots_given_back_pay_what_is_still_owed_first():
    policy = Policy(jobs(8), [machine("busy", slots=4)])
    first = started(policy.next_decisions(0.0))
    policy.on_load("busy", 1)  # three owed
    policy.on_load("busy", 3)  # two of them given back: one still owed
    assert started(policy.next_decisions(1.0)) == []
    policy.on_finished(first[0], "busy", 2.0, ok=True)
    assert started(policy.next_decisions(2.0)) == []  # it paid the last one owed
    policy.on_finished(first[1], "busy", 3.0, ok=True)
    assert len(started(policy.next_decisions(3.0))) == 1  # three running again
    policy.on_load("busy", 4)  # the load went away: all four
    assert len(started(policy.next_decisions(4.0))) == 1
    assert len(policy.running("busy")) == 4


def test_a_cut_that_shrinks_gives_the_withheld_slots_it_took_back_as_withheld():
    # The builder said others hold all four; a load report then cut two, and the next one
    # none: the two came back as free, slots the builder never said were free (builds went
    # there and were answered busy).
    pool = Pool([machine("busy", slots=4)])
    m = pool.machines["busy"]
    pool.withhold(m)
    pool.cut(m, 2)
    assert (m.free, m.withheld) == (0, 2)
    pool.cut(m, 4)
    assert (m.free, m.withheld) == (0, 4)
    _check(pool, m)


def test_a_machine_failure_forgets_the_withheld_slots_a_cut_took_too():
    # Back from a failure, a builder is tried afresh: the slots a load cut took from withheld
    # came back withheld when the cut ended, each needing a probe.
    policy = Policy(jobs(8), [machine("busy", slots=4)])
    m = policy._pool.machines["busy"]
    policy._pool.withhold(m)
    policy.on_load("busy", 1)
    policy.on_machine_failed("busy", 1.0)
    policy.on_load("busy", 4)
    assert (m.free, m.withheld) == (4, 0)


def test_never_below_one_slot():
    policy = Policy(jobs(3), [machine("busy", slots=2)])
    policy.on_load("busy", 0)
    assert len(started(policy.next_decisions(0.0))) == 1


@pytest.mark.parametrize("transfer", [False, True])
def test_a_job_is_not_held_for_a_busy_slot_the_load_has_cut(transfer):
    # fast runs a (ends at 10) and b (ends at 30); c would end at 15 waiting for a's slot on
    # fast, at 21 on slow now. Once the load cuts fast to one slot, a's end frees nothing there:
    # its first slot is b's, at 30, and c goes to slow at once.
    def policy_with(cut: bool) -> Policy:
        work = [job("a", 40), job("b", 120), job("c", 20)]
        policy = Policy(
            work,
            [machine("fast", 4.0, slots=2), machine("slow", 1.0, slots=1)],
            transfer=BandwidthTransferCost({}, {}) if transfer else None,
            slack_share=0.0,
        )
        policy.on_load("slow", 1)  # no change: one slot, and the same decisions
        assert started(policy.next_decisions(0.0))[:2] == ["b", "a"]
        if cut:
            policy.on_load("fast", 1)
        return policy

    held = policy_with(cut=False).next_decisions(1.0)
    assert started(held) == []
    assert Wait(10.0) in held
    assert policy_with(cut=True).next_decisions(1.0) == [Start("c", "slow", 21.0)]


# -- the pool's count, whatever happens in whatever order -----------------------------------

OPS = st.lists(
    st.tuples(
        st.sampled_from(["take", "release", "cut", "withhold", "restore", "down", "up"]),
        st.integers(min_value=0, max_value=5),
    ),
    max_size=60,
)


def _check(pool: Pool, m: Machine) -> None:
    slots = m.spec.slots
    assert m.free + len(m.ends) + m.withheld + m.cut - m.owed == slots
    assert min(m.free, m.owed, m.withheld) >= 0
    assert 0 <= m.cut < slots
    assert m.owed + m.cut_withheld <= m.cut  # the cut's parts: still busy, taken from withheld
    assert not (m.owed and m.free)  # what is owed is paid before a slot is free
    assert pool.free_up_total == sum(x.free for x in pool.machines.values() if x.up)


@given(OPS)
def test_free_busy_withheld_and_cut_slots_always_add_up(ops):
    pool = Pool([machine("busy", slots=4)])
    m = pool.machines["busy"]
    runs: list[tuple[Run, str]] = []
    for n, (op, k) in enumerate(ops):
        match op:
            case "take" if m.free > 0:
                runs.append((pool.take_slot(m, f"j{n}", float(n), n + 10.0), f"j{n}"))
            case "release" if runs:
                run, job_id = runs.pop(k % len(runs))
                pool.release_slot(run, job_id)
            case "cut":
                pool.cut(m, k)
            case "withhold":
                if runs and k % 2:
                    runs[k % len(runs)][0].waiting_since = float(n)  # it waits on the builder
                pool.withhold(m)
            case "restore":
                pool.restore(m, k)
            case "down":
                pool.set_up(m, up=False)
            case "up":
                pool.set_up(m, up=True)
        _check(pool, m)


def test_a_load_on_a_machine_of_no_slots_cuts_none() -> None:
    # Its cut was -1: a slot that was never there counted free, and every round looked for
    # work to copy onto it.
    x = frozenset({"x"})
    policy = Policy(
        [Job("j", 1, (), "x")], [MachineSlotSpec("z", 4, 0, x), MachineSlotSpec("a", 1, 1, x)]
    )
    policy.on_load("z", 3)
    zero = policy._pool.machines["z"]
    assert (zero.cut, zero.free, policy._pool.free_up_total) == (0, 0, 1)  # a's one
