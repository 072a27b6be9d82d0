"""The executor and builders full of other clients' builds, over the fake stores (no sleeps)."""

import asyncio

from offload.history.records import RunReport
from offload.protocol.serve import BuildStatus
from offload.scheduler.run import Executor, PoolMember
from offload.transport.fake import BuildOutcome, FakeBuild, FakeLink, FakeStore
from offload.ui.events import Event, JobFinished, JobPhase, MachineEvent
from offload.ui.summary import summarize
from tests.helpers.plans import finished, make_plan, spec


def run(plan, members, local):
    events: list[Event] = []
    executor = Executor(plan, members, local, emit=events.append)
    report = asyncio.run(executor.run())
    return report, events, executor


def notes(events, state):
    return [e.machine for e in events if isinstance(e, MachineEvent) and e.state == state]


def test_a_job_waiting_on_a_full_builder_moves_to_a_free_one_and_says_so():
    plan, _, outs, src = make_plan({"a": []})
    local_store = FakeStore("local", [src])
    local = FakeLink(local_store)
    full_store, twin_store = FakeStore("full"), FakeStore("twin")
    full = FakeLink(full_store)
    full.fill()
    members = [
        PoolMember(spec("local", speed=0.1, slots=1), local, remote=False),
        PoolMember(spec("full", speed=4, slots=1), full, remote=True),
        PoolMember(spec("twin", speed=4, slots=1), FakeLink(twin_store), remote=True),
    ]
    report, events, _ = run(plan, members, local)
    assert report.ok
    assert full.full_waits >= 1  # it went there first, and waited
    queued = [e.machine for e in events if isinstance(e, JobPhase) and e.phase == "queued"]
    assert queued == ["full"]
    assert finished(events) == {"a": "twin"}
    [moved] = [e for e in events if isinstance(e, JobFinished) and e.status == "cancelled"]
    assert moved.machine == "full"
    assert moved.error is not None
    assert "moved to twin" in moved.error
    assert notes(events, "full") == ["full"]
    assert [e.machine for e in summarize(events).full] == ["full"]
    assert not full_store.builds  # built once, on twin
    assert local_store.has(outs["a"])


def test_a_full_builder_is_probed_and_takes_work_again_once_a_slot_frees():
    # b can only build on "full"; a goes there first, moves to "twin", and frees "full" (the
    # other client's build ends) while it builds. The probe sees it, and b builds there.
    plan, _, outs, src = make_plan({"a": [], "b": ["a"]}, features={"b": "big"})
    full = FakeLink(FakeStore("full"))

    async def builder(build: FakeBuild) -> BuildOutcome | None:
        del build
        full.free()
        return None

    local = FakeLink(FakeStore("local", [src]))
    full.fill()
    members = [
        PoolMember(spec("local", speed=0.1, slots=1), local, remote=False),
        PoolMember(spec("full", speed=4, slots=1, supported=("big",)), full, remote=True),
        PoolMember(
            spec("twin", speed=4, slots=1),
            FakeLink(FakeStore("twin", builder=builder)),
            remote=True,
        ),
    ]
    report, events, executor = run(plan, members, local)
    assert report.ok
    assert finished(events) == {"a": "twin", "b": "full"}
    assert notes(events, "full") == ["full"]
    assert "full" in notes(events, "up")
    assert executor.policy.withheld("full") == 0
    assert local.store.has(outs["b"])


def test_a_run_whose_only_builder_is_full_waits_there_and_builds_once_it_frees():
    plan, _, outs, src = make_plan({"a": []})
    full = FakeLink(FakeStore("full"))
    full.fill()
    local = FakeLink(FakeStore("local", [src]))
    members = [
        PoolMember(spec("local", speed=1, slots=0), local, remote=False),
        PoolMember(spec("full", speed=1, slots=1), full, remote=True),
    ]

    async def main() -> tuple[RunReport, list[Event]]:
        events: list[Event] = []

        def emit(event: Event) -> None:
            events.append(event)
            if isinstance(event, JobPhase) and event.phase == "queued":
                full.free()  # the other client's build ends while this one waits

        executor = Executor(plan, members, local, emit=emit)
        return await executor.run(), events

    report, events = asyncio.run(main())
    assert report.ok
    assert finished(events) == {"a": "full"}
    assert not [e for e in events if isinstance(e, JobFinished) and e.status == "cancelled"]
    assert notes(events, "full") == ["full"]
    assert local.store.has(outs["a"])


def test_a_full_builder_backed_off_is_probed_no_more_nor_said_up():
    # Its probe outlived the backoff: the slot it then found free was said "up" (in --json,
    # the live view and the summary) while the builder was still backed off.
    from offload.scheduler.run.full import FullBuilders

    said: list[tuple[str, str]] = []

    class Policy:
        def on_machine_full(self, *_: object) -> bool:
            return False

    class Events:
        def machine_note(self, machine: str, state: str, _message: str) -> None:
            said.append((machine, state))

        def machine_up(self, machine: str, _message: str) -> None:
            said.append((machine, "up"))

    async def scenario() -> bool:
        builders = FullBuilders(Policy(), {}, Events(), clock=lambda: 0.0, poke=lambda: None)  # type: ignore[arg-type]
        builders.full("/nix/store/x.drv", "full")

        async def waiting() -> None:
            await asyncio.Event().wait()

        probe = asyncio.create_task(waiting())
        builders.probes[probe] = "full"
        builders.gone("full")
        await asyncio.wait([probe])
        builders._freed("full")
        return probe.cancelled()

    assert asyncio.run(scenario())
    assert said == [("full", "full")]


def test_a_run_halted_by_a_failure_does_not_wait_for_a_full_builder():
    # Without -k a failure halts the run; the probe of a builder full of other clients'
    # builds kept it open until one of theirs ended, however long (a guard of 10 s here).
    plan, _, _, src = make_plan(
        {"a": [], "c": ["a"], "d": ["c"], "bad": []}, features={"bad": "loc"}
    )
    moved = asyncio.Event()

    async def on_twin(build: FakeBuild) -> BuildOutcome | None:
        moved.set()
        return None

    async def on_local(build: FakeBuild) -> BuildOutcome | None:
        if build.drv.name == "bad":
            await moved.wait()
            return BuildOutcome(BuildStatus.PERMANENT_FAILURE, "builder for bad failed")
        return None

    full = FakeLink(FakeStore("full"))
    full.fill()  # every slot held by other clients, for as long as the test runs
    twin = FakeStore("twin", builder=on_twin)
    local = FakeLink(FakeStore("local", [src], builder=on_local))
    members = [
        PoolMember(spec("local", speed=0.1, slots=1, supported=("loc",)), local, remote=False),
        PoolMember(spec("full", speed=4, slots=1), full, remote=True),
        PoolMember(spec("twin", speed=4, slots=1), FakeLink(twin), remote=True),
    ]  # fmt: skip
    estimates = {"a": 10, "c": 100, "bad": 1}
    executor = Executor(plan, members, local, emit=lambda _: None, estimates=estimates)
    report = asyncio.run(asyncio.wait_for(executor.run(), 10))
    assert list(report.failed) == [next(d for d in plan.order if plan.drvs[d].name == "bad")]
