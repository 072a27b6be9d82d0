"""Stopping tasks: every one has ended afterwards, and what it ended with is not lost.

The tasks here wait on events the test sets; nothing sleeps.
"""

from __future__ import annotations

import asyncio

import pytest

from offload.tasks import cancel_and_wait, stop


class Broken(Exception):
    pass


async def _forever(started: asyncio.Event) -> None:
    started.set()
    await asyncio.Event().wait()


async def _fails_when_cancelled(started: asyncio.Event) -> None:
    started.set()
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        raise Broken("cleanup failed") from None


async def _value() -> str:
    return "result"


def test_cancelled_tasks_end_and_only_real_errors_come_back():
    async def main() -> None:
        started = [asyncio.Event(), asyncio.Event()]
        running = asyncio.create_task(_forever(started[0]))
        broken = asyncio.create_task(_fails_when_cancelled(started[1]))
        finished = asyncio.create_task(_value())
        await asyncio.wait([finished])
        for event in started:  # both wait when the cancel comes
            await event.wait()
        errors = await cancel_and_wait([running, broken, finished])
        assert all(task.done() for task in (running, broken, finished))
        assert running.cancelled()
        assert finished.result() == "result"  # done before the cancel: its result is kept
        assert [type(error) for error in errors] == [Broken]

    asyncio.run(main())


def test_stop_raises_what_the_task_ended_with():
    async def main() -> None:
        started = asyncio.Event()
        broken = asyncio.create_task(_fails_when_cancelled(started))
        await started.wait()
        with pytest.raises(Broken):
            await stop(broken)
        # A plain cancellation raises nothing, even for a task that never ran.
        await stop(asyncio.create_task(_forever(asyncio.Event())))

    asyncio.run(main())


def test_a_stopper_cancelled_meanwhile_waits_for_its_tasks_then_is_cancelled():
    async def main() -> None:
        ended: list[str] = []
        cleaning, release = asyncio.Event(), asyncio.Event()

        async def slow_to_end() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cleaning.set()
                await release.wait()  # cleanup that takes a while
                raise
            finally:
                ended.append("worker")

        async def stopper_of(task: asyncio.Task[None]) -> None:
            try:
                await cancel_and_wait([task])
            finally:
                ended.append("stopper")

        worker = asyncio.create_task(slow_to_end())
        stopper = asyncio.create_task(stopper_of(worker))
        await cleaning.wait()
        stopper.cancel()  # the stopper's own caller gives up on it while the worker cleans up
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await stopper
        assert worker.cancelled()
        assert ended == ["worker", "stopper"]

    asyncio.run(main())
