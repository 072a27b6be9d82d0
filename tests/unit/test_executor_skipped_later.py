"""A job whose input was built, lost with its builder and built again without success while the
job waited on a full builder: when its copy comes back, it is skipped, said as any skip (the
dependency that failed), with what follows it; the run ends (in-memory stores)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from offload.errors import SchedulerError
from offload.protocol.serve import BuildStatus
from offload.scheduler.run import Executor, PoolMember
from offload.transport.fake import BuildOutcome, FakeBuild, FakeLink, FakeStore
from offload.ui.events import Event, JobFinished, MachineEvent
from tests.helpers.plans import keeps_no_references, make_plan, spec


def _scene(
    on_failed: Callable[[FakeLink], None], events: list[Event]
) -> tuple[Executor, dict[str, str]]:
    """a, b (only slow builds it), c after b: a is built on fast, which dies as a's output
    is fetched home; a is built again here and fails, while b's copy waits on slow's slots,
    held by others. ``on_failed(slow's link)`` when that failure is told."""
    plan, paths, _outs, src = make_plan({"a": [], "b": ["a"], "c": ["b"]}, features={"b": "y"})

    async def fails(build: FakeBuild) -> BuildOutcome:
        return BuildOutcome(BuildStatus.PERMANENT_FAILURE, "builder for a failed")

    fast = FakeStore("fast", builder=keeps_no_references)
    fast.break_next("dump")
    slow_link = FakeLink(FakeStore("slow", builder=keeps_no_references))
    slow_link.fill()
    local = FakeLink(FakeStore("local", [src], builder=fails))
    members = [
        PoolMember(spec("local", slots=1), local, remote=False),
        PoolMember(spec("fast", speed=8, slots=1), FakeLink(fast), remote=True),
        PoolMember(spec("slow", speed=1, slots=1, supported=("y",)), slow_link, True),
    ]

    def emit(event: Event) -> None:
        events.append(event)
        if isinstance(event, JobFinished) and event.status == "failed":
            on_failed(slow_link)

    executor = Executor(plan, members, local, emit=emit, keep_going=True, home={paths["a"]})
    return executor, paths


def test_a_job_back_after_its_rebuilt_input_failed_is_skipped_and_the_run_ends() -> None:
    events: list[Event] = []
    executor, paths = _scene(FakeLink.free, events)  # b's copy goes on, with a nowhere
    # b was put back to wait for a for ever: the run ended "2 derivation(s) could not be
    # built: no machine can take them".
    report = asyncio.run(asyncio.wait_for(executor.run(), 10))
    said = [(e.name, e.status, e.error) for e in events if isinstance(e, JobFinished)]
    assert paths["a"] in report.failed
    assert sorted(report.skipped) == sorted([paths["b"], paths["c"]])
    why = f"dependency {paths['a']} failed"  # as a skip after a failure says it
    assert said[-2:] == [("b", "skipped", why), ("c", "skipped", why)]


def test_a_copy_lost_with_its_builder_is_said_before_the_skips_its_fall_makes() -> None:
    # b's copy is lost with slow as the failed rebuild of a comes back. The skip of b came
    # before its own lost copy in --json, and before slow's fall.
    def lost(slow: FakeLink) -> None:
        slow.go_down()  # b's waiting copy fails to connect: slow is lost
        slow.free()

    events: list[Event] = []
    executor, _paths = _scene(lost, events)
    with contextlib.suppress(SchedulerError):  # slow, the one that could build b, is down
        asyncio.run(asyncio.wait_for(executor.run(), 10))
    told = [
        (e.name, e.status) if isinstance(e, JobFinished) else (e.machine, e.state)
        for e in events
        if (isinstance(e, JobFinished) and e.name in {"b", "c"})
        or (isinstance(e, MachineEvent) and e.machine == "slow")
    ]
    assert told == [
        ("slow", "full"),  # b's copy waits for a slot there
        ("b", "lost"),
        ("slow", "down"),
        ("b", "skipped"),
        ("c", "skipped"),
    ]
