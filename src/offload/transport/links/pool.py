"""``Link``: one per builder per run, lending out long-lived serve sessions.

The model: a ``Link`` owns a pool of ``nix-store --serve --write`` sessions to one store (or
``nix-daemon --stdio`` ones, for ssh-ng://: the transport's ``dialect`` says which). A
borrower writes ``async with link.session() as client`` and gets a handshaken ``StoreClient``;
at most ``max_sessions`` are out at once (a builder's slots plus one for copying), sessions are
opened lazily and an idle one is lent again rather than a new one opened. A session goes back to
the pool only if the body ended normally and the client is still in step with its remote;
otherwise it is discarded, and if a request was cut short (cancelled, connection lost) the
remote process tree is stopped first, because a build keeps running on the builder after the
local end goes away; a moment into that stop the session's input is closed and its ssh client
stopped at once, not politely (a remote Nix blocked reading or writing the session takes no
SIGTERM until then: ``lending.stop_cut_off``). ``link.cancel(client)`` does the same on
demand, e.g. when a speculative build lost or the user pressed Ctrl-C. A borrower whose
request failed (an ``OffloadError``: typically the connection was lost) is not held while that
stop runs: a hung builder would make it wait a connect timeout before it could report the
loss; ``aclose`` waits for it instead.

The sessions come from a ``SessionTransport`` (``base``). A link keeps the latest load a session
reported as ``link.load`` (a ``RemoteLoad``; None while the machine has not said, e.g. one
without ``/proc``), so a run learns every builder's load from the sessions it opens there
anyway, without a round trip of its own; ``on_load``, when set, is told each one.
``on_unstopped``, when set, is told why a session's remote process could not be stopped (else
it is a logged warning): a run makes it an event.
``link.restricted`` is set once a session found the builder's key restricted to the serve
program, or to ``nix-daemon --stdio`` for ssh-ng:// (``base.open_serve``): no pid, so a
cut-short session is stopped by closing it, and no load.

Builds may also be counted on the builder itself (``build_session``): a link given
``builder_slots`` and a ``slot_start`` opens a session per build holding one of the builder's
slot files, kept a while after its build for this process's next one there (``turns`` has the
model: lingering, turns, waiting, and the fallback to pooled sessions where no lock can be
taken). ``warm_builds`` opens build sessions ahead (while a run reads its graph), lingering as
after a build. ``aclose`` tears every session down at once.

Bytes through each session's stdin and stdout are counted in ``link.stats`` (protocol bytes,
before ssh's own compression and encryption).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import Self

from offload.errors import OffloadError, TransportError
from offload.load import RemoteLoad
from offload.protocol.store import StoreClient
from offload.transport.links.base import (
    LinkStats,
    LogSink,
    SessionPipes,
    SessionTransport,
    SlotStart,
)
from offload.transport.links.lending import (
    BuilderFullError,
    LogRoute,
    PooledSession,
    check_slot,
    close_shielded,
    shake_hands,
    stop_cut_off,
    wait_teardown,
)
from offload.transport.links.streams import (
    CountingReader,
    CountingWriter,
    keep_stderr,
    silence,
)
from offload.transport.links.turns import (
    BUSY_POLL,
    CLIENT_ID,
    LINGER,
    TURN,
    holds_slot,
    slot_fallback,
)
from offload.transport.wrapper import NO_CLIENT, WANT_FRESH

logger = logging.getLogger(__name__)

__all__ = ["BuilderFullError", "Link"]

SlotStartOne = Callable[[contextlib.AsyncExitStack], Awaitable[SessionPipes]]


class Link:
    """A pool of serve sessions to one store; use as ``async with``. See the module docstring."""

    def __init__(
        self,
        transport: SessionTransport,
        *,
        max_sessions: int = 2,
        substitute: bool = False,
        builder_slots: int = 0,
        slot_start: SlotStart | None = None,
    ) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.name = transport.name
        self.max_sessions = max_sessions
        # builders-use-substitutes: pass to query_valid_paths when sending inputs.
        self.substitute = substitute
        self.stats = LinkStats()
        # What the latest start line that told it said about the machine's load (offload.load).
        self.load: RemoteLoad | None = None
        self.on_load: Callable[[RemoteLoad], None] | None = None
        self.on_unstopped: Callable[[str], None] | None = None
        self.restricted = False
        self.refuse_untrusted = True  # a daemon that does not trust the user: ``shake_hands``
        # Builder-side slots (module docstring): how many, how build sessions are started
        # holding one (set by links that can), and why they are not counted there, once known.
        self.builder_slots = builder_slots
        self._slot_start = slot_start
        self.slot_fallback: str | None = None
        self.slots_on_builder: bool | None = None
        # Whose slots there the count is (``wrapper.parse_count``): "home", the builder user's
        # own; "nix", every account's that writes the builder's Nix state; None, not known.
        self.slots_counted: str | None = None
        # The last wait for a slot there was a yield: a free one left to a client waiting.
        self.slot_yielded = False
        self.client_id = CLIENT_ID
        # When a build was last refused a slot there: for WANT_FRESH s this client waits there
        # (its marker is that fresh) and never yields, or one that asks seldom (offload-hook:
        # Nix asks again 5 s after a postpone) would yield on every ask to one that polls.
        self._refused = -math.inf
        # A busy answer left this client's want marker on the builder (a slot taken there since
        # may have removed it; answers can cross): removed at the end (``machine.unmark``).
        self.marked = False
        self._transport = transport
        self._slots = asyncio.Semaphore(max_sessions)
        self._idle: list[PooledSession] = []
        # Build sessions between builds, still holding a builder-side slot (``LINGER``).
        self._lingering: dict[PooledSession, asyncio.Task[None]] = {}
        self._sessions: dict[StoreClient, PooledSession] = {}
        self._warming: set[asyncio.Future[None]] = set()  # build sessions opening ahead
        self._teardowns: set[asyncio.Task[None]] = set()
        self._closed = False
        self._retired = False  # ``retire``: no session is kept after its build

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
    async def session(self, on_log: LogSink | None = None) -> AsyncIterator[StoreClient]:
        """Borrow a handshaken client; its stderr lines go to ``on_log`` while borrowed."""
        async with self._slots:
            session = await self._checkout()
            async with self._lent(session, on_log, keep=True) as client:
                yield client

    @contextlib.asynccontextmanager
    async def build_session(
        self,
        on_log: LogSink | None = None,
        on_wait: Callable[[], None] | None = None,
        *,
        fresh: bool = False,
    ) -> AsyncIterator[StoreClient]:
        """Borrow a client to build on: one holding a builder-side slot for as long as it is
        lent and ``LINGER`` seconds after for this run's next build there, then closed (never
        left idle holding it longer); while every slot is held by someone
        else, ``on_wait`` is called once and the builder asked again every ``BUSY_POLL`` s.
        ``fresh``: a slot beyond those this run holds (a probe of a full builder), never one
        lingering or opened ahead, which this run counts already.
        Without builder-side slots (none set, or ``slot_fallback``), a pooled ``session``;
        ``fresh``, a new one, the idle ones let go: from before a fall (a reconnect's probe),
        one whose ssh is not reaped yet looks alive, and passed for an answer."""
        if self._slot_start is None or self.builder_slots <= 0 or self.slot_fallback:
            while fresh and self._idle:
                _ = self._discard_later(self._idle.pop(), kill=False)
            async with self._slots:
                session = await self._checkout()
                async with self._lent(session, on_log, keep=True) as client:
                    yield client
            return
        async with self._slots:
            session = await self._open_slot(on_wait, fresh=fresh)
            # One that fell back holds nothing on the builder: it may wait idle in the pool.
            holds = holds_slot(session.pipes)
            async with self._lent(session, on_log, keep=not holds, linger=holds) as client:
                yield client

    def _lingerer(self) -> PooledSession | None:
        """A build session still holding its slot after the last build, if one is alive."""
        while self._lingering:
            session, timer = self._lingering.popitem()
            timer.cancel()
            if session.client.usable and session.pipes.alive():
                return session
            _ = self._discard_later(session, kill=False)
        return None

    def _linger(self, session: PooledSession) -> None:
        async def expire() -> None:
            await asyncio.sleep(LINGER)
            if self._lingering.pop(session, None) is not None:
                await self._discard(session, kill=False)

        self._lingering[session] = asyncio.get_running_loop().create_task(expire())

    @contextlib.asynccontextmanager
    async def _lent(
        self, session: PooledSession, on_log: LogSink | None, *, keep: bool, linger: bool = False
    ) -> AsyncIterator[StoreClient]:
        """Lend ``session``; afterwards keep it idle (``keep``, and still in step), let it
        linger with its builder-side slot (``linger``), or close it."""
        session.logs.sink = on_log
        try:
            yield session.client
        except OffloadError:
            # The session failed (often: its connection is gone). The borrower reports it at
            # once; stopping the remote process may take a connect timeout on a hung builder,
            # so it goes on in the background and ``aclose`` waits for it.
            _ = self._discard_later(session, kill=not session.client.usable)
            raise
        except BaseException:
            await self._discard(session, kill=not session.client.usable)
            raise
        session.logs.sink = None
        reusable = session.client.usable and session.pipes.alive()
        reusable = reusable and not (self._closed or self._retired)
        if session.teardown is not None:
            await wait_teardown(session.teardown)  # cancelled while lent
        elif reusable and keep:
            self._idle.append(session)
        elif reusable and linger:
            if time.monotonic() - session.opened < TURN:
                self._linger(session)
            else:  # its turn is over: the slot goes back to the builder (``TURN``)
                await self._discard(session, kill=False)
        else:
            await self._discard(session, kill=not session.client.usable)

    async def _open_slot(self, on_wait: Callable[[], None] | None, *, fresh: bool) -> PooledSession:
        # ``waited``: answered busy in this call, so this client waits there (never yields);
        # ``told``: ``on_wait`` was called (busy or yielded: the build waits either way).
        start, waited, told = self._slot_start, False, False
        assert start is not None
        while True:
            if self._closed:
                raise TransportError(f"{self.name}: the link is closed")
            # Asked again each time: this run's own build that just ended there may hand over.
            if not fresh and (lingering := self._lingerer()) is not None:
                return lingering
            if not fresh and self._warming:  # one opened ahead is on its way (``warm_builds``)
                await asyncio.wait(self._warming, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                waiting = waited or time.monotonic() - self._refused < WANT_FRESH
                # A probe (``fresh``) asks as no client, as a session opened ahead does
                # (``warm_builds``): no build of its waits there for others to yield to.
                client = NO_CLIENT if fresh else self.client_id
                ask = functools.partial(
                    start, slots=self.builder_slots, client=client, waited=waiting
                )
                session = await self._open(ask)
            except BuilderFullError as full:
                self.slots_counted = full.count or self.slots_counted  # doctor's, when full
                self.slot_yielded = full.yielded
                if not full.yielded:  # one that yielded goes on yielding to the waiter
                    self._refused = time.monotonic()
                    waited, self.marked = True, self.marked or client != NO_CLIENT
                if not told and on_wait is not None:
                    on_wait()
                told = True
                await asyncio.sleep(BUSY_POLL)
                continue
            self._note_slot(session)
            return session

    def _note_slot(self, session: PooledSession) -> None:
        """What a build session's start line says of counting on the builder, kept."""
        self.slot_fallback = slot_fallback(session.pipes) or self.slot_fallback
        if self.slot_fallback is not None or holds_slot(session.pipes):
            self.slots_on_builder = self.slot_fallback is None
            self.slots_counted = session.pipes.count or self.slots_counted

    async def warm(self, count: int) -> None:
        """Open pooled sessions, in parallel, until ``count`` are open (idle ones count); a
        failure is left for the next borrower to meet and report."""
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

    async def warm_builds(self, count: int) -> None:
        """Open up to ``count`` build sessions ahead, in parallel, lingering for the first
        builds (as after a build); slots held by others are not waited for, a builder that
        does not count them gets pooled ones (``warm``); failures are the next borrower's."""
        start = self._slot_start
        if start is None or self.builder_slots <= 0 or self.slot_fallback:
            await self.warm(count)
            return

        async def one() -> None:
            # No permit: a lingering session holds none, and builds waiting for it may.
            with contextlib.suppress(OffloadError, BuilderFullError):
                # Asked as no client: a busy answer to a session opened ahead says nothing of
                # a build waiting there, and must leave no marker for others to yield to (one
                # outlived the run's only build, and another client's builds there yielded to
                # it, a slot idle, until it went stale: ``transport.wrapper``, turns).
                ask = functools.partial(
                    start, slots=self.builder_slots, client=NO_CLIENT, waited=False
                )
                session = await self._open(ask)
                self._note_slot(session)
                holds = holds_slot(session.pipes)
                if self._closed:
                    await self._discard(session, kill=False)
                elif holds:
                    self._linger(session)
                else:
                    self._idle.append(session)  # counted here only: it may wait in the pool

        missing = min(count, self.builder_slots) - len(self._lingering)
        self._warming.update(opening := [asyncio.ensure_future(one()) for _ in range(missing)])
        for task in opening:
            task.add_done_callback(self._warming.discard)
        await asyncio.gather(*opening)

    async def query_valid(self, paths: Iterable[str]) -> set[str]:
        """Which of ``paths`` are valid on this store, substituting first if ``substitute``."""
        async with self.session() as client:
            return await client.query_valid_paths(paths, substitute=self.substitute)

    def remote_pid(self, client: StoreClient) -> int | None:
        """The pid of ``client``'s serve process on its machine, as its start line said."""
        session = self._sessions.get(client)
        return None if session is None else session.pipes.pid

    def remote_born(self, client: StoreClient) -> str | None:
        """When that process started, as its start line said (``wrapper.parse_born``)."""
        session = self._sessions.get(client)
        return None if session is None else session.pipes.born

    async def cancel(self, client: StoreClient) -> None:
        """Stop ``client``'s remote process tree (and the build it runs) and discard it.

        Safe to call while another task is in a request on ``client`` (that request then fails)
        and after the session was discarded already (then it waits for that teardown).
        """
        session = self._sessions.get(client)
        if session is None:
            return
        await self._discard(session, kill=True)

    def retire(self) -> None:
        """Its builder's line changed (a new link stands for it): the sessions between builds
        close now, their builder-side slots with them, and each lent one after its build."""
        self._retired = True
        for timer in self._lingering.values():
            timer.cancel()
        for session in [*self._idle, *self._lingering]:
            _ = self._discard_later(session, kill=False)
        self._lingering.clear()

    async def aclose(self) -> None:
        """Close every session (stopping remote processes of any still lent), then the transport;
        when no remote process is to be stopped, the transport is let go at once (``_release``)
        and ends while the sessions do."""
        self._closed = True
        try:
            for timer in self._lingering.values():
                timer.cancel()
            idle = {*self._idle, *self._lingering}
            self._lingering.clear()
            # A teardown already under way may be stopping a remote process over the transport.
            kills = bool(self._teardowns)
            for session in list(self._sessions.values()):
                kill = session not in idle or not session.client.usable
                kills = kills or kill
                _ = self._discard_later(session, kill=kill)
            if not kills:
                self._release()
            while self._teardowns:
                # Awaiting a done task does not yield: its discard from the set would never run.
                ending = set(self._teardowns)
                await asyncio.wait(ending)
                self._teardowns -= ending
                for task in ending:
                    await task  # done: raises how it ended, if it failed
        finally:
            self._idle.clear()
            await self._transport.close()

    def _release(self) -> None:
        """Closing, with no session left to stop: the transport may begin to end now (an ssh
        master, ``MachineLink``); nothing to do for others."""

    @property
    def open_sessions(self) -> int:
        return len(self._sessions)

    # -- internals ---------------------------------------------------------------------------

    async def _checkout(self) -> PooledSession:
        if self._closed:
            raise TransportError(f"{self.name}: the link is closed")
        while self._idle:
            session = self._idle.pop()
            if session.client.usable and session.pipes.alive():
                return session
            await self._discard(session, kill=False)
        return await self._open()

    async def _open(self, start: SlotStartOne | None = None) -> PooledSession:
        stack = contextlib.AsyncExitStack()
        try:
            pipes = await (start or self._transport.start)(stack)
            if pipes.load is not None:
                self.load = pipes.load  # every session start re-reads it
                if self.on_load is not None:
                    self.on_load(pipes.load)
            self.restricted = self.restricted or pipes.restricted
            check_slot(self.name, pipes)
            logs = LogRoute()
            logs.tail.extend(pipes.early_stderr)
            client = pipes.dialect.client(
                CountingReader(pipes.reader, self.stats, silence(pipes, lambda: logs.heard)),
                CountingWriter(pipes.writer, self.stats),
                pipes.stderr,
                logs.log,
                self.name,
            )
            client.exporter = pipes.exporter
            session = PooledSession(client, stack, pipes, logs)
            stack.push_async_callback(client.close)
            keep_stderr(stack, pipes, logs.tail.append)
            self.stats.sessions_opened += 1
            await shake_hands(
                client, pipes, logs.tail, self.name, refuse_untrusted=self.refuse_untrusted
            )
        except BaseException:
            await close_shielded(stack)
            raise
        self._sessions[client] = session
        return session

    async def _discard(self, session: PooledSession, *, kill: bool) -> None:
        await wait_teardown(self._discard_later(session, kill=kill))

    def _discard_later(self, session: PooledSession, *, kill: bool) -> asyncio.Task[None]:
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

    def _unstopped(self, error: OffloadError) -> None:
        if self.on_unstopped is not None:
            self.on_unstopped(error.message)
        else:
            logger.warning("%s: could not stop remote process: %s", self.name, error)

    async def _teardown(self, session: PooledSession, *, kill: bool) -> None:
        try:
            if kill:
                await stop_cut_off(session.pipes, self._transport.kill, self._unstopped)
            await session.stack.aclose()
        finally:
            self._sessions.pop(session.client, None)
