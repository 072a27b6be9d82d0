"""Where a link's sessions come from: the ``SessionTransport`` protocol and what it hands back.

A transport starts serve processes (``SessionPipes``: pipes, pid, liveness), kills a remote
process tree on request, and closes whatever it keeps open between sessions.
``SshTransport`` and ``LocalTransport`` report the serve process's pid out of band, on stderr
before anything else (``read_start_line``); that line never reaches the log handlers. Tests may
pass any other transport, e.g. in-memory pipes to a scripted peer.

The same start line carries the machine's cores, load and boot id (``offload.load``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from offload.load import RemoteLoad
from offload.protocol.serve import ByteWriter
from offload.protocol.wire import ByteReader
from offload.transport.ssh import parse_start_line

__all__ = [
    "CONTROL_TIMEOUT",
    "KILL_GRACE",
    "TAIL",
    "LinkStats",
    "LogSink",
    "SessionPipes",
    "SessionTransport",
    "drain_dead",
    "read_start_line",
]

LogSink = Callable[[str], None]

# How many stderr lines are kept to explain a failure.
TAIL = 20
KILL_GRACE = 5
# How long a kill over the master, or `ssh -O exit`, may take before we give up on it.
CONTROL_TIMEOUT = 15.0


@dataclass
class LinkStats:
    """What one link moved: serve-protocol bytes written and read, sessions started."""

    bytes_sent: int = 0
    bytes_received: int = 0
    sessions_opened: int = 0


@dataclass
class SessionPipes:
    """A started serve process: its pipes, its pid (for remote kills), a liveness test, and the
    load its start line reported."""

    reader: ByteReader
    writer: ByteWriter
    stderr: asyncio.StreamReader | None
    pid: int | None
    alive: Callable[[], bool] = lambda: True
    early_stderr: tuple[str, ...] = ()
    load: RemoteLoad | None = None


class SessionTransport(Protocol):
    """Where sessions come from. ``start`` registers cleanup of what it starts on ``stack``."""

    name: str

    async def start(self, stack: contextlib.AsyncExitStack) -> SessionPipes: ...
    async def kill(self, pid: int) -> None: ...
    async def close(self) -> None: ...


async def read_start_line(
    stderr: asyncio.StreamReader, timeout: float
) -> tuple[int | None, RemoteLoad | None, tuple[str, ...]]:
    """Read stderr up to the start line; returns its pid (None at EOF), the load it reported
    (None if it did not say) and the lines before it.

    Lines before it are ssh's own (warnings, or why it could not connect).
    """
    early: list[str] = []

    async def scan() -> tuple[int, RemoteLoad | None] | None:
        while line := await stderr.readline():
            text = line.decode(errors="replace").rstrip("\r\n")
            start = parse_start_line(text)
            if start is not None:
                return start
            early.append(text)
            del early[:-TAIL]
        return None

    try:
        start = await asyncio.wait_for(scan(), timeout)
    except TimeoutError:
        early.append(f"(no answer within {timeout:g} s)")
        start = None
    if start is None:
        return None, None, tuple(early)
    return start[0], start[1], tuple(early)


async def drain_dead(proc: asyncio.subprocess.Process) -> None:
    # A child that died on its own (its connection dropped) is not waited for by spawn; read
    # what is left of its stdout so asyncio can close its transport.
    if proc.returncode is not None and proc.stdout is not None:
        with contextlib.suppress(TimeoutError, OSError):
            await asyncio.wait_for(proc.stdout.read(), 2.0)
