"""A builder falling while its work is still settling: outputs on their way home, a fetch home
that fails while another builder holds a copy, and copies that had already ended when the fall
is said. Over the in-memory stores of ``offload.transport.fake``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from offload.build.graph import DrvGraph
from offload.build.prebuilt import FetchFailed, fetch_existing
from offload.errors import ProtocolError, SchedulerError
from offload.protocol.serve import BuildStatus
from offload.scheduler.run import Executor, PoolMember, stopping
from offload.scheduler.run.copy import BuildCopies
from offload.scheduler.run.outcome import Outcome
from offload.transport.fake import BuildOutcome, FakeBuild, FakeLink, FakePath, FakeStore
from offload.ui.events import Event, JobFinished, MachineEvent, RunFinished
from tests.helpers.plans import keeps_no_references, make_plan, spec


def _fast_and_local(
    fast: FakeStore, local: FakeLink, *, slots: int = 2, local_slots: int = 2
) -> list[PoolMember]:
    """A builder fast (speed 4) over ``fast``, and the local machine over ``local``."""
    return [
        PoolMember(spec("fast", speed=4, slots=slots), FakeLink(fast), remote=True),
        PoolMember(spec("local", speed=1, slots=local_slots), local, remote=False),
    ]


def _together() -> Callable[[FakeBuild], Awaitable[None]]:
    """A wait that lets each build go on once two have started (both on fast at once)."""
    gate = asyncio.Event()
    started: list[str] = []

    async def wait(build: FakeBuild) -> None:
        started.append(build.drv.name)
        if len(started) == 2:
            gate.set()
        await gate.wait()

    return wait


def _ends(events: list[Event], name: str) -> list[tuple[str, str]]:
    return [(e.machine, e.status) for e in events if isinstance(e, JobFinished) and e.name == name]


@pytest.mark.parametrize("dependent_on", ["other", "local"])
def test_an_output_whose_fetch_home_fails_comes_from_the_store_it_was_sent_to(
    monkeypatch: pytest.MonkeyPatch, dependent_on: str
) -> None:
    # a is built on fast and sent to b's machine; fast drops while a comes home. a's outputs
    # were left on other: the run said ok, and a's were not here (nor its hook run). Sent
    # to this host's store for a local b, they are home: nothing is fetched, the hook runs.
    plan, paths, outs, src = make_plan({"a": [], "b": ["a"]}, features={"b": "big"})
    b_building = asyncio.Event()

    async def slow_b(build: FakeBuild) -> BuildOutcome:
        if build.drv.name == "b":
            b_building.set()
            await asyncio.sleep(0.2)
        return await keeps_no_references(build)

    fetch = BuildCopies._fetch

    async def failing_on_fast(self: BuildCopies, machine: str, paths: Any) -> Any:
        if machine == "fast" and outs["a"] in paths:
            await b_building.wait()
            error = ProtocolError("fast: Connection to fast closed by remote host.")
            error.peer = "fast"
            raise error
        return await fetch(self, machine, paths)

    hooked: list[str] = []

    async def hook(drv_path: str, outputs: Any, said: Any) -> None:
        hooked.append(drv_path)

    monkeypatch.setattr(BuildCopies, "_fetch", failing_on_fast)
    fast_store = FakeStore("fast", builder=keeps_no_references)
    other_store = FakeStore("other", builder=slow_b)
    local_store = FakeStore("local", [src], builder=slow_b)
    local = FakeLink(local_store)
    big = ("big",)
    members = [
        PoolMember(spec("fast", speed=8, slots=1), FakeLink(fast_store), remote=True),
        PoolMember(spec("other", speed=4, slots=1, supported=big if dependent_on == "other"
                        else ()), FakeLink(other_store), remote=True),
        PoolMember(spec("local", speed=1, slots=1, supported=big if dependent_on == "local"
                        else ()), local, remote=False),
    ]  # fmt: skip
    events: list[Event] = []
    executor = Executor(
        plan, members, local, emit=events.append, home=None, estimates={"a": 1, "b": 10},
        after_home=hook,
    )  # fmt: skip
    asyncio.run(asyncio.wait_for(executor.run(), 20))
    assert executor.report.ok, executor.report.failed
    assert local_store.has(outs["a"])
    assert local_store.has(outs["b"])
    assert fast_store.builds.count(paths["a"]) == 1  # not built again
    assert paths["a"] in hooked
    assert _ends(events, "a") == [("fast", "built")]
    assert [e.machine for e in events if isinstance(e, MachineEvent) and e.state == "down"] == [
        "fast"
    ]


def test_a_build_that_failed_before_its_machine_fell_stays_failed() -> None:
    # x failed for real on fast in the same turn as y's disk-full loss took fast down: x was
    # said lost with its machine and built again on local (a failed build is final).
    plan, paths, _, src = make_plan({"y": [], "x": []})
    together = _together()

    async def on_fast(build: FakeBuild) -> BuildOutcome | None:
        await together(build)
        if build.drv.name == "y":
            return BuildOutcome(BuildStatus.TRANSIENT_FAILURE, "error: No space left on device")
        return BuildOutcome(BuildStatus.PERMANENT_FAILURE, "builder for x failed with exit code 1")

    fast_store = FakeStore("fast", builder=on_fast)
    local_store = FakeStore("local", [src])
    local = FakeLink(local_store)
    members = _fast_and_local(fast_store, local)
    events: list[Event] = []
    executor = Executor(
        plan, members, local, emit=events.append, keep_going=True, estimates={"y": 10, "x": 10}
    )
    asyncio.run(asyncio.wait_for(executor.run(), 20))
    assert list(executor.report.failed) == [paths["x"]]
    assert _ends(events, "x") == [("fast", "failed")]
    assert paths["x"] not in local_store.builds
    assert paths["y"] in local_store.builds  # the loss went elsewhere, as losses do


def test_a_fetch_of_existing_outputs_cut_off_says_what_it_was_writing() -> None:
    # The run reads the graph again without the builder; what the copy was writing here is
    # deleted then (build.run._existing): it stayed half-written until a garbage collection.
    plan, paths, outs, src = make_plan({"a": []})
    fast_store = FakeStore("fast", [FakePath.from_text(outs["a"], "a\n")])
    fast_store.break_next("dump", message="Connection to fast closed by remote host.")
    local_store = FakeStore("local", [src])
    graph = DrvGraph(
        drvs=dict(plan.drvs), wanted={paths["a"]: {"out"}}, order=[], fetch={paths["a"]: "fast"}
    )

    async def fetch() -> None:
        async with FakeLink(fast_store).session() as there, FakeLink(local_store).session() as here:
            await fetch_existing(
                graph, {"fast": there}, here, lambda _: None, plan.drvs.__getitem__
            )

    with pytest.raises(FetchFailed) as failed:
        asyncio.run(asyncio.wait_for(fetch(), 20))
    assert failed.value.machine == "fast"
    assert failed.value.down
    assert failed.value.partial == (outs["a"],)
    assert not local_store.has(outs["a"])


def test_a_bug_in_a_copy_said_lost_with_its_machine_is_logged_not_dropped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A copy turns every fault into its Outcome; an exception is a bug, and one whose copy
    # was said lost with its machine (y's loss, settled first in the same turn) vanished.
    plan, paths, _, src = make_plan({"y": [], "x": []})
    gate = asyncio.Event()
    build = BuildCopies.build

    async def on_fast(self: BuildCopies, drv_path: str, member: PoolMember, **kw: Any) -> Any:
        if member.spec.name != "fast":
            return await build(self, drv_path, member, **kw)
        if drv_path == paths["y"]:
            gate.set()
            return Outcome("lost", "connection lost", 0.0, 0, 0)
        await gate.wait()
        raise RuntimeError("a bug")

    monkeypatch.setattr(BuildCopies, "build", on_fast)
    local = FakeLink(FakeStore("local", [src]))
    members = [
        PoolMember(spec("fast", speed=4, slots=2), FakeLink(FakeStore("fast")), remote=True),
        PoolMember(spec("local", speed=1, slots=2), local, remote=False),
    ]
    # y's longer path starts it first: its loss is settled first.
    executor = Executor(plan, members, local, emit=lambda _: None, estimates={"y": 20, "x": 10})
    with caplog.at_level("ERROR", logger="offload.scheduler.run.executor"):
        asyncio.run(asyncio.wait_for(executor.run(), 20))
    assert any("a bug" in repr(r.exc_info) for r in caplog.records), caplog.records


def _stopped_as_x_ends(monkeypatch: pytest.MonkeyPatch) -> tuple[Executor, FakeStore, list[Event]]:
    """A run of one build, x, on this machine, stopped (as by Ctrl-C) the moment x's copy
    ends, before the loop sees it end; the run's stop (CancelledError) is let through."""
    plan, _, _, src = make_plan({"x": []})
    build = BuildCopies.build
    run: list[asyncio.Task[Any]] = []

    async def stopped_as_it_ends(
        self: BuildCopies, drv_path: str, member: PoolMember, **kw: Any
    ) -> Any:
        outcome = await build(self, drv_path, member, **kw)
        run[0].cancel()
        return outcome

    monkeypatch.setattr(BuildCopies, "build", stopped_as_it_ends)
    local_store = FakeStore("local", [src], builder=keeps_no_references)
    local = FakeLink(local_store)
    members = [PoolMember(spec("local", speed=1, slots=1), local, remote=False)]
    events: list[Event] = []
    executor = Executor(plan, members, local, emit=events.append)

    async def main() -> None:
        run.append(asyncio.create_task(executor.run()))
        await run[0]

    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(asyncio.wait_for(main(), 20))
    return executor, local_store, events


