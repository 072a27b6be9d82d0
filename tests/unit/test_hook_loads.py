"""The hook's coordinator follows a builder's load: the cut it makes, the decisions over a cut
builder (as data, no Nix, no ssh), what it tells (a build's log line, ``loads.json``) and
``offload status`` reading it back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from offload.cli.status import format_status
from offload.config.machines import parse_machines
from offload.config.pool import Pool
from offload.config.settings import LocalMachine
from offload.hook.decide import REMOTE_OVERHEAD, Builder, LocalOffer, choose, cut, place_queued
from offload.hook.loads import HookLoads
from offload.hook.wire import Reply, TryRequest
from offload.load import LOAD1_SECONDS, RemoteLoad
from offload.load_state import LOADS_FILE, Loaded, load_loads
from offload.procfs import owner_line, pid_namespace
from offload.scheduler.policy import MachineSlotSpec
from offload.slots import SlotLocks
from offload.status import pool_status

SYSTEM = "x86_64-linux"
HERE = "1f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9"
ELSEWHERE = "0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9"
BUSY = RemoteLoad(2, 4.5, 9, ELSEWHERE)  # 2.5 cores beyond its 2: two of four slots go
IDLE = RemoteLoad(2, 0.2, 1, ELSEWHERE)
REQUEST = TryRequest(False, SYSTEM, "/nix/store/" + "a" * 32 + "-x.drv", frozenset())
AWAY = LocalOffer(1, can_build=False)


def builder(
    name: str, speed: float, slots: int, busy_ends: tuple[float | None, ...] = ()
) -> Builder:
    spec = MachineSlotSpec(name, speed, slots=slots, systems=frozenset({SYSTEM}))
    return Builder(spec, slots - len(busy_ends), busy_ends)


# -- the decision over a cut builder -------------------------------------------------------------


def test_a_cut_builder_has_only_its_usable_slots_free():
    one_held = builder("busy", 4, 4, (50.0,))
    assert one_held.free == 3
    cut_one = cut(one_held, 2, now=0)
    assert (cut_one.spec.slots, cut_one.free, cut_one.busy_ends) == (2, 1, (50.0,))
    assert cut(one_held, 4, now=0) is one_held  # no cut: the very same builder


def test_slots_held_beyond_the_cut_are_paid_by_the_earliest_to_end():
    # Three of ours there, cut to two: one must end before the next may start, so its next
    # start is the second end, not the first. Unknown ends count as a default build.
    three = builder("busy", 1, 4, (30.0, None, 5.0))
    cut_two = cut(three, 2, now=0, default_work=10)
    assert (cut_two.free, cut_two.busy_ends) == (0, (None, 30.0))
    # Cut to one with three held: two are owed, the latest is its one slot.
    assert cut(three, 1, now=0, default_work=10).busy_ends == (30.0,)


def test_the_coordinator_places_on_a_slower_free_builder_when_the_fast_one_is_cut():
    fast = builder("fast", 4, 4, (60.0, 60.0))
    slow = builder("slow", 2, 2)
    uncut = choose(REQUEST, [fast, slow], AWAY, work=10, now=0, queue=True)
    assert (uncut.reply, uncut.machine, uncut.waits) == (Reply.ACCEPT, "fast", False)
    loaded = choose(REQUEST, [cut(fast, 2, now=0), slow], AWAY, work=10, now=0, queue=True)
    assert (loaded.reply, loaded.machine, loaded.waits) == (Reply.ACCEPT, "slow", False)
    assert loaded.expected_end == REMOTE_OVERHEAD + 10 / 2


def test_queued_derivations_fill_only_the_usable_slots():
    # Four waiting, a builder of four slots cut to two with nothing held: two start now, the
    # other two after them (their slots end at overhead + work).
    placed = place_queued([cut(builder("busy", 1, 4), 2, now=0)], [10.0] * 4, now=0)
    (busy,) = placed
    assert busy.free == 0
    assert sorted(e for e in busy.busy_ends if e is not None) == pytest.approx(
        [2 * (REMOTE_OVERHEAD + 10)] * 2
    )


# -- following the load --------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def loads(tmp_path: Path, clock: Clock) -> HookLoads:
    return HookLoads(tmp_path, HERE, clock=clock, wall=lambda: 1000.0 + clock.now)


def test_a_report_cuts_the_builder_says_so_once_and_writes_it_for_status(tmp_path):
    clock = Clock()
    followed = loads(tmp_path, clock)
    followed.reported("busy", 4, BUSY)
    assert followed.slots() == {"busy": 2}
    said = "load 4.5 on 2 cores: 2 of 4 slots"
    assert (
        followed.untold("busy")
        == f"offload: builder 'busy' is loaded: {said} for this host's builds"
    )
    assert followed.untold("busy") is None  # told in one build's log, not every one's
    assert load_loads([tmp_path / LOADS_FILE]) == {
        "busy": Loaded(2, 4, said, 1000.0, owner_line(os.getpid()))
    }
    followed.reported("busy", 4, BUSY)  # the same again: nothing new to say or write
    assert followed.untold("busy") is None
    clock.now = 5.0
    followed.reported("busy", 4, IDLE)
    assert followed.slots() == {}
    assert "all 4 slots again" in str(followed.untold("busy"))
    assert load_loads([tmp_path / LOADS_FILE]) == {}


def test_its_own_builds_there_are_left_out_of_the_load(tmp_path):
    clock = Clock()
    followed = loads(tmp_path, clock)
    # Two of its builds took their slots before the first report there: counted from then.
    followed.started("busy")
    followed.started("busy")
    clock.now = LOAD1_SECONDS
    followed.reported("busy", 4, BUSY)  # 1.3 of the 4.5 is ours: one core beyond, one slot
    assert followed.slots() == {"busy": 3}
    assert "(1.3 of it this run's builds)" in str(followed.untold("busy"))
    followed.ended("busy")
    followed.ended("busy")
    clock.now = 10 * LOAD1_SECONDS  # ours long gone: the load is others', two slots go
    followed.reported("busy", 4, BUSY)
    assert followed.slots() == {"busy": 2}


def test_a_builder_on_this_kernel_is_never_cut(tmp_path):
    followed = loads(tmp_path, Clock())
    followed.reported("here", 4, RemoteLoad(2, 40.0, 9, HERE))
    assert followed.slots() == {}
    assert followed.untold("here") is None
    assert not (tmp_path / LOADS_FILE).exists()


def test_a_coordinator_that_ends_takes_its_cuts_out_of_status(tmp_path):
    followed = loads(tmp_path, Clock())
    followed.reported("busy", 4, BUSY)
    followed.reported("other", 8, RemoteLoad(2, 3.5, 4, ELSEWHERE))
    assert set(load_loads([tmp_path / LOADS_FILE])) == {"busy", "other"}
    followed.forget()
    assert json.loads((tmp_path / LOADS_FILE).read_text()) == {}


# -- offload status ------------------------------------------------------------------------------


def test_status_shows_a_builder_the_coordinator_cut(tmp_path):
    followed = HookLoads(tmp_path, HERE, wall=time.time)
    followed.reported("fast", 4, BUSY)
    machines, _ = parse_machines(
        f"ssh://fast {SYSTEM} - 4 4\nssh://slow {SYSTEM} - 1 1\n", source="m", system=SYSTEM
    )
    pool = Pool(LocalMachine(1.0, 2, (SYSTEM,), frozenset()), tuple(machines))
    status = pool_status(pool, [tmp_path], SlotLocks(tmp_path / "current-load"), time.time())
    by_name = {m.name: m for m in status.machines}
    assert by_name["slow"].loaded is None
    fast = by_name["fast"].as_json()["loaded"]
    assert fast is not None
    assert (fast["slots"], fast["full"]) == (2, 4)
    (line,) = [line for line in format_status(status).splitlines() if "loaded" in line]
    assert line.startswith("fast: loaded (hook coordinator, reported ")
    assert line.endswith("): load 4.5 on 2 cores: 2 of 4 slots")


def test_a_cut_whose_coordinator_is_gone_reads_as_none(tmp_path: Path) -> None:
    entry = {"slots": 1, "full": 2, "said": "load 3 on 1 cores: 1 of 2 slots", "reported": 1.0}
    gone = f"{pid_namespace()} {os.getpid()} 1"  # this pid, but not started then: not ours
    elsewhere = f"pid:[1] {os.getpid()} 1"  # another pid namespace: cannot be told
    alive = owner_line(os.getpid())
    owners = {"gone": gone, "elsewhere": elsewhere, "alive": alive, "older": None}
    data = {name: {**entry, "owner": owner} for name, owner in owners.items()}
    del data["older"]["owner"]  # written by an offload that kept no owner
    (tmp_path / LOADS_FILE).write_text(json.dumps(data))
    assert sorted(load_loads([tmp_path / LOADS_FILE])) == ["alive", "elsewhere", "older"]


def test_a_coordinator_that_ends_leaves_another_live_one_s_cuts(tmp_path: Path) -> None:
    # Two coordinators share a state directory after an upgrade (the old one runs on): the
    # old one idling out erased the new one's cut, and `offload status` stopped showing it.
    other = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        entry = {"slots": 1, "full": 4, "said": "load 9 on 2 cores: 1 of 4 slots", "reported": 1.0}
        theirs = {"busy": {**entry, "owner": owner_line(other.pid)}}
        (tmp_path / LOADS_FILE).write_text(json.dumps(theirs))
        followed = loads(tmp_path, Clock())
        followed.reported("busy", 4, BUSY)  # this one cut it too: its entry now
        followed.forget()
        assert "busy" not in load_loads([tmp_path / LOADS_FILE])  # its own, ended
        (tmp_path / LOADS_FILE).write_text(json.dumps(theirs))
        followed.forget()
        assert set(load_loads([tmp_path / LOADS_FILE])) == {"busy"}  # the other's stands
    finally:
        other.communicate(b"")
