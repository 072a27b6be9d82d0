"""``Link``: one per builder per run, lending out long-lived serve sessions.

The model: a ``Link`` owns a pool of ``nix-store --serve --write`` sessions to one store. A
borrower writes ``async with link.session() as client`` and gets a handshaken ``ServeClient``;
at most ``max_sessions`` are out at once (a builder's slots plus one for copying), sessions are
opened lazily and an idle one is lent again rather than a new one opened. A session goes back to
the pool only if the body ended normally and the client is still in step with its remote;
otherwise it is discarded, and if a request was cut short (cancelled, connection lost) the
remote process tree is stopped first, because a build keeps running on the builder after the
local end goes away. ``link.cancel(client)`` does the same on demand, e.g. when a speculative
build lost or the user pressed Ctrl-C. A borrower whose request failed (an ``OffloadError``:
typically the connection was lost) is not held while that stop runs: a hung builder would make
it wait a connect timeout before it could report the loss; ``aclose`` waits for it instead.

The sessions come from a ``SessionTransport`` (``base``). A link keeps the first load a session
reported as ``link.load`` (a ``RemoteLoad``; None while the machine has not said, e.g. one
without ``/proc``), so a run learns every builder's load from the session it opens there
anyway, without a round trip of its own. ``link.restricted`` is set once a session found the
builder's key restricted to the serve program (``base.open_serve``): no pid, so a cut-short
session is stopped by closing it, and no load.

Bytes through each session's stdin and stdout are counted in ``link.stats`` (protocol bytes,
before ssh's own compression and encryption).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from offload.errors import OffloadError, ProtocolError, TransportError
from offload.load import RemoteLoad
from offload.protocol.serve import ByteWriter, ServeClient
from offload.protocol.wire import ByteReader
from offload.transport.links.base import TAIL, LinkStats, LogSink, SessionPipes, SessionTransport

__all__ = ["Link"]

logger = logging.getLogger(__name__)


class _CountingReader:
    def __init__(self, inner: ByteReader, stats: LinkStats) -> None:
        self._inner = inner
        self._stats = stats

    async def readexactly(self, n: int) -> bytes:
        data = await self._inner.readexactly(n)
        self._stats.bytes_received += len(data)
        return data


class _CountingWriter:
    def __init__(self, inner: ByteWriter, stats: LinkStats) -> None:
        self._inner = inner
        self._stats = stats

    def write(self, data: bytes) -> None:
        self._stats.bytes_sent += len(data)
        self._inner.write(data)

    async def drain(self) -> None:
        await self._inner.drain()

    def close(self) -> None:
        self._inner.close()

    async def wait_closed(self) -> None:
        wait_closed = getattr(self._inner, "wait_closed", None)
        if wait_closed is not None:
            await wait_closed()


@dataclass(eq=False)
class _LogRoute:
    """A session's stderr: kept as a short tail for errors, passed to the current borrower."""

    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL))
    sink: LogSink | None = None

    def log(self, line: str) -> None:
        self.tail.append(line)
        if self.sink is not None:
            self.sink(line)


@dataclass(eq=False)
class _Session:
    client: ServeClient
    stack: contextlib.AsyncExitStack
    pipes: SessionPipes
    logs: _LogRoute
    teardown: asyncio.Task[None] | None = None


