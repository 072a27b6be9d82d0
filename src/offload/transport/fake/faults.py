"""Failure injection: connections that drop at chosen points of the protocol.

A test queues a break on a store (``FakeStore.break_next``, or ``FakeLink.break_next``); the
next session of that store to reach the named point ends there, as a connection cut by the
network or a dying ssh would. Ending a session is a ``Hangup``: its message (if any) goes to
stderr, then stdout and stderr close. As in Nix there are no in-band errors, so a failing
command ends its session the same way (``fatal``: an ``error: ...`` line).

An unreachable host is the other failure, and belongs to the link (``FakeLink.go_down``).
"""

from __future__ import annotations

from typing import Literal

__all__ = ["BreakPoint", "Breaks", "Hangup", "fatal"]

# "add-to-store" cuts an AddToStoreNar or the next path of an ImportPaths stream.
BreakPoint = Literal["handshake", "request", "add-to-store", "dump", "build-start", "build-end"]


class Hangup(Exception):
    """Ends a session: ``message`` (if any) goes to stderr, then stdout and stderr close."""

    def __init__(self, message: str | None) -> None:
        super().__init__(message)
        self.message = message


def fatal(message: str) -> Hangup:
    return Hangup(f"error: {message}")


class Breaks:
    """The queued breaks of one store, each taken by the first session to reach its point."""

    def __init__(self) -> None:
        self._queue: list[tuple[BreakPoint, str | None]] = []

    def add(self, at: BreakPoint, message: str | None) -> None:
        self._queue.append((at, message))

    def take(self, at: BreakPoint) -> Hangup | None:
        for i, (point, message) in enumerate(self._queue):
            if point == at:
                del self._queue[i]
                return Hangup(message)
        return None
