"""Stopping an executor's copies: one the policy let go, a losing one, all of them at the end.

A mixin of ``Executor``'s (its task tables are the executor's own): a copy is stopped by
cancelling its task, which stops its remote build (``copy``); the loop settles the task when
it ends, and the executor says why it was stopped (``_stopped``: why, kept from the moment it
is stopped). So every copy that started ends with one ``JobFinished``, whatever stopped it: a copy
that lost to another or whose twin failed, one halted by another's failure or let go from a
full builder ("cancelled"), each when its task settles; one whose machine went down under it
("lost") as the fall is said (``Endings._machine_failed``); and those the run's end stopped
(``_stop_all``: "cancelled", "stopped by the run's end", said as they are stopped, before the
run's last event).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from offload.errors import OffloadError
from offload.history.records import RunReport
from offload.scheduler.policy import Cancel
from offload.scheduler.run.events import RunEvents
from offload.scheduler.run.full import FullBuilders
from offload.scheduler.run.outcome import Outcome, ended_on_its_own
from offload.scheduler.run.reconnects import Reconnects
from offload.tasks import wait_all

__all__ = ["STOP_NOTICE", "Stopping"]

# Why copies are stopped, in the words history keeps (``history.recorder`` has the first too).
_LOST_TO_ANOTHER = "stopped: another copy was built first"
_HALTED = "stopped: another build failed (no --keep-going)"
# Why a build's outputs, on their way home as the run stopped, are not here.
# Why the run stopped a copy: it was interrupted (Ctrl-C, SIGTERM, SIGHUP), or it ended early
# (its own error, a failure without --keep-going).
_INTERRUPTED = "stopped: the run was interrupted"
_ENDED = "stopped by the run's end"
_HOME_CUT = " before its outputs were brought home"

logger = logging.getLogger("offload.scheduler.run.executor")
# How long the run's stop waits for its copies before it says which builders it waits for.
STOP_NOTICE = 2.0


class Stopping:
    """The executor's copies, and how they are stopped."""

    _tasks: dict[asyncio.Task[Outcome], tuple[str, str]]
    _since: dict[asyncio.Task[Outcome], float]  # when each copy started (wall clock)
    _homeward: dict[asyncio.Task[int], tuple[str, str, str, Outcome]]  # drv, builder, source
    _joining: dict[asyncio.Task[None], str]
    _full: FullBuilders
    _reconnects: Reconnects
    _events: RunEvents
    report: RunReport
    _stopping: bool
    wall: Callable[[], float]
    # Copies being stopped, and how each is to be told once its task settles: (status, why).
    _stopped: dict[asyncio.Task[Outcome], str]
    _told: set[asyncio.Task[Outcome]]  # copies said lost with their machine (``Endings``)

    def _halt(self) -> None:
        """A build failed and the run does not keep going: nothing new starts, and the builds
        still running stop, as Nix stops its other goals then (waiting, maybe hours, for
        builds whose outputs the failed run will not use helps no one)."""
        self._stopping = True
        for task in self._tasks:
            if not task.done():
                task.cancel()
                self._stopped.setdefault(task, _HALTED)

    def _stop_copy(self, drv_path: str, machine: str, why: str) -> None:
        """Stop the copy of ``drv_path`` waiting on ``machine``, which the policy has let go;
        it has not started building, so nothing is built twice."""
        for task, entry in self._tasks.items():
            if entry == (drv_path, machine):
                task.cancel()
                self._stopped[task] = f"{why} on {machine} by other clients"

    def _cancel(self, cancel: Cancel, why: str = _LOST_TO_ANOTHER) -> None:
        """Stop a losing copy without waiting for it: stopping its remote build takes until a
        builder that stopped answering is given up on, and the loop must go on meanwhile (that
        builder's other builds are lost). The loop settles the task when it ends."""
        for task, (drv_path, machine) in self._tasks.items():
            if drv_path == cancel.job and machine == cancel.machine:
                task.cancel()
                self._stopped[task] = why

    def _stopped_copy(
        self, task: asyncio.Task[Outcome], drv_path: str, machine: str, started: float
    ) -> None:
        """Say how a copy whose task was cancelled ended; ``started``: when it started."""
        if (why := self._stopped.pop(task, None)) is not None:
            self._events.finished(drv_path, machine, "cancelled", started=started, error=why)

    async def _cancelled(self, tasks: list[asyncio.Task[Any]]) -> list[BaseException]:
        """``cancel_and_wait(tasks)``, saying after ``STOP_NOTICE`` s each builder whose
        builds are still being stopped: one that no longer answers holds their kill until ssh
        gives it up (about 12 s, then 3 s to connect directly), and without a word the stop
        looked like a Ctrl-C ignored that long."""
        if not tasks:
            return []
        for task in tasks:
            task.cancel()
        interrupted: asyncio.CancelledError | None = None
        try:
            await asyncio.wait(tasks, timeout=STOP_NOTICE)
        except asyncio.CancelledError as exc:  # raised once they have all ended (wait_all)
            interrupted = exc
        for machine in sorted({m for t, (_, m) in self._tasks.items() if not t.done()}):
            self._events.machine_note(
                machine, "slow", "its builds are being stopped: it has not answered yet"
            )
        errors = await wait_all(tasks)
        if interrupted is not None:
            raise interrupted
        return errors

    def _settle(self, task: asyncio.Task[Outcome]) -> None:
        """Hand a copy's ended task to the ending it calls for (``Executor._settle``)."""
        raise NotImplementedError

    def _ended_copies(self, machine: str | None = None) -> list[asyncio.Task[Outcome]]:
        """The copies (on ``machine``, or anywhere) that ended built or failed and are not
        settled yet, nor said lost: they end as they did, whatever stops the rest."""
        return [
            task for task, (_, where) in self._tasks.items()
            if machine in {None, where} and task not in self._told and ended_on_its_own(task)
        ]  # fmt: skip

    async def _stop_all(self) -> None:
        """Stop the copies still running: only a run ending early (interrupted, or an error
        of its own) has any. Their errors are logged, not raised: the run's own is the one
        to report, and this must not replace it. Copies that had ended, built or failed,
        end as they did: a build made is in the run's report and history."""
        for task in self._ended_copies():
            try:
                self._settle(task)
            except Exception:  # a bug's, here as at the stop of the rest: logged, not raised
                logger.exception("a copy that ended could not be settled as the run stopped")
        tasks: list[asyncio.Task[Any]] = [
            *self._tasks, *self._homeward, *self._joining, *self._full.probes,
            *self._reconnects.tasks,
        ]  # fmt: skip
        # Told now, not once stopped: a second signal may cut the wait short.
        why = _INTERRUPTED if self.report.interrupted else _ENDED
        for task, (drv_path, machine) in self._tasks.items():
            if task in self._told:
                continue  # said lost with its machine already
            self._stopped.setdefault(task, why)
            self._stopped_copy(task, drv_path, machine, self._since.get(task, self.wall()))
        # Built there, its outputs not here: the copy ends stopped (it had no end in the
        # events), and the run has not built it (its report listed an output not here).
        for drv_path, machine, _, outcome in self._homeward.values():
            self._events.finished(
                drv_path, machine, "cancelled", started=outcome.started, error=why + _HOME_CUT
            )
            if drv_path in self.report.built:
                self.report.built.remove(drv_path)
        for error in await self._cancelled(tasks):
            # A copy home that lost its builder, as the run stopped, is no news; others are bugs.
            level = logging.DEBUG if isinstance(error, OffloadError) else logging.ERROR
            logger.log(
                level, "a build copy ended with %r as the run stopped", error, exc_info=error
            )
        self._tasks.clear()
        self._since.clear()
        self._stopped.clear()
        self._told.clear()
        self._homeward.clear()
        self._joining.clear()
        self._full.probes.clear()
