"""The live view (ui.view through ui.tty), its ETA (ui.eta) and the plan it comes from
(scheduler.run.remaining), driven by the scripted run of test_ui."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from rich.cells import cell_len

from offload.scheduler.dag import Job, JobGraph
from offload.scheduler.policy import MachineSlotSpec
from offload.scheduler.run import DEFAULT_WORK, Executor, PoolMember
from offload.scheduler.run.remaining import SIMULATE_LIMIT, remaining_seconds
from offload.transport.fake import FakeLink, FakeStore
from offload.ui.eta import Eta
from offload.ui.events import Event, JobFinished, JobPhase, RunFinished, RunStarted
from tests.helpers.plans import make_plan, spec
from tests.helpers.scripted_run import (
    BIG,
    HELLO,
    T0,
    done,
    drive,
    last_frame,
    phase,
    scripted_run,
    tty,
    visible,
)


def rows_of(block: list[str], machine: str) -> list[str]:
    """The header line of ``machine`` and its job rows (indented lines after it)."""
    start = next(i for i, line in enumerate(block) if line.startswith(machine + " "))
    rows = [block[start]]
    for line in block[start + 1 :]:
        if not line.startswith(" "):
            break
        rows.append(line)
    return rows


def test_header_phases_elapsed_and_last_log_line() -> None:
    renderer, out, clock = tty(print_logs=False)
    drive(renderer, clock, upto=1.0)
    clock.now = T0 + 2.1
    renderer._live.refresh()
    block = last_frame(out)
    header, hello = rows_of(block, "fast")
    assert header.split() == ["fast", "speed", "4", "·", "1/2", "slots"]
    assert hello.split()[:2] == ["hello-2.12", "building"]
    assert "1.6s / est 4.0s" in hello  # building since 0.5, now 2.1
    assert "overdue" not in hello
    assert hello.endswith("checking for gcc... yes")  # the newest log line, sanitised
    assert rows_of(block, "slow")[0].startswith("slow   speed 1 · 1/2 slots")
    assert "1.1s / est 12.0s" in rows_of(block, "slow")[1]
    assert block[-1] == "0/4 done · 2.1s elapsed · ETA 17.9s"  # the plan's 20 s, less 2.1 s
    assert "checking for gcc" not in visible(out.getvalue()).split("\n")[0]  # no log above
    renderer.close()


def test_an_overdue_build_is_marked_and_holds_the_eta() -> None:
    renderer, out, clock = tty(print_logs=False)
    drive(renderer, clock, upto=1.0)
    clock.now = T0 + 2.2  # bad-1.0 on local: 2.0 s of its 2.0 s, not yet overdue
    renderer._live.refresh()
    assert last_frame(out)[-1] == "0/4 done · 2.2s elapsed · ETA 17.8s"
    clock.now = T0 + 6.5
    renderer._live.refresh()
    block = last_frame(out)
    assert "6.0s / est 4.0s overdue" in rows_of(block, "fast")[1]
    assert "6.3s / est 2.0s overdue" in rows_of(block, "local")[1]
    assert "overdue" not in rows_of(block, "slow")[1]  # 5.5s of its 12
    # Overdue since 2.2 s, the ETA has stood still since.
    assert block[-1] == "0/4 done · 6.5s elapsed · ETA 17.8s"
    renderer.close()


def test_down_machine_failure_and_speculative_copy() -> None:
    renderer, out, clock = tty(print_logs=False)
    drive(renderer, clock, upto=3.5)
    block = last_frame(out)
    until = time.strftime("%H:%M:%S", time.localtime(T0 + 62.0))
    (slow,) = rows_of(block, "slow")  # its lost build has no row
    assert slow == (
        f"slow   speed 1 · 0/2 slots · down: connection reset · until {until} (retry in 58.5s)"
    )
    fast = rows_of(block, "fast")
    assert fast[0].endswith("1/2 slots")
    assert fast[1].split()[:3] == ["big-3", "(copy)", "building"]  # hello-2.12 is done
    assert rows_of(block, "local")[1].split()[:2] == ["big-3", "building"]
    assert block[-1].startswith("3/4 done · 1 failed · 1 skipped · 3.5s elapsed · ETA ")


def test_a_one_slot_machine_in_the_final_frame_has_one_slot() -> None:
    """The tour's run on the fleet ended with 'local   speed 1 · 1 slots · built 0'."""
    renderer, out, clock = tty(print_logs=False)
    events: list[Event] = [
        RunStarted("run1", 1, ("local",), 1.0, T0, (1.0,), (1,)),
        phase((HELLO, "hello-2.12", "local"), "building", 0.1, 1.0),
        done((HELLO, "hello-2.12", "local"), "built", (0.1, 1.0)),
        RunFinished("run1", 1, 0, 0, 1.0, ("/nix/store/x-hello-2.12",), T0 + 1.0),
    ]
    for event in events:
        clock.now = max(clock.now, event.time)
        renderer.handle(event)
    assert last_frame(out)[0] == "local  speed 1 · 1 slot · built 1"