class Link:
    """A pool of serve sessions to one store; use as ``async with``. See the module docstring."""

    def __init__(
        self,
        transport: SessionTransport,
        *,
        max_sessions: int = 2,
        substitute: bool = False,
    ) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.name = transport.name
        self.max_sessions = max_sessions
        # builders-use-substitutes: pass to query_valid_paths when sending inputs.
        self.substitute = substitute
        self.stats = LinkStats()
        # What the first start line that told it said about the machine's load (offload.load).
        self.load: RemoteLoad | None = None
        self.restricted = False
        self._transport = transport
        self._slots = asyncio.Semaphore(max_sessions)
        self._idle: list[_Session] = []
        self._sessions: dict[ServeClient, _Session] = {}
        self._teardowns: set[asyncio.Task[None]] = set()
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @contextlib.asynccontextmanager
    async def session(self, on_log: LogSink | None = None) -> AsyncIterator[ServeClient]:
        """Borrow a handshaken client; its stderr lines go to ``on_log`` while borrowed."""
        async with self._slots:
            session = await self._checkout()
            session.logs.sink = on_log
            try:
                yield session.client
            except OffloadError:
                # The session failed (often: its connection is gone). The borrower reports it
                # at once; stopping the remote process may take a connect timeout on a hung
                # builder, so it goes on in the background and ``aclose`` waits for it.
                _ = self._discard_later(session, kill=not session.client.usable)
                raise
            except BaseException:
                await self._discard(session, kill=not session.client.usable)
                raise
            session.logs.sink = None
            if session.teardown is not None:
                await _wait(session.teardown)  # cancelled while lent
            elif session.client.usable and session.pipes.alive() and not self._closed:
                self._idle.append(session)
            else:
                await self._discard(session, kill=not session.client.usable)

    async def warm(self, count: int) -> None:
        """Open sessions, in parallel, until ``count`` are open (idle ones count), so the first
        builds on each slot do not each wait for a remote ``nix-store`` to start. A failure is
        left for the next borrower to meet and report."""
        missing = min(count, self.max_sessions) - len(self._sessions)
        if missing <= 0 or self._closed:
            return

        async def one() -> None:
            with contextlib.suppress(OffloadError):
                async with self._slots:
                    session = await self._open()
                    if self._closed:
                        await self._discard(session, kill=False)
                    else:
                        self._idle.append(session)

        await asyncio.gather(*(one() for _ in range(missing)))

    async def query_valid(self, paths: Iterable[str]) -> set[str]:
        """Which of ``paths`` are valid on this store, substituting first if ``substitute``."""
        async with self.session() as client:
            return await client.query_valid_paths(paths, substitute=self.substitute)

    def remote_pid(self, client: ServeClient) -> int | None:
        """The pid of ``client``'s serve process on its machine, as its start line said."""
        session = self._sessions.get(client)
        return None if session is None else session.pipes.pid

    async def cancel(self, client: ServeClient) -> None:
        """Stop ``client``'s remote process tree (and the build it runs) and discard it.

        Safe to call while another task is in a request on ``client`` (that request then fails)
        and after the session was discarded already (then it waits for that teardown).
        """
        session = self._sessions.get(client)
        if session is None:
            return
        await self._discard(session, kill=True)

    async def aclose(self) -> None:
        """Close every session (stopping remote processes of any still lent), then the transport."""
        self._closed = True
        try:
            for session in list(self._sessions.values()):
                lent = session not in self._idle
                await self._discard(session, kill=lent or not session.client.usable)
            while self._teardowns:
                await _wait(next(iter(self._teardowns)))
        finally:
            self._idle.clear()
            await self._transport.close()

    @property
    def open_sessions(self) -> int:
        return len(self._sessions)

    # -- internals ---------------------------------------------------------------------------

    async def _checkout(self) -> _Session:
        if self._closed:
            raise TransportError(f"{self.name}: the link is closed")
        while self._idle:
            session = self._idle.pop()
            if session.client.usable and session.pipes.alive():
                return session
            await self._discard(session, kill=False)
        return await self._open()

    async def _open(self) -> _Session:
        stack = contextlib.AsyncExitStack()
        try:
            pipes = await self._transport.start(stack)
            if self.load is None:
                self.load = pipes.load
            self.restricted = self.restricted or pipes.restricted
            logs = _LogRoute()
            logs.tail.extend(pipes.early_stderr)
            client = ServeClient(
                _CountingReader(pipes.reader, self.stats),
                _CountingWriter(pipes.writer, self.stats),
                stderr=pipes.stderr,
                on_log=logs.log,
                name=self.name,
            )
            session = _Session(client, stack, pipes, logs)
            stack.push_async_callback(client.close)
            self.stats.sessions_opened += 1
            try:
                await client.handshake(sent=pipes.hello_sent)
            except ProtocolError as exc:
                tail = " | ".join(list(logs.tail)[-5:]) or "(no output)"
                raise TransportError(
                    f"{self.name}: cannot start `nix-store --serve`: {exc.message}; stderr: {tail}",
                    hint="check that Nix is installed and on PATH for non-interactive "
                    "ssh sessions (remote-program= in the store URI names another program)",
                ) from exc
        except BaseException:
            await _close_shielded(stack)
            raise
        self._sessions[client] = session
        return session

    async def _discard(self, session: _Session, *, kill: bool) -> None:
        await _wait(self._discard_later(session, kill=kill))

    def _discard_later(self, session: _Session, *, kill: bool) -> asyncio.Task[None]:
        """Start tearing ``session`` down (once); the task is kept until it ends."""
        if session.teardown is None:
            with contextlib.suppress(ValueError):
                self._idle.remove(session)
            task = asyncio.get_running_loop().create_task(
                self._teardown(session, kill=kill), name=f"{self.name} session teardown"
            )
            session.teardown = task
            self._teardowns.add(task)
            task.add_done_callback(self._teardowns.discard)
        return session.teardown

    async def _teardown(self, session: _Session, *, kill: bool) -> None:
        try:
            if kill and session.pipes.pid is not None:
                try:
                    await self._transport.kill(session.pipes.pid)
                except OffloadError as exc:
                    logger.warning("%s: could not stop remote process: %s", self.name, exc)
            await session.stack.aclose()
        finally:
            self._sessions.pop(session.client, None)


async def _wait(task: asyncio.Task[None]) -> None:
    """Wait for a teardown; a second cancellation of the waiter does not stop the teardown."""
    await asyncio.shield(task)


async def _close_shielded(stack: contextlib.AsyncExitStack) -> None:
    """Close ``stack`` to the end even if the caller is cancelled meanwhile."""
    task = asyncio.get_running_loop().create_task(stack.aclose())
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise
