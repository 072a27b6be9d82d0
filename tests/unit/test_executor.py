"""The executor over the in-memory serve store: real ServeClient, no processes, no sleeps."""

import asyncio
import dataclasses
import itertools

import pytest

from offload.errors import SchedulerError
from offload.protocol.serve import BuildStatus
from offload.scheduler.run import DEFAULT_WORK, Executor, PoolMember, size_factor
from offload.transport.fake import (
    BuildOutcome,
    FakeBuild,
    FakeLink,
    FakeStore,
)
from offload.ui.events import (
    Event,
    JobFinished,
    JobPhase,
    MachineEvent,
    RunFinished,
    RunStarted,
)
from tests.helpers.plans import finished, make_plan, spec


def run(plan, members, local, *, keep_going=False, estimates=None):
    events: list[Event] = []
    executor = Executor(
        plan, members, local, emit=events.append, keep_going=keep_going, estimates=estimates
    )
    report = asyncio.run(executor.run())
    return report, events


def test_graph_splits_across_local_and_remote_and_outputs_come_home():
    plan, paths, outs, src = make_plan({"a": [], "b": [], "c": [], "d": ["a", "b", "c"]})
    local_store = FakeStore("local", [src])
    remote_store = FakeStore("fast")
    local = FakeLink(local_store)
    members = [
        PoolMember(spec("local", speed=1, slots=1), local, remote=False),
        PoolMember(spec("fast", speed=1.5, slots=1), FakeLink(remote_store), remote=True),
    ]
    report, events = run(plan, members, local)
    assert report.ok
    where = finished(events)
    assert set(where) == {"a", "b", "c", "d"}
    assert set(where.values()) == {"local", "fast"}
    assert all(local_store.has(outs[n]) for n in "abcd")
    # Remote builds received their inputs: the source and, for d, whatever was built locally.
    assert src.path in remote_store.received
    for name, machine in where.items():
        store = remote_store if machine == "fast" else local_store
        assert paths[name] in store.builds
    assert isinstance(events[-1], RunFinished)
    assert events[-1].built == 4


def test_failed_derivation_skips_dependents_and_stops_without_keep_going():
    plan, paths, _, src = make_plan({"bad": [], "after": ["bad"], "x": [], "y": ["x"]})

    async def builder(build: FakeBuild) -> BuildOutcome | None:
        if build.drv.name == "bad":
            build.log("compiling bad")
            return BuildOutcome(BuildStatus.PERMANENT_FAILURE, "builder for bad failed")
        return None

    local_store = FakeStore("local", [src], builder=builder)
    local = FakeLink(local_store)
    members = [PoolMember(spec("local", slots=1), local, remote=False)]
    # "bad" has the longest remaining path, so it starts first on the single slot.
    report, events = run(plan, members, local, estimates={"bad": 50, "after": 50})
    assert list(report.failed) == [paths["bad"]]
    assert paths["after"] in report.skipped
    assert not report.ok
    assert "y" not in finished(events)  # nothing new starts after a failure

    local_store2 = FakeStore("local", [src], builder=builder)
    local2 = FakeLink(local_store2)
    members2 = [PoolMember(spec("local", slots=1), local2, remote=False)]
    report2, events2 = run(plan, members2, local2, keep_going=True, estimates={"bad": 50})
    assert set(finished(events2)) == {"x", "y"}
    assert set(finished(events2, "skipped")) == {"after"}
    assert report2.failed == {paths["bad"]: "builder for bad failed"}


def test_unreachable_builder_is_backed_off_and_its_work_built_elsewhere():
    plan, _, outs, src = make_plan({"a": [], "b": [], "c": ["a", "b"]})
    local_store = FakeStore("local", [src])
    local = FakeLink(local_store)
    dead = FakeLink(FakeStore("dead"))
    dead.go_down()
    members = [
        PoolMember(spec("local", speed=1, slots=2), local, remote=False),
        PoolMember(spec("dead", speed=8, slots=2), dead, remote=True),
    ]
    report, events = run(plan, members, local)
    assert report.ok
    assert set(finished(events).values()) == {"local"}
    downs = [e for e in events if isinstance(e, MachineEvent) and e.state == "down"]
    assert downs
    assert downs[0].machine == "dead"
    assert all(local_store.has(outs[n]) for n in "abc")


