"""Stopping an executor's copies: one the policy let go, a losing one, all of them at the end.

A mixin of ``Executor``'s (its task tables are the executor's own): a copy is stopped by
cancelling its task, which stops its remote build (``copy``); the loop settles the task when
it ends, and the executor says why it was stopped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from offload.errors import OffloadError
from offload.scheduler.policy import Cancel
from offload.scheduler.run.copy import Outcome
from offload.scheduler.run.events import RunEvents
from offload.scheduler.run.full import FullBuilders
from offload.tasks import cancel_and_wait

__all__ = ["Stopping"]

logger = logging.getLogger("offload.scheduler.run.executor")


class Stopping:
    """The executor's copies, and how they are stopped."""

    _tasks: dict[asyncio.Task[Outcome], tuple[str, str]]
    _since: dict[asyncio.Task[Outcome], float]  # when each copy started (wall clock)
    _homeward: dict[asyncio.Task[int], tuple[str, str, Outcome]]
    _joining: dict[asyncio.Task[None], str]
    _full: FullBuilders
    _events: RunEvents
    _stopping: bool
    wall: Callable[[], float]
    # Copies stopped because a build failed without keep-going (``_halt``).
    _halted: set[asyncio.Task[Outcome]]

    def _halt(self) -> None:
        """A build failed and the run does not keep going: nothing new starts, and the builds
        still running stop, as Nix stops its other goals then (waiting, maybe hours, for
        builds whose outputs the failed run will not use helps no one)."""
        self._stopping = True
        for task in self._tasks:
            if not task.done():
                task.cancel()
                self._halted.add(task)

    def _halted_copy(self, drv_path: str, machine: str, started: float) -> None:
        """Say that a copy halted (``_halt``) has stopped; ``started``: when it started."""
        error = "stopped: another build failed (no --keep-going)"
        self._events.finished(drv_path, machine, "cancelled", started=started, error=error)

    def _stop_copy(self, drv_path: str, machine: str, why: str) -> None:
        """Stop the copy of ``drv_path`` waiting on ``machine``, which the policy has let go;
        it has not started building, so nothing is built twice."""
        for task, entry in self._tasks.items():
            if entry == (drv_path, machine):
                task.cancel()
        error = f"{why} on {machine} by other clients"
        self._events.finished(drv_path, machine, "cancelled", started=self.wall(), error=error)

    def _cancel(self, cancel: Cancel) -> None:
        """Stop a losing copy without waiting for it: stopping its remote build takes until a
        builder that stopped answering is given up on, and the loop must go on meanwhile (that
        builder's other builds are lost). The loop settles the task when it ends."""
        for task, (drv_path, machine) in self._tasks.items():
            if drv_path == cancel.job and machine == cancel.machine:
                task.cancel()

    async def _stop_all(self) -> None:
        """Stop the copies still running: only a run ending early (interrupted, or an error
        of its own) has any. Their errors are logged, not raised: the run's own is the one
        to report, and this must not replace it."""
        tasks: list[asyncio.Task[Any]] = [
            *self._tasks, *self._homeward, *self._joining, *self._full.probes
        ]  # fmt: skip
        for error in await cancel_and_wait(tasks):
            # A copy home that lost its builder, as the run stopped, is no news; others are bugs.
            level = logging.DEBUG if isinstance(error, OffloadError) else logging.ERROR
            logger.log(
                level, "a build copy ended with %r as the run stopped", error, exc_info=error
            )
        self._tasks.clear()
        self._since.clear()
        self._homeward.clear()
        self._joining.clear()
        self._full.probes.clear()
