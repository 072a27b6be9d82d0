"""A ``ThreadPoolExecutor`` whose threads block Ctrl-C, SIGTERM and SIGHUP (``offload.threads``
says why). It starts them in ``submit``, so ``submit`` runs with them blocked in the caller and
each new thread inherits that mask. Its own module: ``concurrent.futures`` costs an import that
the commands without a thread pool do not pay."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from offload.threads import blocked
from offload.typing_compat import override

__all__ = ["Executor"]

_P = ParamSpec("_P")
_T = TypeVar("_T")


class Executor(ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` whose threads block ``offload.threads.INTERRUPTS``."""

    @override
    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        with blocked():
            return super().submit(fn, *args, **kwargs)