def test_connection_dropped_mid_build_reschedules_on_another_machine():
    plan, _, outs, src = make_plan({"a": []})
    local_store = FakeStore("local", [src])
    local = FakeLink(local_store)
    flaky_store = FakeStore("flaky")
    flaky = FakeLink(flaky_store)
    flaky.break_next("build-start")
    members = [
        PoolMember(spec("flaky", speed=8, slots=1), flaky, remote=True),
        PoolMember(spec("local", speed=1, slots=1), local, remote=False),
    ]
    report, events = run(plan, members, local)
    assert report.ok
    lost = [e for e in events if isinstance(e, JobFinished) and e.status == "lost"]
    assert [e.machine for e in lost] == ["flaky"]
    assert finished(events) == {"a": "local"}
    assert local_store.has(outs["a"])
    assert not flaky_store.has(outs["a"])


def test_mandatory_feature_machine_only_takes_matching_work():
    plan, _, _, src = make_plan(
        {"plain1": [], "plain2": [], "kvm-test": []}, features={"kvm-test": "kvm"}
    )
    local_store = FakeStore("local", [src])
    local = FakeLink(local_store)
    members = [
        PoolMember(spec("local", speed=1, slots=1, supported=("kvm",)), local, remote=False),
        PoolMember(
            spec("kvmbox", speed=10, slots=4, mandatory=("kvm",)),
            FakeLink(FakeStore("kvmbox")),
            remote=True,
        ),
    ]
    report, events = run(plan, members, local)
    assert report.ok
    where = finished(events)
    assert where["plain1"] == where["plain2"] == "local"
    assert where["kvm-test"] == "kvmbox"


def test_work_no_machine_can_build_is_an_error_before_anything_starts():
    plan, _, _, src = make_plan({"arm": []}, features={"arm": "big-parallel"})
    local = FakeLink(FakeStore("local", [src]))
    members = [PoolMember(spec("local"), local, remote=False)]
    with pytest.raises(SchedulerError, match="no machine can build"):
        Executor(plan, members, local, emit=lambda e: None)


def test_with_keep_going_work_no_machine_can_build_fails_once_the_run_has_started():
    plan, paths, _, src = make_plan(
        {"arm": [], "after": ["arm"], "x": []}, features={"arm": "big-parallel"}
    )
    local = FakeLink(FakeStore("local", [src]))
    members = [PoolMember(spec("local"), local, remote=False)]
    report, events = run(plan, members, local, keep_going=True)
    assert isinstance(events[0], RunStarted)
    ended = {e.name: e for e in events if isinstance(e, JobFinished)}
    assert (ended["arm"].machine, ended["arm"].status) == ("", "failed")
    assert ended["arm"].error == report.failed[paths["arm"]]
    assert report.failed[paths["arm"]].startswith("no machine can build it: ")
    assert ended["after"].status == "skipped"
    assert ended["x"].status == "built"


def test_logs_reach_the_sink_with_their_derivation_and_machine():
    plan, paths, _, src = make_plan({"chatty": []})

    async def builder(build: FakeBuild) -> BuildOutcome | None:
        build.log("line one")
        build.log("line two")
        return None

    remote = FakeLink(FakeStore("r", builder=builder))
    local = FakeLink(FakeStore("local", [src]))
    lines: list[tuple[str, str, str]] = []
    executor = Executor(
        plan,
        [PoolMember(spec("r"), remote, remote=True)],
        local,
        emit=lambda e: None,
        log_sink=lambda drv, machine, line: lines.append((drv, machine, line)),
    )
    assert asyncio.run(executor.run()).ok
    assert lines == [(paths["chatty"], "r", "line one"), (paths["chatty"], "r", "line two")]


