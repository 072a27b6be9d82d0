"""The hook's answer to one `try`, over builders given as data (no Nix, no ssh)."""

from __future__ import annotations

import pytest

from offload.hook.decide import (
    QUEUE_FLOOR,
    QUEUE_PER_SLOT,
    REMOTE_OVERHEAD,
    Builder,
    LocalOffer,
    choose,
    may_queue,
    place_queued,
)
from offload.hook.wire import Reply, TryRequest
from offload.scheduler.policy import MachineSlotSpec
from offload.scheduler.policy.full import worth_moving_from
from offload.scheduler.policy.guesses import TRIVIAL_WORK, guessed_work

SYSTEM = "x86_64-linux"


def request(*features: str, willing: bool = True) -> TryRequest:
    return TryRequest(willing, SYSTEM, "/nix/store/" + "a" * 32 + "-x.drv", frozenset(features))


def builder(name: str, speed: float, free: int = 1, **kw: object) -> Builder:
    spec = MachineSlotSpec(
        name, speed, slots=2, systems=frozenset({SYSTEM}), supported=frozenset({"kvm"})
    )
    return Builder(spec, free, **kw)  # type: ignore[arg-type]


def test_no_builders_declines_permanently_as_build_remote() -> None:
    assert choose(request(), [], LocalOffer(1, True), work=10, now=0).reply is (
        Reply.DECLINE_PERMANENTLY
    )


def test_local_as_fast_as_builders_builds_locally() -> None:
    choice = choose(request(), [builder("b", 1)], LocalOffer(1, True), work=10, now=0)
    assert choice.reply is Reply.DECLINE


def test_faster_builder_is_accepted_over_local() -> None:
    choice = choose(
        request(), [builder("slow", 1), builder("fast", 4)], LocalOffer(1, True), work=10, now=0
    )
    assert (choice.reply, choice.machine) == (Reply.ACCEPT, "fast")
    assert choice.expected_end == REMOTE_OVERHEAD + 10 / 4


def test_local_unwilling_takes_the_fastest_free_builder() -> None:
    busy_fast = builder("fast", 4, free=0, busy_ends=(100.0,))
    choice = choose(
        request(), [builder("slow", 1), busy_fast], LocalOffer(1, False), work=10, now=0
    )
    assert (choice.reply, choice.machine) == (Reply.ACCEPT, "slow")


def test_fast_slot_freeing_soon_is_waited_for() -> None:
    busy_fast = builder("fast", 10, free=0, busy_ends=(1.0,))
    choice = choose(
        request(), [builder("slow", 1), busy_fast], LocalOffer(1, False), work=100, now=0
    )
    assert choice.reply is Reply.POSTPONE


def test_everything_busy_and_local_unwilling_postpones() -> None:
    choice = choose(request(), [builder("b", 1, free=0)], LocalOffer(1, False), work=10, now=0)
    assert choice.reply is Reply.POSTPONE


def test_backed_off_builder_is_skipped() -> None:
    down = builder("fast", 4, down_until=50.0)
    choice = choose(request(), [down, builder("slow", 2)], LocalOffer(1, False), work=10, now=0)
    assert choice.machine == "slow"
    again = choose(request(), [down], LocalOffer(1, True), work=10, now=0)
    assert again.reply is Reply.DECLINE
    later = choose(request(), [down], LocalOffer(1, False), work=10, now=60)
    assert later.machine == "fast"


