"""The hook's answer to one `try`, over builders given as data (no Nix, no ssh)."""

from __future__ import annotations

from offload.hook.decide import REMOTE_OVERHEAD, Builder, LocalOffer, choose, place_queued
from offload.hook.wire import Reply, TryRequest
from offload.scheduler.policy import MachineSlotSpec

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


def test_features_no_builder_has_are_declined() -> None:
    choice = choose(request("cuda"), [builder("b", 4)], LocalOffer(1, False), work=10, now=0)
    assert choice.reply is Reply.DECLINE
    fits = choose(request("kvm"), [builder("b", 4)], LocalOffer(1, False), work=10, now=0)
    assert fits.reply is Reply.ACCEPT


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


def test_an_overdue_slot_is_still_busy_when_waiters_are_placed() -> None:
    held = builder("b", 1, free=0, busy_ends=(5.0,))
    [after] = place_queued([held], [], now=100)
    assert (after.free, after.busy_ends) == (0, (100,))
