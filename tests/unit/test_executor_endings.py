"""How an executor's builds end when others fail, builders go down or the run is stopped: each
build ends with exactly one event, over the in-memory serve store (no processes, no sleeps)."""

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest

from offload.protocol.serve import BuildStatus
from offload.scheduler.dag import JobState
from offload.scheduler.run import Executor, PoolMember
from offload.transport.fake import BuildOutcome, FakeBuild, FakeLink, FakeStore
from offload.typing_compat import override
from offload.ui.events import Event, JobFinished, JobPhase, MachineEvent, RunFinished
from tests.helpers.plans import make_plan, spec
from tests.helpers.plans import run_executor as run


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
        PoolMember(spec("dying", speed=100, slots=2),
                   FakeLink(FakeStore("dying", builder=dying), falls=True),
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
        PoolMember(spec("dying", speed=100, slots=2),
                   FakeLink(FakeStore("dying", builder=dying), falls=True),
                   remote=True),
        PoolMember(spec("local", speed=1, slots=2), local, remote=False),
    ]  # fmt: skip
    report, events = run(plan, members, local)
    assert report.ok
    ended = [(e.name, e.status) for e in events if isinstance(e, JobFinished)]
    assert sorted(ended) == [("a", "built"), ("a", "lost"), ("b", "built"), ("b", "lost")]
    assert _untold(events) == set()
    assert all(local_store.has(outs[n]) for n in "ab")
    # b's copy there is said lost as dying falls: before its new copy here begins. It was
    # said when its task settled, after that, so --json and history had copy 2 begin first.
    told = [
        (e.machine, "lost" if isinstance(e, JobFinished) else e.phase)
        for e in events
        if isinstance(e, JobFinished | JobPhase) and e.name == "b"
        and (isinstance(e, JobPhase) or e.status == "lost")
    ]  # fmt: skip
    lost = told.index(("dying", "lost"))
    assert all(machine == "dying" for machine, _ in told[:lost])
    assert told[lost + 1 :]
    assert all(machine == "local" for machine, _ in told[lost + 1 :])


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
        (n, "cancelled", "stopped: the run was interrupted") for n in "ab"
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
        PoolMember(spec(name, speed=speed, slots=1),
                   FakeLink(FakeStore(name, builder=dying), falls=True), remote=True)
        for name, speed in (("d1", 3), ("d2", 2), ("d3", 1))
    ]  # fmt: skip
    report, events = run(plan, members, local, keep_going=True)
    assert not report.ok
    ended = [(e.machine, e.status) for e in events if isinstance(e, JobFinished)]
    assert ended == [("d1", "lost"), ("d2", "lost"), ("d3", "failed")]


def test_a_second_copy_on_a_builder_said_down_is_stopped_with_it():
    # fast drops (x's session hangs up) while it runs the second copy of long, whose first
    # copy builds on slow: that copy was never stopped, a long build going on for hours on a
    # machine said down, and the run waited for it (a guard of 10 s stands in for hours).
    plan, _, _, src = make_plan({"a": [], "x": [], "long": []})
    copied, x_lost = asyncio.Event(), asyncio.Event()

    async def on_fast(build: FakeBuild) -> BuildOutcome | None:
        if build.drv.name == "long":
            copied.set()
            await asyncio.Event().wait()  # hours of work
        if build.drv.name == "x":
            await copied.wait()
            x_lost.set()
            raise RuntimeError("killed")  # the session drops
        return None

    async def on_slow(build: FakeBuild) -> BuildOutcome | None:
        if build.drv.name == "long":
            await x_lost.wait()
        return None

    members = [
        _member("fast", 4, 2, on_fast),
        _member("slow", 1, 2, on_slow),
    ]
    local = FakeLink(FakeStore("local", [src]))
    events: list[Event] = []
    executor = Executor(
        plan, members, local, emit=events.append, estimates={"a": 40, "x": 40, "long": 12}
    )
    report = asyncio.run(asyncio.wait_for(executor.run(), 10))
    assert report.ok
    ended = [(e.name, e.machine, e.status) for e in events if isinstance(e, JobFinished)]
    assert ("long", "fast", "lost") in ended  # stopped with its machine, said
    assert ("long", "slow", "built") in ended


