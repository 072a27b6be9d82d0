"""A builder whose connection drops mid-run is reconnected at once (scheduler.run.reconnects).

Over fake builders: a session that hangs up leaves the builder reachable (a connection dropped
for a moment) unless its link ``falls`` (a host gone away: later sessions refused).
"""

from __future__ import annotations

import asyncio

import pytest

from offload.errors import SchedulerError
from offload.protocol.serve import BuildStatus
from offload.scheduler.run import Executor, PoolMember
from offload.transport.fake import BuildOutcome, FakeBuild, FakeLink, FakeStore
from offload.transport.fake.faults import Hangup
from offload.ui.events import Event, JobFinished, MachineEvent
from tests.helpers.plans import finished, make_plan, spec
from tests.helpers.plans import run_executor as run

RECONNECTED = "reconnected after its connection was lost"


def _machine_events(events: list[Event]) -> list[tuple[str, str, str]]:
    return [(e.machine, e.state, e.message) for e in events if isinstance(e, MachineEvent)]


def _fast_and_local(name: str, link: FakeLink, local: FakeLink) -> list[PoolMember]:
    """Builder ``name`` (speed 8) over ``link``, and the local machine (speed 1) over
    ``local``, one slot each."""
    return [
        PoolMember(spec(name, speed=8, slots=1), link, remote=True),
        PoolMember(spec("local", speed=1, slots=1), local, remote=False),
    ]


def _dropping(name: str, times: int) -> FakeStore:
    """A builder whose first ``times`` builds hang up their session without a word, as a
    connection that dropped (one where its Nix said why is no dropped connection)."""
    store = FakeStore(name)
    for _ in range(times):
        store.break_next("build-start")
    return store


def test_a_session_its_nix_ended_with_an_error_is_not_reconnected():
    # The builder's Nix said why it stopped (its own substituter down, say): reconnecting
    # would build there again into the same error.
    plan, _, _, src = make_plan({"a": []})

    async def stops(build: FakeBuild) -> BuildOutcome | None:
        raise Hangup("error: cannot connect to 'nobody@127.0.0.1'")

    local = FakeLink(FakeStore("local", [src]))
    said = FakeLink(FakeStore("said", builder=stops))
    members = _fast_and_local("said", said, local)
    report, events = run(plan, members, local)
    assert report.ok
    assert finished(events) == {"a": "local"}
    assert [(m, s) for m, s, _ in _machine_events(events)] == [("said", "down")]


def test_a_builder_whose_connection_dropped_takes_work_again_at_once():
    # The one builder (-j 0): backed off, it left nothing to build on and the run stranded.
    plan, _, outs, src = make_plan({"a": [], "b": ["a"]})
    local = FakeLink(FakeStore("local", [src]))
    flaky_store = _dropping("flaky", 1)
    flaky = FakeLink(flaky_store)
    report, events = run(plan, [PoolMember(spec("flaky", slots=1), flaky, remote=True)], local)
    assert report.ok, report.failed
    assert finished(events) == {"a": "flaky", "b": "flaky"}
    assert finished(events, "lost") == {"a": "flaky"}
    said = _machine_events(events)
    assert [(m, state) for m, state, _ in said] == [("flaky", "down"), ("flaky", "up")]
    assert said[1][2] == RECONNECTED
    # Its failure is kept against it in the run (failing again backs it off longer), but no
    # backoff outlives the run: it built since.
    assert report.health["flaky"] is None
    assert flaky_store.has(outs["b"])


def test_a_builder_that_went_away_stays_backed_off():
    plan, _, _, src = make_plan({"a": []})
    local_store = FakeStore("local", [src])
    local = FakeLink(local_store)
    gone = FakeLink(_dropping("gone", 1), falls=True)
    members = _fast_and_local("gone", gone, local)
    report, events = run(plan, members, local)
    assert report.ok
    assert finished(events) == {"a": "local"}
    assert [(m, state) for m, state, _ in _machine_events(events)] == [("gone", "down")]
    assert gone.sessions_refused >= 1  # the reconnect was tried, and refused
    health = report.health["gone"]
    assert health is not None
    assert health.failures == 1


def test_a_builder_whose_connections_keep_dropping_is_reconnected_once():
    # Dropped again right after its reconnect: backed off as before, and with no other
    # machine the run is stranded (what it built kept), as it was at the first drop before.
    plan, _, _, src = make_plan({"a": []})
    local = FakeLink(FakeStore("local", [src]))
    flaky = FakeLink(_dropping("flaky", 2))
    events: list[Event] = []
    members = [PoolMember(spec("flaky", slots=1), flaky, remote=True)]
    executor = Executor(plan, members, local, emit=events.append)
    with pytest.raises(SchedulerError):
        asyncio.run(executor.run())
    assert [(m, s) for m, s, _ in _machine_events(events)] == [
        ("flaky", "down"),
        ("flaky", "up"),
        ("flaky", "down"),
    ]
    lost = [e.machine for e in events if isinstance(e, JobFinished) and e.status == "lost"]
    assert lost == ["flaky", "flaky"]
    assert executor.report.stranded


def test_a_builder_whose_disk_filled_up_is_not_reconnected():
    # Nix answered there (no space left): the builder is not out of reach, it is full.
    plan, _, _, src = make_plan({"a": []})

    async def full(build: FakeBuild) -> BuildOutcome | None:
        return BuildOutcome(
            BuildStatus.TRANSIENT_FAILURE, "error: writing to file: No space left on device"
        )

    local = FakeLink(FakeStore("local", [src]))
    disk = FakeLink(FakeStore("disk", builder=full))
    members = _fast_and_local("disk", disk, local)
    events: list[Event] = []
    executor = Executor(plan, members, local, emit=events.append)
    report = asyncio.run(executor.run())
    assert report.ok
    assert finished(events) == {"a": "local"}
    assert [(m, s) for m, s, _ in _machine_events(events)] == [("disk", "down")]