def test_a_builds_last_lines_reach_its_log_when_they_come_after_its_result():
    # Over ssh:// the log is the session's stderr, read apart from the result on stdout: here
    # the lines reach the client only right after the result, in the same loop turn, as when
    # ssh passes them on second. Each line goes to its own build's log, none to the next's.
    plan, paths, _, src = make_plan({"first": [], "second": ["first"]})

    async def builder(build: FakeBuild) -> BuildOutcome | None:
        build.log(f"{build.drv.name} starts")
        build.log(f"{build.drv.name} done")
        return None

    remote = FakeLink(FakeStore("r", builder=builder, late_stderr=True))
    local = FakeLink(FakeStore("local", [src]))
    lines: list[tuple[str, str]] = []
    executor = Executor(
        plan,
        [PoolMember(spec("r"), remote, remote=True)],
        local,
        emit=lambda e: None,
        log_sink=lambda drv, machine, line: lines.append((drv, line)),
    )
    assert asyncio.run(executor.run()).ok
    first, second = paths["first"], paths["second"]
    assert lines == [
        (first, "first starts"),
        (first, "first done"),
        (second, "second starts"),
        (second, "second done"),
    ]


def test_a_local_build_waits_until_its_remote_input_has_come_home():
    plan, _, outs, src = make_plan({"a": [], "b": ["a"]}, features={"a": "kvm"})
    local_store = FakeStore("local", [src])
    local = FakeLink(local_store)
    kvm_store = FakeStore("kvmbox")
    members = [
        PoolMember(spec("local", speed=1, slots=1), local, remote=False),
        PoolMember(spec("kvmbox", speed=9, slots=1, mandatory=("kvm",)), FakeLink(kvm_store), True),
    ]
    report, events = run(plan, members, local)
    # The fake, like Nix, fails a build whose input is not valid in its store.
    assert report.ok, report.failed
    assert finished(events) == {"a": "kvmbox", "b": "local"}
    assert local_store.has(outs["a"])
    assert local_store.has(outs["b"])
    assert not kvm_store.has(outs["b"])


def test_a_dependent_on_the_same_builder_starts_from_the_outputs_already_there():
    plan, paths, outs, src = make_plan({"a": [], "b": ["a"], "c": ["b"]})
    local_store = FakeStore("local", [src])
    remote_store = FakeStore("fast")
    members = [PoolMember(spec("fast", speed=4, slots=1), FakeLink(remote_store), remote=True)]
    report, _ = run(plan, members, FakeLink(local_store))
    assert report.ok
    assert remote_store.builds == [paths["a"], paths["b"], paths["c"]]
    # Nothing built on fast was sent back to it: only the source went over.
    assert remote_store.received == [src.path]
    assert all(local_store.has(outs[n]) for n in "abc")


def test_guessed_estimates_learn_from_this_runs_builds_and_history_is_kept():
    plan, paths, _, src = make_plan({"a": [], "b": ["a"], "c": ["a"], "known": ["a"]})
    local = FakeLink(FakeStore("local", [src]))
    executor = Executor(
        plan,
        [PoolMember(spec("local", slots=1), local, remote=False)],
        local,
        emit=lambda e: None,
        estimates={"known": 7.0},
        wall=iter(range(0, 1000, 2)).__next__,  # every build seems to take about 2 s of wall
    )
    work = executor.policy.graph.work
    assert work(paths["b"]) == DEFAULT_WORK
    assert asyncio.run(executor.run()).ok
    assert work(paths["b"]) < DEFAULT_WORK  # b and c waited for a, and learned from it
    assert work(paths["c"]) < DEFAULT_WORK
    assert work(paths["known"]) == 7.0  # history beats this run's guess


def test_bigger_sources_are_guessed_longer_and_keep_that_order_when_learning():
    plan, paths, _, src = make_plan({"a": [], "big": ["a"], "small": ["a"]})
    plan = dataclasses.replace(plan, source_bytes={paths["big"]: 100 * 2**20})
    assert size_factor(0) == size_factor(2**20) == 1.0
    assert size_factor(10 * 2**20) == pytest.approx(2.0)
    assert size_factor(2**40) == 4.0

    async def builder(build: FakeBuild) -> BuildOutcome | None:
        # big fails, so the run stops with small still waiting: what it learned was from a.
        if build.drv.name == "big":
            return BuildOutcome(BuildStatus.PERMANENT_FAILURE, "no")
        return None

    local = FakeLink(FakeStore("local", [src], builder=builder))
    executor = Executor(
        plan,
        [PoolMember(spec("local", slots=1), local, remote=False)],
        local,
        emit=lambda e: None,
        wall=iter(range(0, 1000, 2)).__next__,
    )
    work = executor.policy.graph.work
    assert work(paths["big"]) == pytest.approx(3 * DEFAULT_WORK)
    assert work(paths["small"]) == DEFAULT_WORK
    report = asyncio.run(executor.run())
    assert report.built == [paths["a"]]
    assert list(report.failed) == [paths["big"]]
    # Both learned from a's build, and big is still guessed three times small.
    assert work(paths["small"]) < DEFAULT_WORK
    assert work(paths["big"]) == pytest.approx(3 * work(paths["small"]))