def test_a_lost_second_copy_does_not_count_against_a_healthy_first():
    # Every loss counted: a derivation with MAX_LOSSES - 1 losses behind it failed when its
    # speculative second copy was lost, and its healthy first copy was stopped with it.
    from offload.scheduler.run.endings import MAX_LOSSES

    plan, _, _, src = make_plan({"a": [], "long": []})
    second = asyncio.Event()

    async def on_fast(build: FakeBuild) -> BuildOutcome | None:
        if build.drv.name == "long":
            second.set()
            raise RuntimeError("killed")  # the second copy's session drops
        return None

    async def on_slow(build: FakeBuild) -> BuildOutcome | None:
        if build.drv.name == "long":
            await second.wait()
        return None

    members = [
        _member("fast", 4, 1, on_fast),
        _member("slow", 1, 1, on_slow),
    ]
    events: list[Event] = []
    executor = Executor(
        plan,
        members,
        FakeLink(FakeStore("local", [src])),
        emit=events.append,
        estimates={"a": 40, "long": 12},
    )
    long_drv = next(d for d in plan.order if plan.drvs[d].name == "long")
    executor._losses[long_drv] = MAX_LOSSES - 1
    report = asyncio.run(asyncio.wait_for(executor.run(), 10))
    assert report.ok, report.failed
    ended = [(e.name, e.machine, e.status) for e in events if isinstance(e, JobFinished)]
    assert ("long", "fast", "lost") in ended
    assert ("long", "slow", "built") in ended


def test_a_build_that_brings_its_builders_down_is_charged_when_another_notices():
    # crash brings down every builder it runs on, and innocent, beside it, is the build whose
    # session notices first. Only innocent was charged: crash went on from builder to builder
    # uncounted, until the last was backed off and the run stranded with nothing failed.
    plan, _, _, src = make_plan({"innocent": [], "crash": []})
    falls: list[str] = []

    def dying(name: str) -> object:
        crashing = asyncio.Event()

        async def build(build: FakeBuild) -> BuildOutcome | None:
            if build.drv.name == "crash":
                crashing.set()
                await asyncio.Event().wait()  # the machine goes down under it
            await crashing.wait()
            falls.append(name)
            raise RuntimeError("killed")  # innocent's session notices the fall first

        return build

    members = [_member(f"d{i}", 2 ** (4 - i), 2, dying(f"d{i}")) for i in range(4)]
    events: list[Event] = []
    executor = Executor(
        plan, members, FakeLink(FakeStore("local", [src])), emit=events.append,
        keep_going=True, estimates={"innocent": 40, "crash": 40},
    )  # fmt: skip
    # Before, crash went on to d3 alone, where (in this fake) nothing noticed: a guard.
    report = asyncio.run(asyncio.wait_for(executor.run(), 10))
    assert falls == ["d0", "d1", "d2"]  # each fall with both there; d3 never used
    ended = [(e.name, e.machine, e.status) for e in events if isinstance(e, JobFinished)]
    assert ended.count(("crash", "", "failed")) == 1
    assert ("innocent", "d2", "failed") in ended  # lost beside it three times: counted too
    assert (
        "lost with its machine 3 times, the last on d2: "
        in report.failed[next(d for d in plan.order if plan.drvs[d].name == "crash")]
    )
    assert _untold(events) == set()


def test_a_derivation_failed_for_its_losses_halts_what_was_to_start_with_it():
    # Without -k, a failed at its next placement (lost MAX_LOSSES times before) and the run
    # halted; b, placed in the same turn after it, started all the same and built to its end.
    from offload.scheduler.run.endings import MAX_LOSSES

    plan, _, _, src = make_plan({"a": [], "b": []})

    async def ok(build: FakeBuild) -> BuildOutcome | None:
        return None

    events: list[Event] = []
    executor = Executor(
        plan, [_member("m", 1, 2, ok)], FakeLink(FakeStore("local", [src])),
        emit=events.append, estimates={"a": 40, "b": 10},
    )  # fmt: skip
    executor._losses[next(d for d in plan.order if plan.drvs[d].name == "a")] = MAX_LOSSES
    report = asyncio.run(asyncio.wait_for(executor.run(), 10))
    assert list(report.failed) == [next(d for d in plan.order if plan.drvs[d].name == "a")]
    assert not [e for e in events if isinstance(e, JobPhase) and e.name == "b"]
    # b went back to the policy, never started: it was left RUNNING there with no copy.
    b = next(d for d in plan.order if plan.drvs[d].name == "b")
    assert executor.policy.graph.state(b) is JobState.READY


