"""Ctrl-C, SIGTERM and SIGHUP: one rule for the whole process. The first stops the command;
later ones are ignored, as Nix ignores them, while its clean-up runs; the exit status is
128 + the first one's number (``stopped_status``).

``install`` gives the three one handler (SIGINT only where it was not ignored as the process
started: a script's background job keeps Ctrl-C ignored, and SIGTERM still stops it). The
first signal stops the command where it is: an async run going on (``steady_runner``) has its
task cancelled, as asyncio's own runner does for a Ctrl-C, so the run's clean-up runs (remote
builds stopped and their partial outputs deleted, the run kept in history); outside one (Nix
evaluating, the summary, history and result links after the run), ``KeyboardInterrupt`` is
raised in the main thread. Then every finally and except clause on the way out (an evaluator
stopped, history written, a link made, temporary directories removed, the terminal restored)
runs to its end: a second signal raised into them left partial outputs on builders, the run
out of history, or a traceback. The clean-up is bounded (each remote stop and deletion has
its timeout), and SIGKILL still ends the process at once.

Python runs a handler wherever the main thread is, a callback whose exception it cannot
pass on too (the import system's module lock's): the ``KeyboardInterrupt`` raised there is
"Exception ignored", printed with its traceback, and the command went on. So ``install`` also
takes the interpreter's unraisable hook: such a ``KeyboardInterrupt`` is raised again, at the
main thread's next step out of the callback (``_lost``), silently.

Later signals go to a handler that does nothing, not to ``SIG_IGN``: an ignored disposition
is inherited by every child started during the clean-up (the ssh that stops a remote build,
a ``nix-store``), which then could not be stopped by a SIGINT; a handler is reset by exec.
``offload.threads.interrupts_held`` defers whichever handler each signal has past a fork;
``offload.threads`` keeps every other thread from taking one, so the main thread notes them
in order; this module decides what the handlers do.
"""

from __future__ import annotations

import _thread
import signal
import sys
import threading
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

from offload.threads import INTERRUPTS
from offload.typing_compat import override

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "held_before",
    "install",
    "reset",
    "run",
    "steady_runner",
    "stopped_status",
    "stopping",
    "unblock",
]

_T = TypeVar("_T")


@dataclass
class _Going:
    """An async run going on (``steady_runner``): its task once it started, and whether the
    first signal came for it before it did (it is then cancelled as it starts)."""

    task: asyncio.Task[Any] | None = None
    stopped: bool = False


# The signals that stopped the command, first first.
_stopped_by: list[int] = []
_going: list[_Going] = []  # the async run going on, if any


def reset() -> None:
    _stopped_by.clear()


def stopped_status() -> int:
    """The exit status of a command stopped by a signal: 128 + the first one's number."""
    return 128 + (_stopped_by[0] if _stopped_by else signal.SIGINT)


def stopping() -> bool:
    """Whether a signal has stopped the command (its clean-up may be running)."""
    return bool(_stopped_by)


def install() -> None:
    """The rule, for Ctrl-C (unless ignored from the start), SIGTERM and SIGHUP."""
    for signum in INTERRUPTS:
        if signum == signal.SIGINT and signal.getsignal(signum) is signal.SIG_IGN:
            continue  # a script's background job: Ctrl-C is not for it
        signal.signal(signum, _first)
    if sys.unraisablehook is not _lost:
        _hooks.append(sys.unraisablehook)
        sys.unraisablehook = _lost


def held_before(blocked: Iterable[int]) -> None:
    """The signals blocked before the script held the three (``bin/offload``): those of the
    three stay blocked (``unblock``), for this process and the children it starts."""
    _inherited[:] = [signum for signum in INTERRUPTS if signum in set(blocked)]


_inherited: list[int] = []  # of INTERRUPTS, blocked by whoever started this process