def test_final_frame_is_the_truth_with_no_stale_rows() -> None:
    renderer, out, clock = tty(print_logs=False)
    # A copy stopped without a word (the executor cancels a losing twin) leaves no row.
    extra = phase((HELLO, "hello-2.12", "local"), "building", 0.6, 4.0, spec=True)
    events = scripted_run()
    events.insert(6, extra)
    for event in events:
        clock.now = max(clock.now, event.time)
        renderer.handle(event)
    block = last_frame(out)
    assert block == [
        "fast   speed 4 · 2 slots · built 2",
        "slow   speed 1 · 2 slots · built 0",
        "local  speed 1 · 4 slots · built 0",
        "4/4 done · 1 failed · 1 skipped · finished in 7.5s",
    ]
    text = visible(out.getvalue())
    renderer.handle(scripted_run()[1])  # after close: ignored, nothing more written
    assert visible(out.getvalue()) == text


def test_interrupted_run_says_so_and_drops_its_rows() -> None:
    renderer, out, clock = tty(print_logs=False)
    drive(renderer, clock, upto=2.2)
    clock.now = T0 + 2.4
    renderer.handle(RunFinished("run1", 0, 1, 1, 2.4, (), T0 + 2.4, interrupted=True))
    block = last_frame(out)
    assert block[-1] == "2/4 done · 1 failed · 1 skipped · interrupted after 2.4s"
    assert "finished" not in block[-1]
    assert not any("building" in line for line in block)
    assert len(block) == 4  # three machine headers and the run's line


def test_nothing_to_build_draws_nothing() -> None:
    renderer, out, _ = tty(print_logs=False)
    renderer.handle(RunStarted("run1", 0, ("fast", "local"), 0.0, T0, (4.0, 1.0), (2, 4)))
    renderer.handle(RunFinished("run1", 0, 0, 0, 0.1, (), T0 + 0.1))
    assert out.getvalue() == ""


def test_narrow_terminal_cuts_logs_not_times() -> None:
    for width, log in ((72, "compiling xxxx…"), (60, "")):
        renderer, out, clock = tty(print_logs=False, width=width)
        drive(renderer, clock, upto=3.5)
        block = last_frame(out)
        assert all(cell_len(line) <= width for line in block)
        local = rows_of(block, "local")[1]
        assert local.split()[:2] == ["big-3", "building"]
        assert local.endswith(f"1.4s / est 10.0s  {log}".strip())  # left out below 10 cells
        renderer.close()


def test_plans_move_the_eta_without_jumps() -> None:
    renderer, out, clock = tty(print_logs=False)
    start = scripted_run()[0]
    renderer.handle(start)
    hello = phase((HELLO, "hello-2.12", "fast"), "building", 1.0, 4.0)
    # The first plan replaces the start's estimate whole: 30 s from 1.0.
    renderer.handle(dataclasses.replace(hello, remaining=30.0))
    big = phase((BIG, "big-3", "slow"), "building", 2.0, 12.0)
    renderer.handle(dataclasses.replace(big, remaining=40.0))  # later, with no news: ignored
    clock.now = T0 + 2.0
    renderer._live.refresh()
    assert last_frame(out)[-1].endswith("ETA 29.0s")
    finish = done((HELLO, "hello-2.12", "fast"), "built", (1.0, 3.0))
    renderer.handle(dataclasses.replace(finish, remaining=19.0))  # sooner: halfway there
    clock.now = T0 + 3.0
    renderer._live.refresh()
    assert last_frame(out)[-1].endswith("ETA 23.5s")  # finish 31 -> (31 + 22) / 2
    renderer.close()


