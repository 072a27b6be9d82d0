"""``FakeStore``: one machine's in-memory store, and sessions to it.

``paths`` maps each valid path to a ``FakePath`` (its references and real NAR bytes), shared by
every session to that machine, and the store records what happened to it: ``builds``
(derivations whose builder ran, in order), ``received`` (paths registered by AddToStoreNar or
ImportPaths, in order) and ``interrupted`` (builds stopped because their client went away or was
cancelled). ``open_client`` and ``connect`` hand out a ``ServeClient`` that has done its
handshake over a new session (``server``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Literal

from offload.protocol.serve import ByteWriter, ServeClient
from offload.store.path import STORE_DIR
from offload.transport.fake.builds import Builder
from offload.transport.fake.faults import BreakPoint, Breaks, Hangup
from offload.transport.fake.paths import FakePath
from offload.transport.fake.server import (
    BeforeAndAfterPipe,
    LatePipe,
    Pipe,
    RoundTripPipe,
    Server,
    Session,
    ThenPipe,
)

__all__ = ["FakeStore"]


class FakeStore:
    """One machine's store, shared by all its sessions. See the module docstring."""

    def __init__(
        self,
        name: str = "fake",
        paths: Iterable[FakePath] = (),
        *,
        builder: Builder | None = None,
        store_dir: str = STORE_DIR,
        late_stderr: bool | Literal["a round trip"] = False,
        cache: Iterable[FakePath] = (),
        cache_says: Iterable[str] = (),
    ) -> None:
        self.name = name
        # Its binary caches (builders-use-substitutes): what a substituting query makes valid,
        # and the lines its Nix says then (a cache it leaves out).
        self.cache = {p.path: p for p in cache}
        self.cache_says = tuple(cache_says)
        # Each session's stderr reaches its client only right after the next reply on stdout,
        # as when ssh passed a build's result on before its last log lines (``LatePipe``);
        # "a round trip": only right before the reply after (``RoundTripPipe``).
        self.late_stderr = late_stderr
        self.store_dir = store_dir
        self.builder = builder
        self.paths: dict[str, FakePath] = {p.path: p for p in paths}
        self.builds: list[str] = []
        self.received: list[str] = []
        self.interrupted: list[str] = []
        self._breaks = Breaks()
        self._tasks: set[asyncio.Task[None]] = set()

    def has(self, path: str) -> bool:
        return path in self.paths

    def add(self, *paths: FakePath) -> None:
        """Make ``paths`` valid directly (test set-up: no checks, nothing recorded)."""
        for fp in paths:
            self.paths[fp.path] = fp

    def substitute(self, paths: Iterable[str], say: Callable[[str], None]) -> None:
        """A substituting query's part: ``cache_says`` said, then the ``cache``'s ``paths``
        made valid (with no closure check: test set-up)."""
        for line in self.cache_says:
            say(line)
        for path in paths:
            if path in self.cache:
                self.paths.setdefault(path, self.cache[path])

    def closure(self, paths: Iterable[str]) -> set[str]:
        """The valid paths reachable from ``paths`` through references, ``paths`` included."""
        seen: set[str] = set()
        todo = [p for p in paths if p in self.paths]
        while todo:
            path = todo.pop()
            if path not in seen:
                seen.add(path)
                todo += [r for r in self.paths[path].references if r in self.paths]
        return seen

    def break_next(self, at: BreakPoint = "request", *, message: str | None = None) -> None:
        """Make the next session to reach ``at`` drop its connection there.

        ``handshake``: after the client's magic, before the server's reply. ``request``: after
        the next command's opcode. ``add-to-store``: half-way through an AddToStoreNar's NAR
        (nothing is registered). ``dump``: after half of a DumpStorePath's NAR. ``build-start``:
        before the builder runs. ``build-end``: after a successful build registered its outputs,
        before the reply. ``message`` is written to stderr first, as is: by default
        ``Connection to <name> closed by remote host.`` (ssh's words; the client raises
        ``ProtocolError``); an ``error: ...`` line makes it a ``RemoteError``; ``""`` writes
        nothing. Several calls queue up.
        """
        if message is None:
            message = f"Connection to {self.name} closed by remote host."
        self._breaks.add(at, message or None)

    def _take_break(self, at: BreakPoint) -> Hangup | None:
        return self._breaks.take(at)

    async def serve(
        self,
        reader: asyncio.StreamReader,
        writer: ByteWriter,
        stderr: ByteWriter | None = None,
    ) -> None:
        """Serve one session on these streams until the client's EOF or an error.

        ``writer`` and ``stderr`` are closed at the end, as a process's would be at exit.
        """
        await Server(self, reader, writer, stderr).run()

    async def _open(self, name: str | None, on_log: Callable[[str], None] | None) -> Session:
        stdin = Pipe()
        stdout, stderr = _pipes(self.late_stderr)
        server = Server(self, stdin.reader, stdout, stderr)

        async def run() -> None:
            try:
                await server.run()
            finally:
                stdin.reader_gone = True

        task = asyncio.create_task(run(), name=f"fake store {self.name}")
        # Keep a reference: the loop holds tasks only weakly.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        client = ServeClient(
            stdout.reader, stdin, stderr=stderr.reader, on_log=on_log, name=name or self.name
        )
        session = Session(client, server, task)
        try:
            await client.handshake()
        except BaseException:
            await session.close()
            raise
        return session

    async def open_client(
        self, *, name: str | None = None, on_log: Callable[[str], None] | None = None
    ) -> ServeClient:
        """A client that has done its handshake; its session ends when it is closed."""
        return (await self._open(name, on_log)).client

    @contextlib.asynccontextmanager
    async def connect(
        self, *, name: str | None = None, on_log: Callable[[str], None] | None = None
    ) -> AsyncIterator[ServeClient]:
        """``open_client`` that closes the client and waits for the server on exit."""
        session = await self._open(name, on_log)
        try:
            yield session.client
        finally:
            await session.close()


def _pipes(late: bool | Literal["a round trip"]) -> tuple[Pipe, Pipe]:
    """A session's (stdout, stderr): where ``late``, stderr comes right after stdout's next
    bytes, or a round trip later."""
    if late == "a round trip":
        lagging = RoundTripPipe()
        return BeforeAndAfterPipe(lagging), lagging
    if late:
        stderr = LatePipe()
        return ThenPipe(stderr.release), stderr
    return Pipe(), Pipe()
