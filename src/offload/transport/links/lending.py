"""What a ``Link`` (``pool``) keeps of each session it opened, and the small helpers its
lending and teardown share: a session's stderr route, the busy answer of a slot wrapper, waits
that a second cancellation does not cut short, and the stop of a session cut off mid-request
(``stop_cut_off``: the remote kill first, the session's ends closed a moment into it)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from offload.ansi import last_nix_error
from offload.errors import OffloadError, ProtocolError, TransportError
from offload.names import LOCAL
from offload.protocol.store import StoreClient
from offload.protocol.trust import untrusted_said
from offload.transport.daemon_socket import daemon_trouble
from offload.transport.links.base import TAIL, LogSink, SessionPipes
from offload.transport.missing_program import (
    fix_path_here,
    install_nix,
    mend_settings,
    missing,
    nix_stopped,
    not_on_path,
)

__all__ = [
    "BuilderFullError",
    "LogRoute",
    "PooledSession",
    "check_slot",
    "close_shielded",
    "not_started",
    "shake_hands",
    "stop_cut_off",
    "wait_teardown",
]

# How long the remote kill runs before a cut session's ends are closed here: enough for its
# script to find the remote process tree and SIGTERM it (milliseconds; an ssh over the master,
# then ps and awk, on a loaded machine), so closing them orphans nothing it looks for; short,
# since a Nix blocked reading or writing the session takes that SIGTERM only once they close.
KILL_HEAD_START = 1.0


class BuilderFullError(Exception):
    """Every builder-side slot is held by another session (another client's, most often), or
    (``yielded``) a free one is left to a client waiting there (``offload.transport.wrapper``).
    """

    def __init__(self, name: str, *, yielded: bool = False, count: str | None = None) -> None:
        super().__init__(name)
        self.yielded = yielded
        self.count = count  # whose slots they are (``wrapper.parse_count``), if said


@dataclass(eq=False)
class LogRoute:
    """A session's stderr: kept as a short tail for errors, passed to the current borrower."""

    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL))
    sink: LogSink | None = None
    heard: float = field(default_factory=time.monotonic)  # when a line last came

    def log(self, line: str) -> None:
        self.heard = time.monotonic()
        self.tail.append(line)
        if self.sink is not None:
            self.sink(line)


@dataclass(eq=False)
class PooledSession:
    client: StoreClient
    stack: contextlib.AsyncExitStack
    pipes: SessionPipes
    logs: LogRoute
    teardown: asyncio.Task[None] | None = None
    opened: float = field(default_factory=time.monotonic)  # when its turn began (``TURN``)


# The shell's last word when the program to run is not there: dash's "sh: 1: exec: nix-store:
# not found", bash's "nix-store: command not found" or, for a path, "No such file or directory".
def not_started(program: str, error: ProtocolError, tail: list[str], peer: str) -> TransportError:
    """The error for a session of ``peer`` (a builder, or this host's store: ``LOCAL``) whose
    ``program`` gave no handshake (``error``), with the last of what it printed (``tail``);
    one line that names no builder: who shows it names it."""
    here = peer == LOCAL
    hint = fix_path_here() if here else install_nix()
    if tail and missing(tail[-1]):  # as `offload doctor` says it
        failure = TransportError(not_on_path(program, tail[-1], here=here), hint=hint)
    elif (said := last_nix_error(tail)) is not None:  # it ran, and Nix stopped it
        # Its daemon unreachable is said as such where it is shown (``daemon_socket``).
        hint = hint if daemon_trouble(said) is not None else mend_settings(here)
        failure = TransportError(nix_stopped(program, said), hint=hint)
    else:
        said = " | ".join(tail[-5:]) or "(no output)"
        failure = TransportError(
            f"cannot start {program}: {error.message}; stderr: {said}", hint=hint
        )
    failure.peer = peer
    return failure


async def shake_hands(
    client: StoreClient,
    pipes: SessionPipes,
    tail: Iterable[str],
    peer: str,
    *,
    refuse_untrusted: bool = True,
) -> None:
    """``client``'s handshake on ``pipes``: none is ``not_started``, with the last of what
    the program printed (``tail``). A daemon that says it does not trust the user builds
    nothing offload sends: the session is refused at once (``refuse_untrusted``; doctor
    keeps it, to say so in its own row)."""
    try:
        await client.handshake(sent=pipes.hello_sent)
    except ProtocolError as exc:
        raise not_started(pipes.dialect.describe(), exc, list(tail), peer) from exc
    if refuse_untrusted and getattr(client, "trusted", None) is False:
        raise untrusted_said(peer)


def check_slot(name: str, pipes: SessionPipes) -> None:
    # The wrapper exited: every slot there is held, or a free one is left to a waiter.
    if pipes.slot in {"busy", "yield"}:
        raise BuilderFullError(name, yielded=pipes.slot == "yield", count=pipes.count)


async def wait_teardown(task: asyncio.Task[None]) -> None:
    """Wait for a teardown; a second cancellation of the waiter does not stop the teardown."""
    await asyncio.shield(task)


async def close_shielded(stack: contextlib.AsyncExitStack) -> None:
    """Close ``stack`` to the end even if the caller is cancelled meanwhile."""
    task = asyncio.get_running_loop().create_task(stack.aclose())
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


async def stop_cut_off(
    pipes: SessionPipes,
    kill: Callable[[int, str | None], Awaitable[None]],
    unstopped: Callable[[OffloadError], None],
) -> None:
    """Stop a session cut off mid-request (its process may be blocked writing to us): the
    remote process tree by ``kill`` (a build runs on after the local end goes), then, a head
    start later, the session's input (a remote Nix in read(2) gets end of file) and, over ssh,
    its ssh client (one blocked writing to us, a fetch home, gets a failed write); a local
    nix-store only once the kill is done (the kill finds its builders through it). A kill that
    failed is told to ``unstopped``."""
    killing = None
    try:
        if pipes.pid is not None:
            killing = asyncio.ensure_future(kill(pipes.pid, pipes.born))
            await asyncio.wait([killing], timeout=KILL_HEAD_START)
        pipes.writer.close()
        if pipes.over_ssh:
            pipes.stop()
        if killing is not None:
            try:
                await killing
            except OffloadError as exc:
                unstopped(exc)
    finally:
        # Cancelled meanwhile (the teardown is shielded, but its loop may be closing): the
        # kill is not left running unowned, and the session's process is stopped whatever.
        if killing is not None and not killing.done():
            killing.cancel()
        pipes.stop()