def test_every_fitting_builder_backed_off_is_said_and_what_is_left_decides() -> None:
    # Backed off until 80 and 50: named soonest back first, whatever else is decided.
    down = [builder("fast", 4, down_until=80.0), builder("other", 4, down_until=50.0)]
    here = choose(request(), down, LocalOffer(1, True), work=10, now=0)
    assert (here.reply, here.stuck, here.backed_off) == (Reply.DECLINE, False, ("other", "fast"))
    assert here.expected_end == 10  # the local machine builds it: its slot counts as taken
    # No local slot free now, but one will be before a builder is back: Nix builds it then
    # (declined: it waits for the slot and asks again; postponed, it asked only at its next
    # poll, 5 s, a tester).
    later = choose(request(), down, LocalOffer(1, False, start=20, later=True), work=10, now=0)
    assert (later.reply, later.stuck) == (Reply.DECLINE, False)
    # A slot expected to free after a builder is back (a long local build): Nix would not ask
    # again when the backoff ends, only when a local build does: postponed (a review).
    busy = LocalOffer(1, False, start=1200, later=True)
    back = choose(request(), down, busy, work=10, now=0)
    assert (back.reply, back.stuck) == (Reply.POSTPONE, False)
    # When that slot frees is not known (the builds Nix runs here are not all ones the hook
    # declined): declined, unless a builder is back before it would be built here (a review).
    unknown = LocalOffer(1, False, later=True)
    assert choose(request(), down, unknown, work=10, now=0).reply is Reply.DECLINE
    soon = [builder("fast", 4, down_until=8.0)]
    assert choose(request(), soon, unknown, work=10, now=0).reply is Reply.POSTPONE
    # The local machine never builds it (-j 0, or another system): only they could.
    never = choose(request(), down, LocalOffer(1, False), work=10, now=0)
    assert (never.reply, never.stuck, never.backed_off) == (Reply.DECLINE, True, ("other", "fast"))
    elsewhere = choose(request(), [*down, builder("slow", 1)], LocalOffer(1, False), work=10, now=0)
    assert (elsewhere.machine, elsewhere.stuck) == ("slow", False)
    assert elsewhere.backed_off == ("other", "fast")
    # One that could not build it anyway is not named.
    arm = MachineSlotSpec("arm", 4, slots=2, systems=frozenset({"aarch64-linux"}))
    others = [Builder(arm, 1, down_until=80.0), builder("slow", 1)]
    assert choose(request(), others, LocalOffer(1, False), work=10, now=0).backed_off == ()


def test_features_no_builder_has_are_declined() -> None:
    choice = choose(request("cuda"), [builder("b", 4)], LocalOffer(1, False), work=10, now=0)
    assert choice.reply is Reply.DECLINE
    fits = choose(request("kvm"), [builder("b", 4)], LocalOffer(1, False), work=10, now=0)
    assert fits.reply is Reply.ACCEPT


# -- preferLocalBuild derivations, placed as ``offload build`` places them ---------------------


def test_prefer_local_build_stays_on_the_local_machine_whatever_the_builders() -> None:
    # A 1 s build (TRIVIAL_WORK) finishes sooner on a free speed-4 builder (0.55 s) than here
    # (1 s): any other derivation goes there; a preferLocalBuild one is built here.
    fast = builder("fast", 4)
    plain = choose(request(), [fast], LocalOffer(1, True), work=TRIVIAL_WORK, now=0)
    assert (plain.reply, plain.machine) == (Reply.ACCEPT, "fast")
    here = choose(
        request(), [fast], LocalOffer(1, True), work=TRIVIAL_WORK, now=0, prefer_local=True
    )
    assert (here.reply, here.expected_end) == (Reply.DECLINE, TRIVIAL_WORK)
    assert "preferLocalBuild" in here.reason
    # Behind the derivations declined to this Nix before it (the local queue), as any other.
    queued = LocalOffer(2, True, start=3.0)
    after = choose(request(), [fast], queued, work=TRIVIAL_WORK, now=0, prefer_local=True)
    assert after.expected_end == 3.0 + TRIVIAL_WORK / 2
    # Nix 2.34 asks with no local slot free: Nix builds it here once one frees, no builder.
    later = LocalOffer(1, False, later=True)
    wait = choose(request(), [fast], later, work=TRIVIAL_WORK, now=0, prefer_local=True)
    assert (wait.reply, wait.expected_end) == (Reply.DECLINE, None)


