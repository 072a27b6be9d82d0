"""Builders full of other clients' builds: withheld slots, moving a waiting job (rent-or-buy)."""

from __future__ import annotations

from offload.scheduler.dag import Job
from offload.scheduler.policy import (
    BandwidthTransferCost,
    Decision,
    MachineSlotSpec,
    Move,
    Policy,
    Start,
    Wait,
)

X86 = frozenset({"x86_64-linux"})


def machine(name: str, speed: float = 1.0, slots: int = 1) -> MachineSlotSpec:
    return MachineSlotSpec(name, speed, slots, X86, frozenset(), frozenset())


def job(name: str, work: float, *deps: str) -> Job:
    return Job(name, work, tuple(deps), "x86_64-linux", frozenset())


def started(decisions: list[Decision]) -> list[Start]:
    return [d for d in decisions if isinstance(d, Start)]


def moves(decisions: list[Decision]) -> list[Move]:
    return [d for d in decisions if isinstance(d, Move)]


def test_a_waiting_job_moves_at_once_to_a_free_machine_no_slower() -> None:
    policy = Policy([job("a", 10)], [machine("fast", 2.0), machine("twin", 2.0)])
    assert started(policy.next_decisions(0.0)) == [Start("a", "fast", 5.0)]
    assert policy.on_machine_full("a", "fast", 1.0) is False
    assert policy.withheld("fast") == 0  # its one slot is the waiting copy's
    assert policy.waiting("fast") == ["a"]
    decisions = policy.next_decisions(1.0)
    assert decisions == [Move("a", "twin", 6.0, "fast")]
    assert policy.copies("a") == ["twin"]
    # The slot it left on the full builder was never this client's: withheld, not free.
    assert policy.withheld("fast") == 1
    assert policy.waiting("fast") == []
    assert policy.on_finished("a", "twin", 6.0, ok=True).accepted
    assert policy.graph.finished


def test_a_slower_machine_takes_the_job_only_once_waiting_cost_as_much() -> None:
    # Here 10 s on "fast", 20 s on "slow": moving costs 10 s more, so it moves after 10 s.
    policy = Policy([job("a", 10)], [machine("fast", 1.0), machine("slow", 0.5)])
    assert started(policy.next_decisions(0.0)) == [Start("a", "fast", 10.0)]
    policy.on_machine_full("a", "fast", 2.0)
    assert policy.next_decisions(2.0) == [Wait(12.0)]
    assert policy.next_decisions(11.9) == [Wait(12.0)]
    assert policy.next_decisions(12.0) == [Move("a", "slow", 32.0, "fast")]


def test_a_waiting_job_that_gets_its_slot_stays_and_is_expected_from_then() -> None:
    policy = Policy(
        [job("a", 10), job("b", 10)], [machine("fast", 1.0, slots=2), machine("slow", 0.5)]
    )
    assert {s.job: s.machine for s in started(policy.next_decisions(0.0))} == {
        "a": "fast",
        "b": "fast",
    }
    policy.on_machine_full("b", "fast", 1.0)
    policy.on_slot_taken("b", "fast", 4.0)
    assert policy.waiting("fast") == []
    # Nothing moves any more, and the slow machine gets nothing to wait for.
    assert policy.next_decisions(30.0) == []
    assert policy.copies("b") == ["fast"]


def test_a_full_machine_gets_no_new_work_until_a_slot_is_given_back() -> None:
    jobs = [job("a", 10), job("b", 10), job("c", 10)]
    policy = Policy(jobs, [machine("fast", 4.0, slots=3), machine("slow", 1.0, slots=3)])
    first = started(policy.next_decisions(0.0))
    assert [s.machine for s in first] == ["fast"] * 3
    policy.on_machine_full("c", "fast", 0.5)
    policy.on_finished("a", "fast", 3.0, ok=True)
    policy.on_finished("b", "fast", 3.0, ok=True)
    # Its own two slots freed: usable, as this client holds them on the builder.
    assert policy.withheld("fast") == 0
    # c has waited 2.5 s of the 7.5 s moving would cost: it stays, and is woken then.
    assert policy.next_decisions(3.0) == [Wait(8.0)]
    policy.on_slot_taken("c", "fast", 3.0)
    assert policy.next_decisions(3.5) == []


