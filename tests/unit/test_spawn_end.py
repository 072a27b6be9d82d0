"""How ``process.spawn`` ends a child whose output another task still reads, or nobody read
(real processes)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from offload.process import spawn, stop_now


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


# Over twice spawn's reader limit of 1 MiB (where asyncio stops reading a stdout nobody reads),
# by less than the smallest pipe buffer: the child writes it all before anything is read.
OVER_LIMIT = 2 * 1024 * 1024 + 1024


@pytest.mark.parametrize("at_once", [True, False], ids=["stop_now", "sigterm"])
def test_a_child_whose_output_was_left_unread_ends_without_waiting_its_grace(
    at_once: bool,
) -> None:
    # A session cut off mid-transfer (Ctrl-C during a fetch home): its stdout holds more than
    # asyncio reads ahead, so the pipe's end is never seen, and asyncio's wait() for a child
    # whose exit it had not seen yet returned only with it: the 3 s grace went by (3.3 s in CI).
    async def go() -> float:
        written = f"head -c {OVER_LIMIT} /dev/zero; echo written >&2; exec sleep 30"
        # A grace far longer than any wait here, so that waiting it out cannot pass for load.
        async with spawn(["sh", "-c", written], grace=30.0) as proc:
            assert proc.stderr is not None
            assert await proc.stderr.readline() == b"written\n"
            if at_once:
                stop_now(proc)
            stopped = time.monotonic()
        assert proc.returncode == (-signal.SIGKILL if at_once else -signal.SIGTERM)
        return time.monotonic() - stopped

    assert asyncio.run(go()) < 10
