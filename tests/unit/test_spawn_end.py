"""How ``process.spawn`` ends a child whose output another task still reads (real processes)."""

from __future__ import annotations

import asyncio
import os
import signal

from offload.process import spawn


def test_a_child_read_by_another_task_ends_without_a_runtime_error() -> None:
    # The ssh master's reader task reads the same stdout: draining it as well raised
    # "read() called while another coroutine is already waiting". The child's own child keeps
    # the pipe open, so the reader is surely still waiting when spawn ends.
    async def go() -> bytes:
        async with spawn(["sh", "-c", "sleep 30 & exit 0"]) as proc:
            assert proc.stdout is not None
            reader = asyncio.ensure_future(proc.stdout.read())
            while proc.returncode is None:  # exited, its pipe still open
                await asyncio.sleep(0.01)
        assert not reader.done()
        os.killpg(proc.pid, signal.SIGKILL)  # the child's own child: the pipe ends with it
        return await asyncio.wait_for(reader, 10)

    assert asyncio.run(go()) == b""