def test_a_build_halted_by_another_failure_is_reported_from_when_it_started():
    plan, _, _, src = make_plan({"bad": [], "long": []})
    long_building = asyncio.Event()

    async def builder(build: FakeBuild) -> BuildOutcome | None:
        if build.drv.name == "long":
            long_building.set()
            await asyncio.Event().wait()  # until the run stops it
        await long_building.wait()
        return BuildOutcome(BuildStatus.PERMANENT_FAILURE, "builder for bad failed")

    local = FakeLink(FakeStore("local", [src], builder=builder))
    ticks = itertools.count()  # every reading of the wall clock is a second later
    events: list[Event] = []
    executor = Executor(
        plan,
        [PoolMember(spec("local", slots=2), local, remote=False)],
        local,
        emit=events.append,
        wall=lambda: float(next(ticks)),
    )
    asyncio.run(executor.run())
    ended = {e.name: e for e in events if isinstance(e, JobFinished)}
    assert ended["long"].status == "cancelled"
    # It started before bad failed, not when it was stopped after that.
    assert ended["long"].started < ended["bad"].finished < ended["long"].finished


def test_a_builder_that_dies_with_two_builds_running_is_down_once():
    plan, _, outs, src = make_plan({"a": [], "b": []})
    running: list[str] = []
    both = asyncio.Event()

    async def dying(build: FakeBuild) -> BuildOutcome | None:
        running.append(build.drv.name)
        if len(running) == 2:
            both.set()
        await both.wait()
        raise RuntimeError("killed")  # the session hangs up: the build is lost

    local_store = FakeStore("local", [src])
    local = FakeLink(local_store)
    members = [
        PoolMember(spec("dying", speed=100, slots=2), FakeLink(FakeStore("dying", builder=dying)),
                   remote=True),
        PoolMember(spec("local", speed=1, slots=2), local, remote=False),
    ]  # fmt: skip
    report, events = run(plan, members, local)
    assert report.ok
    assert sorted(running) == ["a", "b"]
    lost = [e for e in events if isinstance(e, JobFinished) and e.status == "lost"]
    assert len(lost) == 2
    downs = [e for e in events if isinstance(e, MachineEvent) and e.state == "down"]
    assert [e.machine for e in downs] == ["dying"]  # one backoff, said once
    assert all(local_store.has(outs[n]) for n in "ab")


def _untold(events: list[Event]) -> set[tuple[str, str]]:
    """Copies (derivation, machine) whose last event is a phase: started, never said ended."""
    last: dict[tuple[str, str], Event] = {}
    for event in events:
        if isinstance(event, JobPhase | JobFinished) and event.machine:
            last[event.name, event.machine] = event
    return {copy for copy, event in last.items() if isinstance(event, JobPhase)}


def test_a_build_stopped_as_its_builder_went_down_ends_with_an_event():
    # b was still building on dying when a's loss took the builder down: its copy was
    # stopped and built elsewhere, and --json never said that copy ended.
    plan, _, outs, src = make_plan({"a": [], "b": []})
    both = asyncio.Event()
    running: list[str] = []

    async def dying(build: FakeBuild) -> BuildOutcome | None:
        running.append(build.drv.name)
        if len(running) == 2:
            both.set()
        await both.wait()
        if build.drv.name == "a":
            raise RuntimeError("killed")  # a's session hangs up: the builder is down
        await asyncio.Event().wait()  # b's hangs on until it is stopped
        return None

    local_store = FakeStore("local", [src])
    local = FakeLink(local_store)
    members = [
        PoolMember(spec("dying", speed=100, slots=2), FakeLink(FakeStore("dying", builder=dying)),
                   remote=True),
        PoolMember(spec("local", speed=1, slots=2), local, remote=False),
    ]  # fmt: skip
    report, events = run(plan, members, local)
    assert report.ok
    ended = [(e.name, e.status) for e in events if isinstance(e, JobFinished)]
    assert sorted(ended) == [("a", "built"), ("a", "lost"), ("b", "built"), ("b", "lost")]
    assert _untold(events) == set()
    assert all(local_store.has(outs[n]) for n in "ab")


