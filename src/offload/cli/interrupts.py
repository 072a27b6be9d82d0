"""Ctrl-C, SIGTERM and SIGHUP: the first stops the command, later ones wait for its clean-up.

SIGTERM and SIGHUP are turned into a SIGINT (``as_interrupt``), so the one path that stops a
run cleanly (asyncio cancels the run, remote builds are stopped and their partial outputs
deleted, the run kept in history, temporary directories removed) serves all three. Once a run
is stopping, a second signal is ignored, as Nix ignores it: asyncio's own runner would raise
it into the clean-up, which then left partial outputs on builders and the run out of history
(a second Ctrl-C within about 0.3 s). The clean-up is bounded (each remote stop and deletion
has its timeout), and SIGKILL still ends the process at once.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

__all__ = ["as_interrupt", "reset", "steady_runner", "stopped_status"]

# The signals that stopped the command, first first (SIGINT unless another was turned into it).
_stopped_by: list[int] = []


def reset() -> None:
    _stopped_by.clear()


def stopped_status() -> int:
    """The exit status of a command stopped by a signal: 128 + the first one's number."""
    return 128 + (_stopped_by[0] if _stopped_by else signal.SIGINT)


def _stopping(signum: int) -> bool:
    """Note ``signum``; whether the command was stopping already."""
    _stopped_by.append(signum)
    return len(_stopped_by) > 1


def as_interrupt(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM's and SIGHUP's handler: Ctrl-C's path, unless the command is stopping already."""
    if _stopping(signum):
        return
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # Started with Ctrl-C ignored (a background job of a script): a SIGTERM must still
        # stop the run, by the same path (KeyboardInterrupt, then every task's cleanup).
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.raise_signal(signal.SIGINT)


def steady_runner() -> asyncio.Runner:
    """An ``asyncio.Runner`` whose first Ctrl-C cancels the run, as asyncio's does, and whose
    later ones are ignored for the rest of the process (asyncio's raises them into the
    clean-up the first started)."""
    import asyncio  # here: the commands that need no event loop do not pay for it

    # Final in typeshed; its private hook is the one place a Ctrl-C reaches the run.
    class _Steady(asyncio.Runner):  # type: ignore[misc]
        # Its arguments passed on as they come: a Python whose hook takes others still works.
        def _on_sigint(self, signum: int, *rest: Any, **named: Any) -> None:  # noqa: ANN401 - asyncio's private hook
            if signum == signal.SIGINT and not _stopped_by:
                _stopped_by.append(signum)
            # Ignored from now on: asyncio restores its default handler only over its own.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            super()._on_sigint(signum, *rest, **named)  # type: ignore[misc]

    return _Steady()