def test_eta_rules() -> None:
    eta = Eta()
    assert eta.left(T0, overdue=None) is None
    eta.start(T0, 10.0)
    eta.plan(T0 + 1, 20.0, overdue=None)  # the first plan is taken whole
    assert eta.left(T0 + 1, overdue=None) == 20.0
    eta.plan(T0 + 2, 30.0, overdue=None)  # later, no news: ignored
    assert eta.left(T0 + 2, overdue=None) == 19.0
    eta.plan(T0 + 3, 8.0, overdue=None)  # sooner: finish 21 moves halfway to 11
    assert eta.left(T0 + 3, overdue=None) == 13.0
    assert eta.left(T0 + 5, overdue=None) == 11.0
    # A build went overdue at 4 (seen at 5): standing still from 4 to 6.
    assert eta.left(T0 + 6, overdue=T0 + 4) == 11.0
    eta.news()  # a machine went down: the next plan is taken whole, later or not
    eta.plan(T0 + 7, 40.0, overdue=None)
    assert eta.left(T0 + 7, overdue=None) == 40.0
    assert eta.left(T0 + 60, overdue=None) == 0.0  # run out: "due"
    eta.plan(T0 + 61, 5.0, overdue=None)  # once run out, the plan is all there is
    assert eta.left(T0 + 61, overdue=None) == 5.0


FAST, SLOW = MachineSlotSpec("fast", speed=4.0, slots=1), MachineSlotSpec("slow", 1.0, 1)


def test_remaining_plans_what_is_left() -> None:
    graph = JobGraph([Job("a", 8.0), Job("b", 4.0, ("a",)), Job("c", 2.0)])
    # Nothing started: a then b on fast (3 s), c on slow (2 s).
    assert remaining_seconds(graph, {}, [FAST, SLOW]) == 3.0
    graph.mark_started("a")
    graph.mark_started("c")
    # a has done 6 of its 8 (on fast for 1.5 s); the plan counts what is left of it.
    assert remaining_seconds(graph, {"a": 6.0, "c": 1.0}, [FAST, SLOW]) == 1.5
    # An overdue build may end at any moment: none of it is left, never less than none.
    assert remaining_seconds(graph, {"a": 20.0, "c": 4.0}, [FAST]) == 1.0
    assert remaining_seconds(graph, {}, []) is None  # nothing up
    graph.mark_done("a")
    graph.mark_started("b")
    graph.mark_done("b")
    graph.mark_done("c")
    assert remaining_seconds(graph, {}, [FAST]) == 0.0


def test_remaining_plans_with_the_estimates_learnt_since_the_graph_was_made() -> None:
    graph = JobGraph([Job("a", 8.0), Job("b", 4.0, ("a",)), Job("c", 2.0)])
    graph.update_estimate("a", 2.0)  # a first run's guess, learnt within the run
    learnt = JobGraph([Job("a", 2.0), Job("b", 4.0, ("a",)), Job("c", 2.0)])
    left = remaining_seconds(graph, {}, [FAST, SLOW])
    assert left == remaining_seconds(learnt, {}, [FAST, SLOW])
    assert left is not None
    assert left < 3.0


def test_remaining_falls_back_to_the_bound_on_big_graphs() -> None:
    jobs = [Job(f"j{i}", 1.0) for i in range(SIMULATE_LIMIT + 1)]
    left = remaining_seconds(JobGraph(jobs), {}, [FAST, SLOW])
    assert left == (SIMULATE_LIMIT + 1) / 5.0


