"""Builders that are not there when a run starts: left out with a word, or joining later.

A builder whose connect failed is told as a "down" machine event, in the words ``explain``
gives; one still connecting (its connect a task the run was handed) takes no work until the
task ends: then it is "up" and takes work, or "down" with why.
"""

import asyncio

import pytest

from offload.errors import SchedulerError, SshError
from offload.scheduler.run import Executor, PoolMember
from offload.transport.fake import FakeLink, FakeStore
from offload.ui.events import Event, JobFinished, JobPhase, MachineEvent, RunStarted
from tests.helpers.plans import make_plan, spec


def _explain(machine: str, error: str) -> str:
    return f"{machine} in words: {error}"


async def _run(joining_outcome: Exception | None = None, *, unreachable: bool = False):
    plan, _, _, src = make_plan({"a": [], "b": [], "c": []})
    local = FakeLink(FakeStore("local", [src]))
    fast = FakeLink(FakeStore("fast"))
    events: list[Event] = []
    local_busy = asyncio.Event()

    def emit(event: Event) -> None:
        events.append(event)
        if isinstance(event, JobPhase) and event.machine == "local":
            local_busy.set()

    async def connecting() -> None:
        await local_busy.wait()  # fast answers once local's one slot is taken
        if joining_outcome is not None:
            raise joining_outcome

    joining = asyncio.create_task(connecting())
    executor = Executor(
        plan,
        [
            PoolMember(spec("local", speed=1, slots=1), local, remote=False),
            PoolMember(spec("fast", speed=10, slots=2), fast, remote=True),
        ],
        local,
        emit=emit,
        unreachable={"fast": "ssh: Connection refused"} if unreachable else None,
        joining=None if unreachable else {"fast": joining},
        explain=_explain,
    )
    report = await executor.run()
    if unreachable:
        joining.cancel()
    return report, events


def _where(events: list[Event]) -> dict[str, str]:
    return {
        e.drv_path.rsplit("-", 1)[-1].removesuffix(".drv"): e.machine
        for e in events
        if isinstance(e, JobFinished) and e.status == "built"
    }


def _machines(events: list[Event]) -> list[tuple[str, str, str]]:
    return [(e.machine, e.state, e.message) for e in events if isinstance(e, MachineEvent)]


def test_a_builder_still_connecting_takes_work_once_it_answers():
    report, events = asyncio.run(_run())
    assert report.ok
    where = _where(events)
    assert sorted(where.values()) == ["fast", "fast", "local"], where
    assert [(m, s) for m, s, _ in _machines(events)] == [("fast", "up")]
    assert report.health == {"fast": None}
    # The run's first estimate counts it: three 10 s builds all on local said 30 s (a review).
    (started,) = [e for e in events if isinstance(e, RunStarted)]
    assert started.estimate < 10


def test_a_builder_whose_connect_fails_is_down_with_why():
    report, events = asyncio.run(_run(SshError("cannot connect: Connection timed out")))
    assert report.ok
    assert set(_where(events).values()) == {"local"}
    assert _machines(events) == [
        ("fast", "down", "fast in words: cannot connect: Connection timed out")
    ]
    health = report.health["fast"]
    assert health is not None
    assert health.failures == 1


def test_a_builder_unreachable_at_the_start_is_told_as_down():
    report, events = asyncio.run(_run(unreachable=True))
    assert report.ok
    assert set(_where(events).values()) == {"local"}
    assert _machines(events) == [("fast", "down", "fast in words: ssh: Connection refused")]


def _every_builder_down(
    *, features: dict[str, str] | None = None, keep_going: bool = False
) -> tuple[Executor, list[Event]]:
    """-j 0 and the one builder unreachable at the start: the executor and what it emits."""
    plan, _, _, src = make_plan({"a": []}, features=features)
    local = FakeLink(FakeStore("local", [src]))
    events: list[Event] = []
    executor = Executor(
        plan,
        [PoolMember(spec("fast"), FakeLink(FakeStore("fast")), remote=True)],  # -j 0
        local,
        emit=events.append,
        unreachable={"fast": "ssh: Connection refused"},
        explain=_explain,
        keep_going=keep_going,
    )
    return executor, events


def test_a_run_whose_every_machine_is_down_at_the_start_says_each_in_its_events():
    # The run never opens (one error line names the builder), and --json has it down all
    # the same, with why.
    executor, events = _every_builder_down()
    with pytest.raises(SchedulerError, match="no machine can take them"):
        asyncio.run(executor.run())
    assert _machines(events) == [("fast", "down", "fast in words: ssh: Connection refused")]
    assert all(isinstance(e, MachineEvent) for e in events)  # no RunStarted: it never opened


def test_a_run_that_goes_on_with_every_builder_down_tells_each_once():
    # -k and nothing any machine could build (a feature none has): the run opens and ends,
    # and the builder down is said once, after run_started (it was said twice: early too).
    executor, events = _every_builder_down(features={"a": "kvm"}, keep_going=True)
    report = asyncio.run(executor.run())
    assert not report.ok
    assert _machines(events) == [("fast", "down", "fast in words: ssh: Connection refused")]
    assert isinstance(events[0], RunStarted)