def test_prefer_local_build_the_local_machine_cannot_build_goes_to_a_builder() -> None:
    # -j 0 (or another system): placed among the builders as any other, by its trivial guess:
    # the free slow builder ends it (1.3 s) before the busy fast one (2.5 + 0.55 s); guessed
    # as a build without history (10 s), it waited for the fast one (5.3 s against 10.3 s).
    busy_fast = builder("fast", 4, free=0, busy_ends=(2.5,))
    builders = [builder("slow", 1), busy_fast]
    unable = LocalOffer(1, False)
    guess = guessed_work((), trivial=True)
    choice = choose(request(), builders, unable, work=guess, now=0, queue=True, prefer_local=True)
    assert (choice.reply, choice.machine, choice.waits) == (Reply.ACCEPT, "slow", False)
    long = choose(request(), builders, unable, work=guessed_work(()), now=0, queue=True)
    assert (long.machine, long.waits) == ("fast", True)


def test_in_the_coordinator_a_busy_fast_builder_is_accepted_to_wait_for() -> None:
    busy_fast = builder("fast", 10, free=0, busy_ends=(1.0,))
    choice = choose(
        request(),
        [builder("slow", 1), busy_fast],
        LocalOffer(1, False),
        work=100,
        now=0,
        queue=True,
    )
    assert (choice.reply, choice.machine, choice.waits) == (Reply.ACCEPT, "fast", True)
    assert choice.expected_end == 1.0 + REMOTE_OVERHEAD + 100 / 10


def test_in_the_coordinator_a_free_builder_still_wins_when_it_finishes_first() -> None:
    busy_fast = builder("fast", 2, free=0, busy_ends=(50.0,))
    choice = choose(
        request(), [builder("slow", 1), busy_fast], LocalOffer(1, False), work=10, now=0, queue=True
    )
    assert (choice.reply, choice.machine, choice.waits) == (Reply.ACCEPT, "slow", False)


def test_waiting_derivations_take_the_slots_they_will_get() -> None:
    fast = builder("fast", 4, free=1)
    slow = builder("slow", 1, free=1)
    [fast_after, slow_after] = place_queued([fast, slow], [40.0, 4.0], now=0)
    # The longest goes first, to the fast slot (ends at 10.3); the short one then finishes
    # sooner on the idle slow slot (4.3) than after it on the fast one (11.6).
    assert (fast_after.free, fast_after.busy_ends) == (0, (REMOTE_OVERHEAD + 10,))
    assert (slow_after.free, slow_after.busy_ends) == (0, (REMOTE_OVERHEAD + 4,))


def test_waiting_derivations_are_placed_in_the_order_the_coordinator_asks_them() -> None:
    # A short one with more work after it (history.tails) is asked before a long one: it
    # takes the fast slot (ends at 1.3), and the long one still finishes sooner behind it
    # (11.6) than on the slow slot (40.3), which stays free.
    fast = builder("fast", 4, free=1)
    slow = builder("slow", 1, free=1)
    [fast_after, slow_after] = place_queued([fast, slow], [4.0, 40.0], now=0)
    assert fast_after.free == 0
    assert fast_after.busy_ends == pytest.approx((2 * REMOTE_OVERHEAD + 11,))
    assert (slow_after.free, slow_after.busy_ends) == (1, ())


def test_a_waiter_behind_queued_ones_takes_a_free_slower_slot() -> None:
    """What the dispatch's pick decides: alone, a short derivation waits for the fast builder's
    next slot; behind two longer ones waiting for the same builder (they are asked first and
    take its slots), the idle slow builder finishes it sooner."""
    fast = builder("fast", 4, free=0, busy_ends=(1.0, 1.0))
    slow = builder("slow", 1, free=1)
    unable = LocalOffer(1, False)
    alone = choose(request(), [fast, slow], unable, work=2, now=0, queue=True)
    assert (alone.machine, alone.waits) == ("fast", True)
    behind = place_queued([fast, slow], [8.0, 8.0], now=0)
    choice = choose(request(), behind, unable, work=2, now=0, queue=True)
    assert (choice.reply, choice.machine, choice.waits) == (Reply.ACCEPT, "slow", False)


def test_an_overdue_slot_is_still_busy_when_waiters_are_placed() -> None:
    held = builder("b", 1, free=0, busy_ends=(5.0,))
    [after] = place_queued([held], [], now=100)
    assert (after.free, after.busy_ends) == (0, (100,))


# -- builders full of other clients' builds (``full_since``, the rent-or-buy rule) -----------


