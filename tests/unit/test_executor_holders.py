"""Where outputs live: intermediate outputs stay on their builder, inputs move between builders
through the client, and outputs lost with their builder are built again (in-memory stores)."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from offload.errors import ProtocolError
from offload.protocol.serve import BuildStatus
from offload.scheduler.run import Executor, PoolMember
from offload.transport import fake
from offload.transport.fake import BuildOutcome, FakeBuild, FakeLink, FakeStore
from offload.typing_compat import override
from offload.ui.events import Event, JobFinished, JobPhase, MachineEvent
from tests.helpers.plans import finished, keeps_no_references, make_plan, spec


def store(name, *paths):
    return FakeStore(name, paths, builder=keeps_no_references)


def run(plan, members, local, home):
    events: list[Event] = []
    executor = Executor(plan, members, local, emit=events.append, home=home)
    return asyncio.run(executor.run()), events


def test_intermediate_outputs_stay_on_the_builder_and_requested_ones_come_home():
    plan, paths, outs, src = make_plan({"a": [], "b": ["a"], "c": ["b"]})
    local_store = store("local", src)
    fast = store("fast")
    members = [PoolMember(spec("fast", speed=4, slots=1), FakeLink(fast), remote=True)]
    report, events = run(plan, members, FakeLink(local_store), home={paths["c"]})
    assert report.ok
    assert fast.builds == [paths["a"], paths["b"], paths["c"]]
    assert local_store.has(outs["c"])
    assert not local_store.has(outs["a"])
    assert not local_store.has(outs["b"])
    received = {e.name: e.bytes_received for e in events if isinstance(e, JobFinished)}
    assert received["a"] == received["b"] == 0
    assert received["c"] > 0


def test_inputs_move_from_builder_to_builder_through_the_client():
    plan, paths, outs, src = make_plan({"a": [], "b": ["a"]}, features={"a": "x", "b": "y"})
    local_store = store("local", src)
    xbox, ybox = store("xbox"), store("ybox")
    members = [
        PoolMember(spec("xbox", slots=1, mandatory=("x",)), FakeLink(xbox), remote=True),
        PoolMember(spec("ybox", slots=1, mandatory=("y",)), FakeLink(ybox), remote=True),
    ]
    report, events = run(plan, members, FakeLink(local_store), home={paths["b"]})
    assert report.ok, report.failed
    assert finished(events) == {"a": "xbox", "b": "ybox"}
    assert outs["a"] in ybox.received  # straight from xbox's store...
    assert not local_store.has(outs["a"])  # ...without landing here
    assert local_store.has(outs["b"])


def test_a_local_build_fetches_its_input_from_the_builder_holding_it():
    plan, paths, outs, src = make_plan({"a": [], "b": ["a"]}, features={"a": "kvm"})
    local_store = store("local", src)
    local = FakeLink(local_store)
    kvm = store("kvmbox")
    members = [
        PoolMember(spec("local", slots=1), local, remote=False),
        PoolMember(spec("kvmbox", speed=9, slots=1, mandatory=("kvm",)), FakeLink(kvm), True),
    ]
    report, events = run(plan, members, local, home={paths["b"]})
    assert report.ok, report.failed
    assert finished(events) == {"a": "kvmbox", "b": "local"}
    assert outs["a"] in local_store.received


def test_outputs_lost_with_their_builder_are_built_again_where_needed():
    # a builds on fast (the fastest); b can only build on slow, so a's outputs must go there.
    plan, paths, outs, src = make_plan({"a": [], "b": ["a"]}, features={"b": "y"})
    local_store = store("local", src)
    fast, slow = store("fast"), store("slow")
    fast.break_next("dump")  # fast dies while a's output is being read from it
    members = [
        PoolMember(spec("fast", speed=8, slots=1), FakeLink(fast, falls=True), remote=True),
        PoolMember(spec("slow", speed=1, slots=1, supported=("y",)), FakeLink(slow), True),
    ]
    report, events = run(plan, members, FakeLink(local_store), home={paths["b"]})
    assert report.ok, report.failed
    assert fast.builds == [paths["a"]]
    assert slow.builds == [paths["a"], paths["b"]]  # a again, where its output is needed
    assert report.built.count(paths["a"]) == 1
    downs = [e.machine for e in events if isinstance(e, MachineEvent) and e.state == "down"]
    assert downs == ["fast"]
    stopped = [
        (e.name, e.machine, e.error)
        for e in events
        if isinstance(e, JobFinished) and e.status == "cancelled"
    ]
    # b gave way, and that is not counted against slow.
    assert stopped == [("b", "slow", "the holder of its inputs, fast, went away")]
    assert local_store.has(outs["b"])
    assert not local_store.has(outs["a"])


def test_of_two_equally_fast_builders_the_one_holding_the_inputs_gets_the_job():
    # Only q can build a; b could go to either, and p is listed first.
    plan, paths, _, src = make_plan({"a": [], "b": ["a"]}, features={"a": "x"})
    p, q = store("p"), store("q")
    members = [
        PoolMember(spec("p", speed=2, slots=1), FakeLink(p), remote=True),
        PoolMember(spec("q", speed=2, slots=1, supported=("x",)), FakeLink(q), remote=True),
    ]
    report, events = run(plan, members, FakeLink(store("local", src)), home={paths["b"]})
    assert report.ok, report.failed
    assert finished(events) == {"a": "q", "b": "q"}
    assert p.builds == []


def test_a_dependent_starts_before_its_input_has_come_home(monkeypatch):
    plan, paths, outs, src = make_plan({"a": [], "b": ["a"]})
    local_store = store("local", src)
    fast = store("fast")
    b_started = asyncio.Event()

    async def builder(build: FakeBuild) -> BuildOutcome:
        if build.drv.name == "b":
            b_started.set()
        return await keeps_no_references(build)

    fast.builder = builder
    register = fake._Server.register

    async def held_home(server, fp, expected=None):
        # a's output reaches the local store only once b has started on fast.
        # (Bounded, so a run that waits for a before starting b fails instead of hanging.)
        if server.store is local_store and fp.path == outs["a"]:
            await asyncio.wait_for(b_started.wait(), 10)
        await register(server, fp, expected)

    monkeypatch.setattr(fake._Server, "register", held_home)
    members = [PoolMember(spec("fast", speed=4, slots=1), FakeLink(fast), remote=True)]
    report, events = run(plan, members, FakeLink(local_store), home=None)
    assert report.ok, report.failed
    assert fast.builds == [paths["a"], paths["b"]]
    assert local_store.has(outs["a"])
    assert local_store.has(outs["b"])
    a_home = next(i for i, e in enumerate(events) if isinstance(e, JobFinished) and e.name == "a")
    b_building = next(
        i
        for i, e in enumerate(events)
        if isinstance(e, JobPhase) and e.name == "b" and e.phase == "building"
    )
    assert b_building < a_home


def test_outputs_lost_on_their_way_home_are_built_again():
    plan, paths, outs, src = make_plan({"a": []})
    local_store = store("local", src)
    fast, slow = store("fast"), store("slow")
    fast.break_next("dump")  # fast dies while a's output is on its way home
    members = [
        PoolMember(spec("fast", speed=8, slots=1), FakeLink(fast), remote=True),
        PoolMember(spec("slow", speed=1, slots=1), FakeLink(slow), remote=True),
    ]
    report, events = run(plan, members, FakeLink(local_store), home=None)
    assert report.ok, report.failed
    assert (fast.builds, slow.builds) == ([paths["a"]], [paths["a"]])
    ends = [(e.machine, e.status) for e in events if isinstance(e, JobFinished)]
    assert ends == [("fast", "lost"), ("slow", "built")]
    assert local_store.has(outs["a"])


class _FetchAcrossTheFall(FakeLink):
    """Its sessions (a fetch home) go on only once fast has been said down (``down``), and a
    while more where a dependent waits for them (``slow``: a large output still streaming);
    they fail unless the outputs ``arrives``. ``fetching`` is set as one begins."""

    def __init__(
        self,
        store: FakeStore,
        fetching: asyncio.Event,
        down: asyncio.Event,
        slow: bool,
        *,
        arrives: bool,
    ) -> None:
        super().__init__(store)
        self._fetching, self._down, self._slow, self._arrives = fetching, down, slow, arrives

    @override
    def session(self) -> contextlib.AbstractAsyncContextManager[Any]:
        return self._late()

    @contextlib.asynccontextmanager
    async def _late(self) -> AsyncIterator[Any]:
        self._fetching.set()
        await self._down.wait()
        await asyncio.sleep(0.2 if self._slow else 0)
        if not self._arrives:
            error = ProtocolError("fast: Connection to fast closed by remote host.")
            error.peer = "fast"
            raise error
        async with self._session() as client:
            yield client


@pytest.mark.parametrize(("dependent", "arrives"), [(False, True), (True, True), (True, False)])
def test_outputs_on_their_way_home_from_a_builder_backed_off_are_not_built_again(
    dependent: bool, arrives: bool
) -> None:
    # fast's disk fills up during k while a's outputs come home from it: a was undone and
    # built again on the local machine, though its fetch then arrived (two "built" events).
    # A dependent b, started meanwhile, found no store holding a's outputs, counted a loss
    # at each instant retry, and failed after three while they arrived a moment later; and
    # where the fetch failed after all, b counted a loss for having waited, beside the one
    # of its copy on fast.
    plan, paths, outs, src = make_plan({"a": [], "k": [], **({"b": ["a"]} if dependent else {})})
    fetching, fast_down = asyncio.Event(), asyncio.Event()

    async def on_fast(build: FakeBuild) -> BuildOutcome | None:
        if build.drv.name == "k":
            await fetching.wait()  # a is built, its outputs on their way home
            return BuildOutcome(
                BuildStatus.TRANSIENT_FAILURE, "error: writing to file: No space left on device"
            )
        return None

    def emit(event: Event) -> None:
        events.append(event)
        if isinstance(event, MachineEvent) and event.state == "down":
            fast_down.set()

    fast_store = FakeStore("fast", builder=on_fast)
    fast_link = _FetchAcrossTheFall(fast_store, fetching, fast_down, dependent, arrives=arrives)
    local_store = FakeStore("local", [src])
    local = FakeLink(local_store)
    members = [
        PoolMember(spec("fast", speed=4, slots=3), fast_link, remote=True),
        PoolMember(spec("local", speed=1, slots=2), local, remote=False),
    ]
    events: list[Event] = []
    estimates = {"a": 10, "k": 10, "b": 1}
    executor = Executor(plan, members, local, emit=emit, estimates=estimates)
    report = asyncio.run(asyncio.wait_for(executor.run(), 10))
    assert report.ok, report.failed
    built_a = [e.machine for e in events if isinstance(e, JobFinished) and e.name == "a"]
    assert built_a == (["fast"] if arrives else ["fast", "local"])
    assert (paths["a"] in local_store.builds) is not arrives
    if dependent:
        assert executor._losses.get(paths["b"], 0) <= 1  # lost with fast, if it was there
        assert local_store.has(outs["b"])
        ends_b = [e.status for e in events if isinstance(e, JobFinished) and e.name == "b"]
        assert "failed" not in ends_b


def test_outputs_a_builder_leaves_out_of_their_fetch_home_are_its_fault():
    # Fetched home, a builder that gave a closure without the outputs asked for (collected
    # since, or lying) made the fetch "succeed" with nothing copied: the run ended with the
    # output missing here. It is the builder's fault: it is said down, the output made here.
    plan, _, outs, src = make_plan({"a": []})

    class Leaving(FakeLink):
        """Its sessions (a fetch home) answer every closure with nothing."""

        @override
        def session(self) -> contextlib.AbstractAsyncContextManager[Any]:
            return self._leaving()

        @contextlib.asynccontextmanager
        async def _leaving(self) -> AsyncIterator[Any]:
            async with self._session() as client:

                async def nothing(_paths: object, **_: object) -> set[str]:
                    return set()

                client.query_closure = nothing  # type: ignore[method-assign,assignment]
                yield client

    local_store = FakeStore("local", [src])
    local = FakeLink(local_store)
    members = [
        PoolMember(spec("fast", speed=4, slots=1), Leaving(FakeStore("fast")), remote=True),
        PoolMember(spec("local", speed=1, slots=1), local, remote=False),
    ]
    events: list[Event] = []
    executor = Executor(plan, members, local, emit=events.append, estimates={"a": 10})
    report = asyncio.run(asyncio.wait_for(executor.run(), 10))
    assert report.ok
    assert local_store.has(outs["a"])
    ended = [(e.machine, e.status) for e in events if isinstance(e, JobFinished)]
    assert ended == [("fast", "lost"), ("local", "built")]
    (down,) = [e for e in events if isinstance(e, MachineEvent) and e.state == "down"]
    assert "does not hold" in down.message