def test_builds_the_runs_end_stopped_end_with_an_event_before_the_run_does():
    plan, _, _, src = make_plan({"a": [], "b": []})
    building = asyncio.Event()
    running: list[str] = []

    async def endless(build: FakeBuild) -> BuildOutcome | None:
        running.append(build.drv.name)
        if len(running) == 2:
            building.set()
        await asyncio.Event().wait()
        return None

    local = FakeLink(FakeStore("local", [src], builder=endless))
    events: list[Event] = []
    executor = Executor(
        plan,
        [PoolMember(spec("local", slots=2), local, remote=False)],
        local,
        emit=events.append,
    )

    async def interrupted() -> None:
        run = asyncio.create_task(executor.run())
        await building.wait()  # both
        run.cancel()  # as Ctrl-C stops a run
        with pytest.raises(asyncio.CancelledError):
            await run

    asyncio.run(interrupted())
    assert isinstance(events[-1], RunFinished)
    assert events[-1].interrupted
    stopped = [e for e in events if isinstance(e, JobFinished)]
    assert {(e.name, e.status, e.error) for e in stopped} == {
        (n, "cancelled", "stopped by the run's end") for n in "ab"
    }
    assert _untold(events) == set()


def test_with_keep_going_a_copy_whose_twin_failed_is_stopped_and_says_so():
    # a ends at once on fast, far sooner than its estimate, so fast, idle, gets a second copy
    # of long (on slow, 12 s to go). The copy on slow fails: with -k the copy on fast ran on
    # to its end, holding fast's slot for a derivation already failed, and was never told.
    plan, _, _, src = make_plan({"a": [], "long": []})
    copied = asyncio.Event()

    async def on_slow(build: FakeBuild) -> BuildOutcome | None:
        await copied.wait()
        return BuildOutcome(BuildStatus.PERMANENT_FAILURE, "builder for long failed")

    async def on_fast(build: FakeBuild) -> BuildOutcome | None:
        if build.drv.name == "long":
            copied.set()
            await asyncio.Event().wait()  # until it is stopped
        return None

    local = FakeLink(FakeStore("local", [src]))
    members = [
        PoolMember(spec("fast", speed=4, slots=1), FakeLink(FakeStore("fast", builder=on_fast)),
                   remote=True),
        PoolMember(spec("slow", speed=1, slots=1), FakeLink(FakeStore("slow", builder=on_slow)),
                   remote=True),
    ]  # fmt: skip
    events: list[Event] = []
    executor = Executor(
        plan, members, local, emit=events.append, keep_going=True,
        estimates={"a": 40, "long": 12},
    )  # fmt: skip

    async def bounded() -> None:  # it never ended before: fast's copy waited to be stopped
        async with asyncio.timeout(10):
            await executor.run()

    asyncio.run(bounded())
    ended = {(e.machine, e.status, e.error) for e in events if isinstance(e, JobFinished)}
    assert ended == {
        ("fast", "built", None),
        ("slow", "failed", "builder for long failed"),
        ("fast", "cancelled", "stopped: another copy failed"),
    }
    assert _untold(events) == set()


def test_a_derivation_lost_for_the_last_time_ends_its_copy_once():
    # a's session hangs up on each builder in turn; the third loss fails a (MAX_LOSSES). That
    # copy was told twice, "failed" then "lost": history kept two builds for it and the
    # summary counted it both failed and stopped on its builder.
    plan, _, _, src = make_plan({"a": []})

    async def dying(build: FakeBuild) -> BuildOutcome | None:
        raise RuntimeError("killed")

    local = FakeLink(FakeStore("local", [src]))
    members = [
        PoolMember(spec(name, speed=speed, slots=1), FakeLink(FakeStore(name, builder=dying)),
                   remote=True)
        for name, speed in (("d1", 3), ("d2", 2), ("d3", 1))
    ]  # fmt: skip
    report, events = run(plan, members, local, keep_going=True)
    assert not report.ok
    ended = [(e.machine, e.status) for e in events if isinstance(e, JobFinished)]
    assert ended == [("d1", "lost"), ("d2", "lost"), ("d3", "failed")]
