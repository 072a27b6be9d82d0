"""Thread pools and event loops whose threads block Ctrl-C, SIGTERM and SIGHUP
(``offload.threads`` says why).

``Executor`` is a ``ThreadPoolExecutor`` that starts its threads in ``submit`` with the signals
blocked in the caller, so that each new thread inherits that mask. ``QuietRunner`` is an
``asyncio.Runner`` with one as its loop's default executor (``asyncio.to_thread``), asyncio's
child waiters blocking them too (``child_watcher``), and a close that waits for its executor
from a thread that blocks them (asyncio's own waits from a thread of its own, for as long as a
worker runs). Their own module: ``concurrent.futures`` and ``asyncio`` cost imports that the
commands without a pool or a loop do not pay.
"""

from __future__ import annotations

import asyncio
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


class QuietRunner(asyncio.Runner):  # type: ignore[misc] # final in typeshed
    """An ``asyncio.Runner`` none of whose threads takes ``offload.threads.INTERRUPTS``."""

    pool: Executor | None = None  # its loop's default executor, once it has a loop

    @override
    def run(self, coro: Coroutine[Any, Any, _T], **named: Any) -> _T:  # noqa: ANN401 - asyncio's
        if self.pool is None:
            child_watcher()
            self.pool = Executor()
            self.get_loop().set_default_executor(self.pool)
        result: _T = super().run(coro, **named)
        return result

    @override
    def close(self) -> None:
        try:
            if self.pool is not None:
                start(threading.Thread(target=self.pool.shutdown, name="pool-down")).join()
        finally:
            super().close()