def test_a_first_runs_builds_are_shown_with_the_guess_it_has_learnt() -> None:
    # a, then b and c after it, all unknown to history: every build seems to take 2 s of wall,
    # so b and c learn from a and are shown (and planned) with that, not the first guess.
    plan, paths, _, src = make_plan({"a": [], "b": ["a"], "c": ["a"]})
    local = FakeLink(FakeStore("local", [src]))
    events: list[Event] = []
    member = PoolMember(spec("local", speed=1, slots=1), local, remote=False)
    wall = iter(range(0, 1000, 2)).__next__
    assert asyncio.run(Executor(plan, [member], local, emit=events.append, wall=wall).run()).ok
    building = {e.drv_path: e for e in events if isinstance(e, JobPhase) and e.phase == "building"}
    assert building[paths["a"]].estimate == DEFAULT_WORK
    learnt = [building[paths[name]].estimate for name in "bc"]
    assert all(e is not None and e < DEFAULT_WORK for e in learnt)
    later = building[paths["c"]]
    assert later.remaining is None or later.remaining < DEFAULT_WORK


def test_the_executor_sends_its_plan_with_builds_and_endings() -> None:
    plan, _, _, src = make_plan({"a": [], "b": [], "c": ["a", "b"]})
    local = FakeLink(FakeStore("local", [src]))
    members = [
        PoolMember(spec("local", speed=1, slots=1), local, remote=False),
        PoolMember(spec("fast", speed=2, slots=1), FakeLink(FakeStore("fast")), remote=True),
    ]
    events: list[Event] = []
    report = asyncio.run(Executor(plan, members, local, emit=events.append).run())
    assert report.ok
    (started,) = [e for e in events if isinstance(e, RunStarted)]
    assert (started.machines, started.speeds, started.slots) == (("local", "fast"), (1, 2), (1, 1))
    building = [e for e in events if isinstance(e, JobPhase) and e.phase == "building"]
    assert len(building) == 3
    # The first plan is the run's start's (its estimate); planned again with a build or an
    # ending unless the last plan was under PLAN_SHARE times its cost ago.
    assert started.estimate >= DEFAULT_WORK  # two of the three one after the other, at least
    others = [e for e in events if isinstance(e, JobPhase) and e.phase != "building"]
    assert all(e.remaining is None for e in others)
    ends = [e for e in events if isinstance(e, JobFinished)]
    assert ends[-1].remaining == 0.0  # nothing left after the last one
    assert isinstance(events[-1], RunFinished)
    assert not events[-1].interrupted


def test_a_long_machine_name_leaves_the_rows_room() -> None:
    # Every row was indented by the longest name + 2: at 80 columns a cloud host's name left
    # the job rows their name and phase, their times and log lines cut off.
    long = "ip-10-0-12-34.eu-west-1.compute.internal"

    def renamed(event: Event) -> Event:
        if isinstance(event, RunStarted):
            return dataclasses.replace(event, machines=(*event.machines[:1], long, "local"))
        if isinstance(event, JobPhase | JobFinished) and event.machine == "slow":
            return dataclasses.replace(event, machine=long)
        return event

    renderer, out, clock = tty(print_logs=False, width=80)
    for event in map(renamed, scripted_run()):
        if event.time - T0 <= 2.1:
            clock.now = max(clock.now, event.time)
            renderer.handle(event)
    renderer._live.refresh()
    block = last_frame(out)
    assert any(line.startswith("ip-10-0-12-34.eu-we…  speed 1") for line in block)
    hello = next(line for line in block if "hello-2.12" in line)
    assert hello.startswith(" " * 22 + "hello-2.12")
    assert "/ est 4.0s" in hello
    assert all(cell_len(line) <= 80 for line in block)


def test_a_job_fetching_its_outputs_or_queued_holds_no_slot_in_the_header() -> None:
    # hello-2.12's outputs come home after its slot is let go, and the next build takes the
    # slot meanwhile; a queued build waits for one. Counted as in use: "3/2 slots" (a tester).
    renderer, out, clock = tty(print_logs=False)
    drive(renderer, clock, upto=3.0)  # hello-2.12 fetching on fast
    other = "/nix/store/" + "5" * 32 + "-other-1.drv"
    waiting = "/nix/store/" + "6" * 32 + "-waiting-1.drv"
    for event in (
        phase((other, "other-1", "fast"), "building", 3.05, 1.0),
        phase((waiting, "waiting-1", "fast"), "queued", 3.06, 1.0),
    ):
        clock.now = event.time
        renderer.handle(event)
    renderer._live.refresh()
    header = rows_of(last_frame(out), "fast")[0]
    assert header.split()[:6] == ["fast", "speed", "4", "·", "1/2", "slots"], header
