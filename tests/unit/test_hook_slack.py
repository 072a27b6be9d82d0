"""Slack in the hook (``offload.hook.slack``): when a nix-build is expected to end, the room a
derivation's slack leaves it, and the machine ``choose`` then takes."""

from __future__ import annotations

import pytest

from offload.hook.decide import REMOTE_OVERHEAD, Builder, LocalOffer, choose
from offload.hook.slack import PathEnds, room
from offload.hook.wire import Reply, TryRequest
from offload.scheduler.policy import MachineSlotSpec

SYSTEM = "x86_64-linux"


def request() -> TryRequest:
    return TryRequest(True, SYSTEM, f"/nix/store/{'a' * 32}-side.drv", frozenset())


def builder(name: str, speed: float, free: int = 1, busy_ends: tuple[float, ...] = ()) -> Builder:
    spec = MachineSlotSpec(name, speed, slots=2, systems=frozenset({SYSTEM}))
    return Builder(spec, free, busy_ends)


def test_a_nix_build_ends_when_its_latest_path_does() -> None:
    ends = PathEnds()
    assert ends.latest("nix@1", now=0) is None
    ends.placed("nix@1", "a.drv", 30.0)
    ends.placed("nix@1", "b.drv", 20.0)  # a shorter path does not move the end
    ends.placed("nix@2", "c.drv", 50.0)  # another nix-build's are its own
    assert ends.latest("nix@1", now=10) == 30.0
    # a's build ended early, at 10, with 5 s of its path left: the rest is critical at once.
    ends.placed("nix@1", "a.drv", 15.0)
    assert ends.latest("nix@1", now=10) == 20.0
    assert ends.latest("nix@1", now=20) is None  # every end of it has passed
    assert ends.latest("nix@2", now=20) == 50.0
    assert ends.latest("nix@2", now=50) is None  # and nothing of either stays


def test_the_room_is_half_the_slack_and_the_work_on_the_fastest_machine() -> None:
    # 40 s left at speed 4: a path of 160 at speed 1; this one's is 10 + 30, so 120 to spare.
    assert room(40.0, 0.0, work=10.0, priority=40.0, fastest=4.0) == pytest.approx(
        0.5 * (120.0 + 10.0) / 4.0
    )
    assert room(40.0, 0.0, work=10.0, priority=160.0, fastest=4.0) is None  # the critical one
    assert room(None, 0.0, work=10.0, priority=40.0, fastest=4.0) is None  # nothing placed


def test_side_work_takes_the_slowest_free_machine_that_ends_it_in_its_room() -> None:
    builders = [builder("fast", 4), builder("medium", 2), builder("slow", 1)]
    local = LocalOffer(1, can_build=False)
    fastest = choose(request(), builders, local, work=8, now=0, queue=True)
    assert (fastest.reply, fastest.machine) == (Reply.ACCEPT, "fast")
    roomy = choose(request(), builders, local, work=8, now=0, queue=True, room=9.0)
    assert (roomy.reply, roomy.machine) == (Reply.ACCEPT, "slow")
    assert roomy.expected_end == pytest.approx(REMOTE_OVERHEAD + 8)
    tighter = choose(request(), builders, local, work=8, now=0, queue=True, room=5.0)
    assert (tighter.reply, tighter.machine) == (Reply.ACCEPT, "medium")
    tight = choose(request(), builders, local, work=8, now=0, queue=True, room=2.0)
    assert tight.machine == "fast"  # nothing slower ends it in time


def test_the_local_machine_in_its_room_builds_it() -> None:
    builders = [builder("fast", 4)]
    choice = choose(request(), builders, LocalOffer(1, True), work=8, now=0, queue=True, room=9.0)
    assert (choice.reply, choice.expected_end) == (Reply.DECLINE, 8.0)


def test_a_busy_builder_waited_for_is_not_moved_for_slack() -> None:
    # The rule picks among free machines instead of the earliest finish on a free one; a
    # derivation that waits for a busy builder's slot is left as it is.
    busy_fast = builder("fast", 4, free=0, busy_ends=(0.5,))
    choice = choose(
        request(), [busy_fast, builder("slow", 1)], LocalOffer(1, False),
        work=8, now=0, queue=True, room=100.0,
    )  # fmt: skip
    assert (choice.machine, choice.waits) == ("fast", True)
