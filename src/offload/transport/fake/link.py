"""``FakeLink``: the executor's ``MemberLink`` (``offload.scheduler.run``) over one ``FakeStore``.

It opens sessions (at most ``max_sessions`` at once; more wait), cancels them, and simulates an
unreachable host (``go_down``), connections that drop at chosen points (``break_next``), and a
builder whose slots other clients hold (``fill``: build sessions wait until ``free``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

from offload.errors import ProtocolError, SshError
from offload.protocol.serve import StoreClient
from offload.tasks import stop
from offload.transport.fake.faults import BreakPoint
from offload.transport.fake.server import Session
from offload.transport.fake.store import FakeStore

__all__ = ["FakeLink"]


class FakeLink:
    """The executor's ``Link`` over a ``FakeStore``: sessions, cancellation, failures.

    ``cancelled`` lists the derivations whose builds ``cancel`` stopped: still running, or
    stopped already because the session closed under them (the executor cancels after leaving
    the session). ``cancel_calls`` counts every call.
    """

    def __init__(self, store: FakeStore, *, max_sessions: int = 8, falls: bool = False) -> None:
        self.store = store
        self.max_sessions = max_sessions
        # A session that breaks takes the builder down with it (``go_down``): a host gone
        # away, not a connection dropped for a moment, which a run reconnects.
        self.falls = falls
        self.sessions_opened = 0
        self.sessions_refused = 0
        self.peak_sessions = 0
        self.cancel_calls = 0
        self.cancelled: list[str] = []
        self._up = True
        self._open: set[Session] = set()
        self._sessions: dict[StoreClient, Session] = {}
        self._slots = asyncio.Semaphore(max_sessions)
        # Set while another client holds every builder-side slot (``fill``).
        self._full: asyncio.Event | None = None
        self.full_waits = 0

    def fill(self) -> None:
        """From now on build sessions wait, as for a builder whose slots others hold."""
        if self._full is None:
            self._full = asyncio.Event()

    def free(self) -> None:
        """The other clients' builds ended: waiting build sessions go on."""
        if self._full is not None:
            self._full.set()
            self._full = None

    def go_down(self) -> None:
        """New sessions fail as with an unreachable ssh host; open ones are left alone."""
        self._up = False

    def come_up(self) -> None:
        self._up = True

    def break_next(self, at: BreakPoint = "request", *, message: str | None = None) -> None:
        self.store.break_next(at, message=message)

    def session(self) -> AbstractAsyncContextManager[StoreClient]:
        return self._session()

    @contextlib.asynccontextmanager
    async def build_session(
        self, *, on_wait: Callable[[], None] | None = None, fresh: bool = False
    ) -> AsyncIterator[StoreClient]:
        """A session to build on; while ``fill``-ed, ``on_wait`` is called once and it waits
        for ``free``, as the real link waits for a slot on the builder (``fresh`` changes
        nothing here: no session lingers)."""
        del fresh
        if (full := self._full) is not None:
            self.full_waits += 1
            if on_wait is not None:
                on_wait()
            await full.wait()
        async with self._session() as client:
            yield client

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[StoreClient]:
        name = self.store.name
        async with self._slots:
            if not self._up:
                self.sessions_refused += 1
                raise SshError(
                    f"cannot connect to builder '{name}': ssh: connect to host {name}"
                    " port 22: Connection refused",
                    hint="check it with `ssh` using the same options, or leave it out",
                )
            try:
                session = await self.store._open(name, None)  # noqa: SLF001
            except ProtocolError as exc:
                # As open_ssh_store: a failed handshake means the host cannot be used.
                self.sessions_refused += 1
                raise SshError(f"cannot connect to builder '{name}': {exc}") from exc
            self.sessions_opened += 1
            self._sessions[session.client] = session
            self._open.add(session)
            self.peak_sessions = max(self.peak_sessions, len(self._open))
            try:
                yield session.client
            finally:
                self._open.discard(session)
                if self.falls and not session.client.usable:
                    self.go_down()
                await session.close()

    async def cancel(self, client: StoreClient) -> None:
        """Stop whatever ``client``'s session runs remotely, as killing the remote would."""
        self.cancel_calls += 1
        session = self._sessions.get(client)
        if session is None:
            return
        server = session.server
        if not session.task.done():
            await stop(session.task)
        if server.stopped is not None:
            self.cancelled.append(server.stopped)
            server.stopped = None