def test_a_build_that_ended_as_the_run_was_stopped_is_kept_as_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # It was said stopped, and the run's report and history left out a build that was made
    # and is valid here.
    executor, local_store, events = _stopped_as_x_ends(monkeypatch)
    assert executor.report.interrupted
    (x,) = executor.policy.graph.jobs()
    assert local_store.has(executor.plan.outputs[x.id][0])
    assert executor.report.built == [x.id]
    assert _ends(events, "x") == [("local", "built")]


def test_a_bug_settling_an_ended_copy_at_the_stop_does_not_replace_the_stop(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The stop settles ended copies in run()'s finally: a bug there replaced the run's own
    # end (Ctrl-C's) and left the other copies unstopped. Logged, and the stop goes on.
    def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("a bug in the ending")

    monkeypatch.setattr(Executor, "_built", broken)
    with caplog.at_level("ERROR", logger="offload.scheduler.run.executor"):
        executor, _, _ = _stopped_as_x_ends(monkeypatch)  # a RuntimeError would come out
    assert executor.report.interrupted
    assert any("a bug in the ending" in repr(r.exc_info) for r in caplog.records)


def test_a_stop_that_waits_on_a_builder_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    # A builder that no longer answers holds its builds' kill until ssh gives it up (about
    # 15 s): the run's stop waited that long without a word, a Ctrl-C seemingly ignored.
    monkeypatch.setattr(stopping, "STOP_NOTICE", 0.0)
    plan, _, _, src = make_plan({"x": []})
    said = asyncio.Event()
    building = asyncio.Event()

    async def hung(build: FakeBuild) -> BuildOutcome | None:
        building.set()
        await asyncio.Event().wait()  # never ends: the builder stopped answering
        return None

    async def slow_stop(self: BuildCopies, member: PoolMember, client: Any, drv: Any) -> None:
        await said.wait()  # the kill waits on the silent builder, until the notice is out

    monkeypatch.setattr(BuildCopies, "_stop", slow_stop)
    events: list[Event] = []

    def emit(event: Event) -> None:
        events.append(event)
        if isinstance(event, MachineEvent) and event.state == "slow":
            said.set()

    local = FakeLink(FakeStore("local", [src]))
    members = [
        PoolMember(spec("fast", 4, 1), FakeLink(FakeStore("fast", builder=hung)), remote=True)
    ]
    executor = Executor(plan, members, local, emit=emit)

    async def main() -> None:
        run = asyncio.create_task(executor.run())
        await building.wait()
        run.cancel()  # Ctrl-C
        with contextlib.suppress(asyncio.CancelledError):
            await run

    asyncio.run(asyncio.wait_for(main(), 20))
    notes = [(e.machine, e.message) for e in events if isinstance(e, MachineEvent)]
    assert notes == [("fast", "its builds are being stopped: it has not answered yet")]


def test_a_copy_lost_with_its_machine_is_not_said_in_the_words_of_another_build() -> None:
    # y's session noticed fast's fall "during BuildDerivation of ...-y.drv"; x, building there
    # too, was said lost with those words, which read as x's own.
    plan, paths, _, src = make_plan({"y": [], "x": []})
    together = _together()

    async def on_fast(build: FakeBuild) -> BuildOutcome | None:
        await together(build)
        if build.drv.name == "y":
            fast_store.break_next("build-end", message="Connection to fast closed.")
        else:
            await asyncio.sleep(5)
        return await keeps_no_references(build)

    fast_store = FakeStore("fast", builder=on_fast)
    local_store = FakeStore("local", [src])
    local = FakeLink(local_store)
    members = _fast_and_local(fast_store, local)
    events: list[Event] = []
    executor = Executor(plan, members, local, emit=events.append, estimates={"y": 9, "x": 9})
    asyncio.run(asyncio.wait_for(executor.run(), 20))
    lost = {
        e.name: e.error or "" for e in events if isinstance(e, JobFinished) and e.status == "lost"
    }
    first, other = ("y", "x") if "during" in lost["y"] else ("x", "y")
    assert f"-{first}.drv" in lost[first]
    assert lost[other].startswith("lost with fast, which fell under another build: "), lost
    assert lost[other].endswith(lost[first])
    assert paths["x"] in local_store.builds
    assert paths["y"] in local_store.builds


def test_a_build_whose_outputs_fell_with_its_machine_is_not_counted_built() -> None:
    # a built on fast, its output kept there for b; fast's disk filled building b, and a was
    # to be made again: the run said "1 built, 1 left", then "2 derivation(s) could not be
    # built" (tester: a fixed-output derivation built on a builder backed off after it).
    plan, paths, _, src = make_plan({"a": [], "b": ["a"]})

    async def on_fast(build: FakeBuild) -> BuildOutcome | None:
        if build.drv.name == "b":  # a fall no reconnect mends
            return BuildOutcome(BuildStatus.TRANSIENT_FAILURE, "error: No space left on device")
        return await keeps_no_references(build)

    fast_store = FakeStore("fast", builder=on_fast)
    local_store = FakeStore("local", [src])
    local = FakeLink(local_store)
    members = _fast_and_local(fast_store, local, slots=1, local_slots=0)
    events: list[Event] = []
    executor = Executor(
        plan, members, local, emit=events.append, home=[paths["b"]], estimates={"a": 1, "b": 1}
    )
    with pytest.raises(SchedulerError, match=r"^2 derivation"):
        asyncio.run(asyncio.wait_for(executor.run(), 20))
    assert paths["a"] in fast_store.builds
    assert executor.report.built == []
    (finished,) = [e for e in events if isinstance(e, RunFinished)]
    assert (finished.built, finished.incomplete) == (0, True)