def test_a_copy_that_never_began_building_there_is_not_charged_for_the_fall():
    # dying has two slots but one session: b waits for it, connecting, as a's build brings
    # dying down. b never built there; it was charged a loss all the same.
    plan, _, _, src = make_plan({"a": [], "b": []})

    async def dying(build: FakeBuild) -> BuildOutcome | None:
        raise RuntimeError("killed")

    async def ok(build: FakeBuild) -> BuildOutcome | None:
        return None

    members = [
        PoolMember(spec("dying", speed=8, slots=2),
                   FakeLink(FakeStore("dying", builder=dying), max_sessions=1), remote=True),
        _member("ok", 1, 2, ok),
    ]  # fmt: skip
    events: list[Event] = []
    executor = Executor(
        plan, members, FakeLink(FakeStore("local", [src])), emit=events.append,
        estimates={"a": 40, "b": 40},
    )  # fmt: skip
    report = asyncio.run(asyncio.wait_for(executor.run(), 10))
    assert report.ok
    began = {e.name for e in events if isinstance(e, JobPhase) and e.machine == "dying"
             and e.phase == "building"}  # fmt: skip
    assert len(began) == 1
    (waited,) = {"a", "b"} - began
    drv = next(d for d in plan.order if plan.drvs[d].name == waited)
    assert executor._losses.get(drv, 0) == 0


def _member(name: str, speed: int, slots: int, builder: object) -> PoolMember:
    store = FakeStore(name, builder=builder)  # type: ignore[arg-type]
    return PoolMember(spec(name, speed=speed, slots=slots), FakeLink(store, falls=True), True)


def test_outputs_on_their_way_home_as_the_run_stops_end_that_copy_stopped():
    # Ctrl-C while a built output came home: the copy's last event was "fetching", it had no
    # end, and the report counted it built though its output was not here.
    plan, _, _, src = make_plan({"a": []})
    fetching = asyncio.Event()

    class HangingFetch(FakeLink):
        @override
        def session(self) -> contextlib.AbstractAsyncContextManager[Any]:
            return self._hanging()

        @contextlib.asynccontextmanager
        async def _hanging(self) -> AsyncIterator[Any]:
            fetching.set()
            await asyncio.Event().wait()
            yield

    local = FakeLink(FakeStore("local", [src]))
    members = [
        PoolMember(spec("r"), HangingFetch(FakeStore("r")), remote=True),
        PoolMember(spec("local", slots=0), local, remote=False),
    ]
    events: list[Event] = []
    executor = Executor(plan, members, local, emit=events.append)

    async def stopped() -> None:
        run = asyncio.create_task(executor.run())
        await fetching.wait()
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run

    asyncio.run(asyncio.wait_for(stopped(), 10))
    (ended,) = [e for e in events if isinstance(e, JobFinished)]
    assert (ended.name, ended.status) == ("a", "cancelled")
    assert ended.error is not None
    assert "before its outputs were brought home" in ended.error
    assert executor.report.built == []
    (last,) = [e for e in events if isinstance(e, RunFinished)]
    assert last.built == 0


def test_a_run_stranded_with_no_machine_left_does_not_say_it_finished():
    # Its one builder fell mid-run: the run stopped, "no machine can take them", and its last
    # event (the live view's last frame, the plain "run:" line) said "finished".
    from offload.errors import SchedulerError

    plan, _, _, src = make_plan({"a": []})

    async def dying(build: FakeBuild) -> BuildOutcome | None:
        raise RuntimeError("killed")

    events: list[Event] = []
    executor = Executor(
        plan, [_member("only", 1, 1, dying)], FakeLink(FakeStore("local", [src])),
        emit=events.append,
    )  # fmt: skip
    with pytest.raises(SchedulerError, match="no machine can take them"):
        asyncio.run(asyncio.wait_for(executor.run(), 10))
    (last,) = [e for e in events if isinstance(e, RunFinished)]
    assert last.interrupted
    assert events[-1] is last
