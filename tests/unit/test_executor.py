"""The executor over the in-memory serve store: real ServeClient, no processes, no sleeps."""

import asyncio
import dataclasses

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
    JobFinished,
    MachineEvent,
    RunFinished,
    RunStarted,
)
from tests.helpers.plans import finished, make_plan, spec
from tests.helpers.plans import run_executor as run


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
    # Built again at once on the free machine; flaky, reconnected meanwhile (the drop left it
    # reachable: scheduler.run.reconnects), may have copied it too, the first copy to end wins.
    assert finished(events)["a"] in {"local", "flaky"}
    assert local_store.has(outs["a"])


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


def test_the_run_starts_with_its_plans_makespan_not_the_lower_bound():
    # A diamond: top 4 -> four mids of 12 -> bottom 4, on local (1x, 1 slot), fast (4x, 2)
    # and slow (0.5x, 1). The bound is 5.9 s (56 of work over 9.5 a second); the plan waits
    # for fast's slots, 8 s. The run said "estimate 5.9s", and history "scheduler expected"
    # it, for a run of 8.1 s (scheduling tester).
    edges = {"top": [], "bot": [f"mid{i}" for i in range(4)]}
    edges.update({f"mid{i}": ["top"] for i in range(4)})
    plan, _, _, src = make_plan(edges)
    local = FakeLink(FakeStore("local", [src]))
    members = [
        PoolMember(spec("local", 1.0, 1), local, remote=False),
        PoolMember(spec("fast", 4.0, 2), FakeLink(FakeStore("fast")), remote=True),
        PoolMember(spec("slow", 0.5, 1), FakeLink(FakeStore("slow")), remote=True),
    ]
    estimates = {"top": 4.0, "bot": 4.0, **{f"mid{i}": 12.0 for i in range(4)}}
    _, events = run(plan, members, local, estimates=estimates)
    assert isinstance(events[0], RunStarted)
    assert events[0].estimate == pytest.approx(8.0)
