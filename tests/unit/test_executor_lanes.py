"""A build's upload over a second lane (``offload.protocol.lanes``) in the executor: a second
login that fails is said in the build's log and the copy goes over the one connection (in-memory
stores)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from offload.errors import SshError
from offload.protocol.serve import StoreClient
from offload.scheduler.run import Executor, PoolMember
from offload.scheduler.run import closure_copy as run_copy
from offload.transport.fake import FakeLink, FakeStore
from offload.ui.events import Event, JobLog
from tests.helpers.plans import finished, make_plan, spec


def test_a_second_login_that_fails_is_said_and_the_copy_takes_one_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(run_copy, "worth_lanes", lambda _infos: True)  # any upload would take one
    plan, _paths, _outs, src = make_plan({"a": []})
    local_store, fast = FakeStore("local", [src]), FakeStore("fast")
    tried: list[bool] = []

    @contextlib.asynccontextmanager
    async def refused() -> AsyncIterator[tuple[StoreClient, StoreClient]]:
        tried.append(True)
        raise SshError("cannot connect to builder 'fast': Permission denied")
        yield  # type: ignore[unreachable]

    member = PoolMember(spec("fast", slots=1), FakeLink(fast), remote=True, lane=refused)
    events: list[Event] = []
    executor = Executor(plan, [member], FakeLink(local_store), emit=events.append)
    report = asyncio.run(executor.run())
    assert report.ok, report.failed
    assert tried == [True]
    assert finished(events) == {"a": "fast"}
    assert src.path in fast.received  # over the run's own connection
    said = [e.line for e in events if isinstance(e, JobLog)]
    assert any("no second connection for this copy" in line for line in said), said
