"""Threads offload starts take none of the signals that stop a command (``INTERRUPTS``).

The kernel hands a signal sent to a process to any of its threads that does not block it; that
thread's C handler notes it, and Python runs the handler later, in the main thread. Taken by a
worker thread, a signal does not interrupt the main thread's system call (its handler waits
for that to return) and is not noted in order: a Ctrl-C an idle worker took could be noted
after a SIGTERM sent a moment later that the main thread took and handled at once, and the
command stopped with the second signal's status. With every other thread blocking them, each
goes to the main thread, which notes every pending one, lowest number first, before a handler
runs.

A thread inherits the mask of the thread that creates it, so the creator blocks them around the
creation (``start``, ``offload.thread_pool.Executor``, ``child_watcher``): there is no moment in
which the new thread could take one. A child inherits its spawner's mask across exec, so a spawn
in such a thread unblocks them for the spawn (``unblocked``, in ``offload.process``): Nix and ssh
stay stoppable; in that moment the thread may take a signal, which costs only the order above.
A command's event loop and the in-process hook's run on a ``offload.thread_pool.QuietRunner``,
whose threads block them too; the hook's coordinator keeps a plain loop: it takes its signals
with the loop's own handlers, which wake it from any thread. Left: Python 3.14 chooses a
loop's child waiter itself (no watcher to set), a thread per child where the kernel has no
pidfds.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, TypeVarTuple

from offload.typing_compat import override

if TYPE_CHECKING:
    import asyncio

__all__ = ["INTERRUPTS", "blocked", "child_watcher", "interrupts_held", "start", "unblocked"]

# Ctrl-C, and what a supervisor or a closed terminal sends: what stops a command.
INTERRUPTS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_Ts = TypeVarTuple("_Ts")


@contextlib.contextmanager
def _masked(how: int) -> Iterator[None]:
    previous = signal.pthread_sigmask(how, INTERRUPTS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def blocked() -> contextlib.AbstractContextManager[None]:
    """``INTERRUPTS`` blocked in this thread while the block runs (then delivered, if sent)."""
    return _masked(signal.SIG_BLOCK)


def unblocked() -> contextlib.AbstractContextManager[None]:
    """``INTERRUPTS`` unblocked in this thread while the block runs: a child spawned in it
    takes them, whichever thread spawns it."""
    return _masked(signal.SIG_UNBLOCK)


def start(thread: threading.Thread) -> threading.Thread:
    """``thread`` started with ``INTERRUPTS`` blocked in it."""
    with blocked():
        thread.start()
    return thread


def child_watcher() -> None:
    """asyncio's subprocesses waited for by threads that block ``INTERRUPTS``, where asyncio
    waits for each child in a thread of its own, started after the child is spawned: Python
    3.11's default, and 3.12's and 3.13's where the kernel has no pidfds (they use those where
    it has, without a thread). Python 3.14 has no watcher to set."""
    if sys.version_info >= (3, 14):
        return
    import asyncio  # here: the commands that need no event loop do not pay for it

    with warnings.catch_warnings():  # deprecated from 3.12 on, and still what they use
        warnings.simplefilter("ignore", DeprecationWarning)
        if isinstance(asyncio.get_child_watcher(), (_QuietWatcher, asyncio.PidfdChildWatcher)):
            return
        asyncio.set_child_watcher(_watcher())


def _watcher() -> asyncio.AbstractChildWatcher:
    import asyncio

    class _Watcher(asyncio.ThreadedChildWatcher, _QuietWatcher):
        @override
        def add_child_handler(
            self, pid: int, callback: Callable[[int, int, *_Ts], object], *args: *_Ts
        ) -> None:
            with blocked():
                super().add_child_handler(pid, callback, *args)

    return _Watcher()


class _QuietWatcher:
    """What ``child_watcher`` sets is one of these (it is set once)."""


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP held until the block ends, then the first of them handed to
    the handler it had (later ones dropped: the command line stops on the first and ignores
    the rest, ``offload.cli.interrupts``): a daemon started in the block is never lost to a
    KeyboardInterrupt raised as its fork returns, before the caller knows its pid to stop it.
    Each is held over its own handler, whatever the others have: a SIGTERM is held too where
    Ctrl-C was ignored from the start. Only where Python handles them: in the main thread,
    over a handler of Python's (one ignored stays ignored)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in INTERRUPTS}
    handled = {s: handler for s, handler in previous.items() if callable(handler)}
    held: list[tuple[int, FrameType | None]] = []
    for signum in handled:
        signal.signal(signum, lambda signum, frame: held.append((signum, frame)))
    try:
        yield
    finally:
        for signum, handler in handled.items():
            signal.signal(signum, handler)
        if held:
            first, frame = held[0]
            handled[signal.Signals(first)](first, frame)