def unblock() -> None:
    """Take the three signals from here on: the scripts hold them while the CLI is imported
    (``bin/offload``), so one sent meanwhile is taken now, by ``install``'s handler."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, set(INTERRUPTS) - set(_inherited))


_hooks: list[Any] = []  # the unraisable hook before ``_lost``


def _lost(unraisable: Any) -> None:  # noqa: ANN401 - sys.UnraisableHookArgs
    """The first signal's ``KeyboardInterrupt``, raised in a callback that could not pass it
    on: raised again once out of it, by a signal of its own to the main thread (handled at
    its next step, where an exception goes its way). Anything else: Python's own hook."""
    lost = isinstance(unraisable.exc_value, KeyboardInterrupt) and bool(_stopped_by)
    if not lost or threading.current_thread() is not threading.main_thread():
        _hooks[-1](unraisable)
        return

    before = signal.getsignal(signal.SIGINT)  # ``_ignored``, or SIG_IGN kept from the start

    def again(_signum: int, _frame: FrameType | None) -> None:
        signal.signal(signal.SIGINT, before)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, again)
    # A real signal (it wakes a wait: interrupt_main() only marks one), from another thread:
    # the main thread runs a handler at its next step, which from here (raise_signal) would
    # be in this hook still. Lost again, still in the callback when it came, it comes back.
    main = threading.main_thread().ident or 0  # known: it runs this
    _thread.start_new_thread(_signal_thread, (main,))  # not waited for


def _signal_thread(ident: int) -> None:
    signal.pthread_kill(ident, signal.SIGINT)


def _first(signum: int, frame: FrameType | None) -> None:
    """The first signal: noted, later ones ignored, and the command stopped where it is."""
    if _stopped_by:
        return  # a signal pending as the handlers were swapped
    if frame is not None and frame.f_code is _first.__code__:
        # Python runs a handler between any two bytecodes, the first of another handler's
        # too: one signal a moment after another (a Ctrl-C, then the supervisor's SIGTERM) is
        # handled inside the first's handler, before that one noted its own. It came first.
        signum = int(frame.f_locals["signum"])
    _stopped_by.append(signum)
    for other in INTERRUPTS:
        if signal.getsignal(other) is _first:
            signal.signal(other, _ignored)
    going = _going[-1] if _going else None
    if going is None or (going.task is not None and going.task.done()):
        raise KeyboardInterrupt
    going.stopped = True
    if going.task is not None:  # else it is cancelled as it starts (``_told``)
        going.task.cancel()
        # Wake the loop if it waits in select() with a long timeout.
        going.task.get_loop().call_soon_threadsafe(lambda: None)


def _ignored(_signum: int, _frame: FrameType | None) -> None:
    """A signal while the command stops: its clean-up goes on."""


def steady_runner() -> asyncio.Runner:
    """An ``asyncio.Runner`` whose run the first signal stops by cancelling its task, as
    asyncio's own stops it for a Ctrl-C (``KeyboardInterrupt`` then comes out of ``run``);
    a run begun once the command is stopping (its clean-up) is not stopped by later ones. No
    thread of it takes a signal (``offload.thread_pool.QuietRunner``)."""
    import asyncio  # here: the commands that need no event loop do not pay for it

    from offload.thread_pool import QuietRunner

    # run() is the one place the run's task is known.
    class _Steady(QuietRunner):  # type: ignore[misc] # Runner is final in typeshed
        @override
        def run(self, coro: Coroutine[Any, Any, _T], **named: Any) -> _T:  # noqa: ANN401 - asyncio's
            going = _Going()
            _going.append(going)
            try:
                result: _T = super().run(_told(coro, going), **named)
            except asyncio.CancelledError:
                if going.stopped:
                    raise KeyboardInterrupt from None
                raise
            finally:
                _going.remove(going)
            return result

    return _Steady()


def run(coro: Coroutine[Any, Any, _T]) -> _T:
    """``asyncio.run`` under the rule (asyncio's would take Ctrl-C over only from Python's
    default handler, which ``install`` replaces)."""
    with steady_runner() as runner:
        return runner.run(coro)


async def _told(coro: Coroutine[Any, Any, _T], going: _Going) -> _T:
    """``coro``, its task made known to ``_first`` while it runs."""
    import asyncio

    going.task = asyncio.current_task()
    if going.stopped:
        coro.close()
        raise asyncio.CancelledError
    return await coro