def in_coordinator(builders: list[Builder], now: float, work: float = 10) -> tuple[str, bool]:
    """Where the coordinator's dispatch puts an accepted derivation (Nix cannot take it back:
    the local machine is no option), and whether it still waits."""
    choice = choose(request(), builders, LocalOffer(1, False), work=work, now=now, queue=True)
    assert choice.reply is Reply.ACCEPT
    return str(choice.machine), choice.waits


def test_a_derivation_on_a_full_builder_moves_at_once_to_a_free_one_no_slower() -> None:
    full = builder("fast", 2, free=0, full_since=100.0)
    assert in_coordinator([full, builder("twin", 2)], now=100.0) == ("twin", False)


def test_a_slower_free_builder_takes_it_once_the_full_one_was_full_as_long_as_moving_costs():
    # 10 s of work: 5 s on "fast", 10 s on "slow". Moving costs 5 s more, so it moves once
    # "fast" has been full for 5 s (then taken to stay full 5 s more).
    full = builder("fast", 2, free=0, full_since=100.0)
    slow = builder("slow", 1)
    assert in_coordinator([full, slow], now=100.0) == ("fast", True)
    assert in_coordinator([full, slow], now=104.9) == ("fast", True)
    assert in_coordinator([full, slow], now=105.0) == ("slow", False)


def test_the_move_is_the_policys_own_rule() -> None:
    # ``offload build``'s policy moves the same job at the same moment (policy.full).
    fast, slow = 2.0, 1.0
    due = worth_moving_from(100.0, REMOTE_OVERHEAD + 10 / fast, REMOTE_OVERHEAD + 10 / slow)
    full = builder("fast", fast, free=0, full_since=100.0)
    assert in_coordinator([full, builder("slow", slow)], now=due - 0.01)[0] == "fast"
    assert in_coordinator([full, builder("slow", slow)], now=due) == ("slow", False)


def test_a_slot_of_ours_on_the_full_builder_ending_sooner_keeps_the_derivation_there() -> None:
    # Full for 20 s: taken to stay so 20 s more, but one of this host's builds there is
    # expected to end in 1 s, and its slot is ours to take next.
    ours = builder("fast", 2, free=0, busy_ends=(121.0,), full_since=100.0)
    assert in_coordinator([ours, builder("slow", 1)], now=120.0) == ("fast", True)
    # Once that end has passed, only the rent-or-buy wait is left: it moves.
    assert in_coordinator([ours, builder("slow", 1)], now=121.5) == ("slow", False)


def test_a_full_builder_is_no_target_while_every_other_is_busy_longer() -> None:
    full = builder("fast", 2, free=0, full_since=100.0)
    busy = builder("slow", 1, free=0, busy_ends=(200.0,))
    assert in_coordinator([full, busy], now=130.0) == ("fast", True)


def test_queued_derivations_keep_a_full_builder_full() -> None:
    full = builder("fast", 2, free=0, busy_ends=(5.0,), full_since=1.0)
    [after] = place_queued([full], [4.0], now=2.0)
    assert after.full_since == 1.0
    assert after.busy_ends == (5.0 + REMOTE_OVERHEAD + 2.0,)


def test_the_coordinators_queue_is_bounded_by_the_builders_slots() -> None:
    # Every ready derivation was accepted to wait: Nix keeps a hook for each it accepted, and
    # 60 of them on a builder of 2 slots ran it out of file descriptors. Past the bound, the
    # busy builder is not waited for: postpone, and Nix asks again once a child ends.
    builders = [builder("b", 4.0, free=0, busy_ends=(10.0, 10.0))]  # 2 slots
    bound = max(QUEUE_FLOOR, QUEUE_PER_SLOT * 2)
    assert may_queue(bound - 1, builders)
    assert not may_queue(bound, builders)
    assert may_queue(QUEUE_FLOOR - 1, [])  # no builder: the floor
    unable = LocalOffer(speed=1.0, can_build=False)
    waiting = choose(request(), builders, unable, work=10.0, now=0, queue=True)
    assert (waiting.reply, waiting.waits) == (Reply.ACCEPT, True)
    beyond = choose(request(), builders, unable, work=10.0, now=0, queue=False)
    assert beyond.reply is Reply.POSTPONE
