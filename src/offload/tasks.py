"""Stopping the asyncio tasks offload starts, without losing how they ended.

A task is stopped by cancelling it and waiting until it has ended; afterwards every one is done
(asserted), and how each ended is looked at: its cancellation is the expected end, and any other
exception is handed back (``cancel_and_wait``) or raised (``stop``) for the caller to report,
never dropped. ``suppress(CancelledError)`` around ``await task`` did drop one thing: a
cancellation of the caller itself while it waited. Here a caller cancelled meanwhile still waits
for its tasks to end (they are cancelled already, so they end soon), then raises its own
cancellation, so no task outlives the call that stops it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["cancel_and_wait", "stop", "wait_all"]


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> list[BaseException]:
    """Cancel ``tasks``, wait until all have ended, and return the exceptions they ended with
    other than their cancellation (a task done before it could be cancelled keeps its result)."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    return await wait_all(tasks)


async def wait_all(tasks: Iterable[asyncio.Task[Any]]) -> list[BaseException]:
    """Wait until all of ``tasks`` have ended, even if the caller is cancelled meanwhile (its
    cancellation is raised after), and return the exceptions they ended with other than their
    cancellation."""
    tasks = list(tasks)
    interrupted: asyncio.CancelledError | None = None
    while not all(task.done() for task in tasks):
        try:
            await asyncio.wait(tasks)
        except asyncio.CancelledError as exc:
            interrupted = exc
    if interrupted is not None:
        raise interrupted
    return [error for task in tasks if (error := _ended_with(task)) is not None]


async def stop(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended; raises what it ended with, if that was an
    exception other than its cancellation."""
    for error in await cancel_and_wait([task]):
        raise error


def _ended_with(task: asyncio.Task[Any]) -> BaseException | None:
    assert task.done(), f"{task.get_name()} still running after it was stopped"
    return None if task.cancelled() else task.exception()
