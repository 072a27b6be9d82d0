"""This host's own faults in a run (in-memory stores): a program it could not start for a
builder's copy (EMFILE, EAGAIN) is neither the builder's fault nor the derivation's, and an
output the local store refused to take home is no derivation built for the run."""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import AsyncIterator, Callable

from offload.protocol.serve import StoreClient
from offload.scheduler.run import Executor, PoolMember
from offload.spawn_errors import not_started
from offload.transport.fake import FakeLink, FakeStore
from offload.typing_compat import override
from offload.ui.events import Event, JobFinished, MachineEvent
from tests.helpers.plans import make_plan, spec


class _NoSpawnOnce(FakeLink):
    """A builder whose first build session's ssh could not be started here (EMFILE)."""

    refused = False

    @override
    @contextlib.asynccontextmanager
    async def build_session(
        self, *, on_wait: Callable[[], None] | None = None, fresh: bool = False
    ) -> AsyncIterator[StoreClient]:
        if not self.refused:
            self.refused = True
            raise not_started(["ssh", "fast"], OSError(errno.EMFILE, "Too many open files"))
        async with super().build_session(on_wait=on_wait, fresh=fresh) as client:
            yield client


def test_a_program_not_started_here_is_tried_again_and_blames_no_one() -> None:
    # It failed the derivation (its dependents skipped, the run halted): the error named
    # this host, which the copy took for the local store refusing it.
    plan, _paths, _outs, src = make_plan({"a": [], "b": ["a"]})
    local = FakeLink(FakeStore("local", [src]))
    fast = _NoSpawnOnce(FakeStore("fast"))
    members = [PoolMember(spec("fast", speed=10, slots=1), fast, remote=True)]
    events: list[Event] = []
    report = asyncio.run(Executor(plan, members, local, emit=events.append).run())
    assert report.ok
    assert fast.refused
    assert not [e for e in events if isinstance(e, MachineEvent) and e.state == "down"]
    assert report.health == {"fast": None}
    ended = [(e.name, e.status) for e in events if isinstance(e, JobFinished)]
    assert ended == [("a", "cancelled"), ("a", "built"), ("b", "built")]


def test_an_output_the_local_store_refused_is_not_counted_built() -> None:
    # "1 built, 1 failed" for one derivation: listed built before its fetch home.
    plan, paths, outs, src = make_plan({"a": []})
    local_store = FakeStore("local", [src])
    local = FakeLink(local_store)
    members = [PoolMember(spec("fast", speed=10, slots=1), FakeLink(FakeStore("fast")), True)]
    local.break_next("add-to-store", message="error: cannot import: disk full")
    executor = Executor(plan, members, local, emit=lambda _event: None, home=[paths["a"]])
    report = asyncio.run(executor.run())
    assert list(report.failed) == [paths["a"]]
    assert report.built == []
    assert not local_store.has(outs["a"])
