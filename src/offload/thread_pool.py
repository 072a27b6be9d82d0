"""Thread pools and event loops whose threads block Ctrl-C, SIGTERM and SIGHUP
(``offload.threads`` says why).

``Executor`` is a ``ThreadPoolExecutor`` that starts its threads in ``submit`` with the signals
blocked in the caller, so that each new thread inherits that mask. ``QuietRunner`` is an
``asyncio.Runner`` with one as its loop's default executor (``asyncio.to_thread``), asyncio's
child waiters blocking them too (``child_watcher``), and a close that waits for its executor
from a thread that blocks them (asyncio's own waits from a thread of its own, for as long as a
worker runs), at the same point of the close. Their own module: ``concurrent.futures`` and
``asyncio`` cost imports that the commands without a pool or a loop do not pay.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from offload.threads import blocked, child_watcher, start
from offload.typing_compat import override

__all__ = ["Executor", "QuietRunner"]

_P = ParamSpec("_P")
_T = TypeVar("_T")


class Executor(ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` whose threads block ``offload.threads.INTERRUPTS``."""

    @override
    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        with blocked():
            return super().submit(fn, *args, **kwargs)


def _pipe_race_passed(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's exception handler: asyncio's own, but for Python 3.11's race when a task
    waiting on a child's pipe is cancelled as the pipe ends (a Ctrl-C while sessions close):
    ``SubprocessStreamProtocol.pipe_connection_lost`` then sets a result on a cancelled
    future, and the loop printed its InvalidStateError's traceback before "interrupted" (two
    Ctrl-Cs of twenty in ``offload doctor``). Nothing is lost: the waiter was cancelled."""
    exception = context.get("exception")
    if isinstance(exception, asyncio.InvalidStateError) and "pipe_connection_lost" in repr(
        context.get("handle")
    ):
        return
    loop.default_exception_handler(context)


class QuietRunner(asyncio.Runner):  # type: ignore[misc] # final in typeshed
    """An ``asyncio.Runner`` none of whose threads takes ``offload.threads.INTERRUPTS``."""

    pool: Executor | None = None  # its loop's default executor, once it has a loop

    @override
    def run(self, coro: Coroutine[Any, Any, _T], **named: Any) -> _T:  # noqa: ANN401 - asyncio's
        loop = self.get_loop()  # a closed runner says so before anything is set up
        if self.pool is None:
            loop.set_exception_handler(_pipe_race_passed)
            child_watcher()
            self.pool = Executor()
            loop.set_default_executor(self.pool)
            # asyncio's close waits for the pool from a thread of its own, as long as a worker
            # runs (an evaluation given up on); this waits from one that blocks them, in the
            # same place of close (after the tasks left and the async generators are done).
            loop.shutdown_default_executor = self._shutdown_pool  # type: ignore[method-assign]
        result: _T = super().run(coro, **named)
        return result

    async def _shutdown_pool(self, timeout: float | None = None) -> None:
        """The loop's ``shutdown_default_executor`` (``timeout``: Python 3.12's, after which
        close goes on and the pool's threads finish on their own)."""
        pool, loop = self.pool, asyncio.get_running_loop()
        if pool is None:
            return
        done: asyncio.Future[None] = loop.create_future()

        def shut_down() -> None:
            try:
                pool.shutdown(wait=True)
            finally:
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(_settle, done)

        waiter = start(threading.Thread(target=shut_down, name="pool-down", daemon=True))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(done), timeout)
            # Gone before close returns, as asyncio's own: a thread still there when the
            # command ends sends it down Python's slower exit (offload.cli's _end).
            waiter.join()


def _settle(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)
