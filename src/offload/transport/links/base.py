"""Where a link's sessions come from: the ``SessionTransport`` protocol and what it hands back.

A transport starts serve processes (``SessionPipes``: pipes, pid, liveness), kills a remote
process tree on request, and closes whatever it keeps open between sessions. Tests may pass any
other transport, e.g. in-memory pipes to a scripted peer.

``SshTransport`` and ``LocalTransport`` start the serve program behind a wrapper that prints a
start line on stdout first (the serve process's pid for remote kills, and the machine's cores,
load and boot id, ``offload.load``). ``open_serve`` writes the serve hello at once, without
waiting for that line, and reads stdout: the start line, then the serve reply, is a normal
builder; the serve reply alone is a *restricted* one, whose key may run only the serve program
(``restrict,command="nix-store --serve --write"`` in authorized_keys, or sshd's
``ForceCommand``), which ignores the wrapper. ``ssh-ng://`` sessions do the same with the
daemon's hello and reply (``offload.transport.dialect``): a key forced to ``nix-daemon
--stdio`` is found as fast. Both are told apart by their first bytes, so
neither costs a round trip or a timeout; a restricted session has no pid (it is stopped by
closing it: the serve program's stdin hangs up and Nix interrupts the build) and no load.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from offload.load import RemoteLoad
from offload.process import stop_now
from offload.protocol.export import Exporter
from offload.protocol.serve import ByteWriter
from offload.protocol.wire import ByteReader
from offload.tasks import stop
from offload.transport.dialect import SERVE, Dialect
from offload.transport.ssh_options import Keepalive
from offload.transport.wrapper import parse_born, parse_count, parse_slot, parse_start_line

__all__ = [
    "CONTROL_TIMEOUT",
    "KILL_GRACE",
    "TAIL",
    "LinkStats",
    "LogSink",
    "Opening",
    "SessionPipes",
    "SessionTransport",
    "SlotStart",
    "drain_dead",
    "first_words",
    "open_serve",
]

LogSink = Callable[[str], None]

# How many stderr lines are kept to explain a failure.
TAIL = 20
KILL_GRACE = 5
# How long a kill over the master, or `ssh -O exit`, may take before we give up on it.
CONTROL_TIMEOUT = 15.0
# How long a session that failed to start may take to say why on stderr.
_TAIL_WAIT = 2.0


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
    # The transport wrote the serve hello already (``open_serve``).
    hello_sent: bool = False
    # The builder ran its forced serve program instead of our wrapper: no pid, no load.
    restricted: bool = False
    # The protocol the session speaks (``offload.transport.dialect``).
    dialect: Dialect = SERVE
    # The builder-side slot the start line says it holds (``wrapper.parse_slot``), if asked for
    # one, and whose slots it is one of (``wrapper.parse_count``).
    slot: str | None = None
    count: str | None = None
    # When the serve process started, as its start line said (``wrapper.parse_born``): its kill
    # leaves alone a later process given the same pid.
    born: str | None = None
    # On the local store: its nix-store writes what is sent from it (``protocol.export``).
    exporter: Exporter | None = None
    # Stops the session's local process at once (``process.stop_now``): a session cut off
    # mid-request is not closed politely (its remote side ends with the ssh session).
    stop: Callable[[], None] = lambda: None
    # The local process is an ssh client: stopping it before the remote kill ends (that runs
    # on the builder, over the master) ends the builder's Nix blocked writing to us (a fetch
    # home), which takes no SIGTERM until that write returns (``lending.stop_cut_off``).
    over_ssh: bool = False
    # The connection the session ran over (an ssh master) has ended, not only the session.
    connection_gone: Callable[[], bool] = lambda: False
    # That connection's keepalives, as ssh was given them (NIX_SSHOPTS' first): how long a
    # silent builder keeps it (``streams.silence``).
    keepalive: Keepalive = field(default_factory=Keepalive)


class SessionTransport(Protocol):
    """Where sessions come from. ``start`` registers cleanup of what it starts on ``stack``."""

    name: str

    async def start(self, stack: contextlib.AsyncExitStack) -> SessionPipes: ...
    async def kill(self, pid: int, born: str | None = None) -> None: ...
    async def close(self) -> None: ...


class SlotStart(Protocol):
    """Starts a session holding one of ``slots`` on the builder for ``client``, as
    ``SshTransport.start`` does (``waited``: this client waits there itself, ``ssh``)."""

    def __call__(
        self, stack: contextlib.AsyncExitStack, slots: int, *, client: str, waited: bool
    ) -> Awaitable[SessionPipes]: ...


class _Prefixed:
    """``reader`` with ``head`` (bytes already read from it) put back in front."""

    def __init__(self, head: bytes, reader: ByteReader) -> None:
        self._head = head
        self._reader = reader

    async def readexactly(self, n: int) -> bytes:
        if not self._head:
            return await self._reader.readexactly(n)
        taken, self._head = self._head[:n], self._head[n:]
        return taken + (await self._reader.readexactly(n - len(taken)) if n > len(taken) else b"")


@dataclass(frozen=True)
class Opening:
    """How a serve session began: ``reader`` is its stdout from the serve reply on; ``pid`` and
    ``load`` are None on a restricted builder; ``early`` is stderr before the reply."""

    reader: ByteReader
    pid: int | None
    load: RemoteLoad | None
    restricted: bool
    early: tuple[str, ...]
    failure: str | None = None
    dialect: Dialect = SERVE
    slot: str | None = None
    count: str | None = None
    born: str | None = None

    def pipes(
        self,
        proc: asyncio.subprocess.Process,
        *,
        over_ssh: bool = False,
        connection_gone: Callable[[], bool] = lambda: False,
        keepalive: Keepalive | None = None,
    ) -> SessionPipes:
        """The session's pipes, begun as this says (the hello already sent); ``over_ssh``:
        ``proc`` is an ssh client (``SessionPipes.over_ssh``) over the master that
        ``connection_gone`` asks after, whose keepalives are ``keepalive`` (offload's own
        when None)."""
        assert proc.stdin is not None
        return SessionPipes(
            self.reader,
            proc.stdin,
            proc.stderr,
            self.pid,
            lambda: proc.returncode is None,
            self.early,
            self.load,
            hello_sent=True,
            restricted=self.restricted,
            dialect=self.dialect,
            slot=self.slot,
            count=self.count,
            born=self.born,
            stop=functools.partial(stop_now, proc),
            over_ssh=over_ssh,
            connection_gone=connection_gone,
            keepalive=keepalive or Keepalive(),
        )


async def open_serve(
    proc: asyncio.subprocess.Process,
    timeout: float,
    dialect: Dialect = SERVE,
    *,
    hello_sent: bool = False,
) -> Opening:
    """Send ``dialect``'s hello to a just-started session and read how it begins (module
    docstring): the serve program's by default, ``nix-daemon --stdio``'s for ssh-ng://.

    Its stdout starts with either the start line (our wrapper ran: pid and load) or the serve
    reply itself (a forced command ran the serve program instead); ``failure`` says what
    happened when it is neither (nothing within ``timeout``, the session ended, another program
    answered). stderr is read meanwhile into ``early`` and left alone after.
    """
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stderr is not None
    stdout, stderr = proc.stdout, proc.stderr
    early: list[str] = []

    async def collect() -> None:
        with contextlib.suppress(ValueError):  # a line beyond the reader's limit ends it
            while line := await stderr.readline():
                early.append(line.decode(errors="replace").rstrip("\r\n"))
                del early[:-TAIL]

    collector = asyncio.get_running_loop().create_task(collect())
    try:
        # Written before anything is known: on a normal builder the wrapper leaves stdin to the
        # serve program it execs, so the handshake costs no round trip of its own.
        if not hello_sent:
            with contextlib.suppress(OSError):
                proc.stdin.write(dialect.hello)
        head, failure = await _first_line(stdout, timeout, dialect.reply)
        if failure is not None:
            await asyncio.wait([collector], timeout=_TAIL_WAIT)  # ssh's last words, if it ends
            return Opening(stdout, None, None, False, tuple(early), failure, dialect)
    finally:
        await stop(collector)
    if head == dialect.reply:
        return Opening(_Prefixed(head, stdout), None, None, True, tuple(early), None, dialect)
    text = head.decode(errors="replace")
    start = parse_start_line(text)
    if start is None:
        shown = head[:60].decode(errors="replace").strip() or repr(head[:16])
        failure = f"the builder answered {shown!r} where the {dialect.name} program's reply belongs"
        return Opening(stdout, None, None, False, tuple(early), failure, dialect)
    return Opening(
        stdout, start[0], start[1], False, tuple(early), None, dialect,
        slot=parse_slot(text), count=parse_count(text), born=parse_born(text),
    )  # fmt: skip


async def _first_line(
    stdout: asyncio.StreamReader, timeout: float, reply: bytes
) -> tuple[bytes, str | None]:
    """The program's reply's first 8 bytes, or the line that came first instead (our start
    line, or what a shell printed); or a failure. A line cut short by the timeout is kept."""
    seen = bytearray()  # what was read, said when the read ends early
    try:
        async with asyncio.timeout(timeout):
            return await first_words(stdout, reply, seen), None
    except TimeoutError:
        said = bytes(seen)
        return said, None if said.strip() else f"(no answer within {timeout:g} s)"
    except asyncio.IncompleteReadError:
        said = bytes(seen)
        return said, None if said.strip() else "(the session ended before it answered)"
    except (asyncio.LimitOverrunError, ValueError):
        return bytes(seen), None  # an endless line: what was read is shown


async def first_words(stdout: asyncio.StreamReader, reply: bytes, seen: bytearray) -> bytes:
    """A session's (or ssh master's) first words: ``reply`` itself (a forced program's), else
    its first line that is not blank (our start or ready line, or a start-up file's noise).
    Blank lines are skipped, as they were when the line was stripped. A line shorter than
    the reply ends at its newline: a reply may follow it with no newline for a read of the
    whole line to wait for (a start-up file's "hi" before a restricted builder's reply).
    ``seen`` gets every byte read, for the caller to say when the read ends early."""

    async def exactly(n: int) -> bytes:
        try:
            data = await stdout.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            seen.extend(exc.partial)
            raise
        seen.extend(data)
        return data

    head = await exactly(len(reply))
    while head != reply:
        line, newline, rest = head.partition(b"\n")
        if not newline:
            tail = await stdout.readline()
            seen.extend(tail)
            if (head + tail).strip():
                return head + tail
            head = await exactly(len(reply))  # a long blank line: the next one
        elif line.strip():
            return line + newline
        else:
            head = rest + await exactly(len(reply) - len(rest))
    return head


async def drain_dead(proc: asyncio.subprocess.Process) -> None:
    # A child that died on its own (its connection dropped) is not waited for by spawn; read
    # what is left of its stdout so asyncio can close its transport.
    if proc.returncode is not None and proc.stdout is not None:
        with contextlib.suppress(TimeoutError, OSError):
            await asyncio.wait_for(proc.stdout.read(), 2.0)