def test_withheld_slots_come_back_one_per_slot_given_out() -> None:
    jobs = [job("a", 10), job("b", 10), job("c", 10), job("d", 1, "a")]
    policy = Policy(jobs, [machine("fast", 2.0, slots=3), machine("slow", 1.0, slots=1)])
    assert len(started(policy.next_decisions(0.0))) == 3
    policy.on_finished("b", "fast", 5.0, ok=True)
    policy.on_finished("c", "fast", 5.0, ok=True)
    policy.on_machine_full("a", "fast", 5.0)  # e.g. the copy of a lost its session and waits
    assert policy.withheld("fast") == 2
    assert policy.next_decisions(5.0) == [Wait(10.0)]
    assert policy.next_decisions(10.0) == [Move("a", "slow", 20.0, "fast")]
    assert policy.withheld("fast") == 3
    policy.on_slot_freed("fast")
    assert policy.withheld("fast") == 2
    policy.on_finished("a", "slow", 20.0, ok=True)
    # d goes to the slot given back, not to the slower free machine.
    assert started(policy.next_decisions(20.0)) == [Start("d", "fast", 20.5)]


def test_a_second_copy_waiting_on_a_full_machine_is_dropped_not_moved() -> None:
    policy = Policy([job("a", 10)], [machine("slow", 1.0), machine("fast", 4.0)])
    policy.on_machine_full("x", "fast", 0.0)  # unknown job: ignored
    assert started(policy.next_decisions(0.0)) == [Start("a", "fast", 2.5)]
    assert policy.on_machine_failed("fast", 1.0).returned == ("a",)
    assert started(policy.next_decisions(1.0)) == [Start("a", "slow", 11.0)]
    down_until = policy.down_until("fast")
    speculated = policy.next_decisions(down_until)
    assert [(d.job, d.machine) for d in speculated if not isinstance(d, Wait)] == [("a", "fast")]
    assert policy.on_machine_full("a", "fast", down_until) is True
    assert policy.copies("a") == ["slow"]
    assert policy.withheld("fast") == 1
    assert policy.next_decisions(down_until + 1) == []


def test_a_full_machine_that_fails_gives_back_its_slots_to_its_backoff() -> None:
    policy = Policy([job("a", 10), job("b", 10)], [machine("fast", 2.0, 2), machine("slow")])
    policy.next_decisions(0.0)
    policy.on_machine_full("b", "fast", 0.5)
    down = policy.on_machine_failed("fast", 1.0)
    assert set(down.returned) == {"a", "b"}
    assert policy.waiting("fast") == []
    assert policy.withheld("fast") == 0
    starts = started(policy.next_decisions(down.until))
    assert sorted(s.machine for s in starts) == ["fast", "fast"]


def test_a_waiting_job_whose_twin_finishes_leaves_its_slot_withheld() -> None:
    policy = Policy([job("a", 10)], [machine("fast", 2.0), machine("slow", 1.9)])
    policy.next_decisions(0.0)
    policy.on_machine_full("a", "fast", 0.0)
    [move] = moves(policy.next_decisions(0.6))
    assert (move.source, move.machine) == ("fast", "slow")
    assert policy.on_finished("a", "slow", 6.0, ok=True).accepted
    assert policy.withheld("fast") == 1
    assert not policy.on_finished("a", "fast", 6.0, ok=True).accepted


def test_a_machine_whose_every_slot_is_withheld_is_skipped_then_used_when_one_is_back() -> None:
    big = frozenset({"big"})
    fast = MachineSlotSpec("fast", 2.0, 1, X86, big, frozenset())
    jobs = [job("a", 4), Job("b", 4, ("a",), "x86_64-linux", big)]
    for transfer in (None, BandwidthTransferCost({}, {})):
        policy = Policy(jobs, [fast, machine("twin", 2.0)], transfer=transfer)
        assert started(policy.next_decisions(0.0)) == [Start("a", "fast", 2.0)]
        policy.on_machine_full("a", "fast", 0.0)
        assert moves(policy.next_decisions(0.0)) == [Move("a", "twin", 2.0, "fast")]
        policy.on_finished("a", "twin", 2.0, ok=True)
        # b can only go to fast, whose one slot other clients hold: it waits, nothing breaks.
        assert policy.next_decisions(2.0) == []
        policy.on_slot_freed("fast")
        assert started(policy.next_decisions(3.0)) == [Start("b", "fast", 5.0)]
