"""``open_sessions`` stopped (Ctrl-C cancels the run) before its builders' sessions began to
open: nothing it made is left unawaited (Python said "RuntimeWarning: coroutine '_after' was
never awaited" on stderr after "error: interrupted")."""

from __future__ import annotations

import asyncio
import contextlib
import gc

import pytest

from offload.build.sessions import open_sessions
from offload.transport.fake import FakeLink, FakeStore


def test_a_run_cancelled_as_its_sessions_start_leaves_no_coroutine_unawaited() -> None:
    async def go() -> None:
        local, remote = FakeLink(FakeStore("local")), FakeLink(FakeStore("fast"))
        async with contextlib.AsyncExitStack() as stack:
            opening = asyncio.ensure_future(
                open_sessions(stack, local, {"fast": remote}, {}, [], grace=1.5, late={})
            )
            await asyncio.sleep(0)  # it waits for its sessions, none of which has begun
            opening.cancel()
            with pytest.raises(asyncio.CancelledError):
                await opening

    asyncio.run(go())
    gc.collect()  # a coroutine never awaited is said as it is collected
