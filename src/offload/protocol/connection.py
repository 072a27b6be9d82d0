"""One serve connection's plumbing: requests one at a time, failures mapped, stderr heard.

The model: a ``ServeConnection`` owns one byte stream to one remote ``nix-store --serve``
(a local child, or one behind ssh) and runs requests on it one at a time (``_request``): each
is written in one batch, then its reply is read in full before the next may start. The remote
reports failures only on its stderr (``offload.protocol.stderr``): the connection reads it in
the background (when it is given), hands every line to ``on_log``, and turns "stdout ended"
into a ``RemoteError`` carrying the remote's own message. After any failure mid-request the
connection is out of step with the remote and refuses further requests. Bytes a caller's
producer pushes (``_stream_in``) go straight into the stream; a failure of the producer's own
passes through unchanged (``SinkFailed`` carries it past the mapping).

The requests themselves are ``offload.protocol.client.ServeClient``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable

from offload.errors import PeerSilent, ProtocolError
from offload.protocol.export import ChildBytes, Exporter, ExportFailed, StartedChild
from offload.protocol.records import CLIENT_VERSION
from offload.protocol.stderr import ErrorTail, StderrPump, strip_ansi
from offload.protocol.wire import ByteReader, ByteWriter, close_writer, stream_ended

__all__ = ["HANDSHAKE", "NarProducer", "ServeConnection", "Sink", "SinkFailed"]

logger = logging.getLogger(__name__)

Sink = Callable[[bytes], Awaitable[None]]
NarProducer = Callable[[Sink], Awaitable[object]]

# The one request allowed before the server's version is known.
HANDSHAKE = "the handshake"
# What ssh itself says as a connection ends (clientloop.c, serverloop's keepalive), on the
# session's stderr.
_SSH_CLOSED = re.compile(
    r"(?:(?:Shared connection|Connection) to \S+ closed(?: by remote host)?"
    r"|Timeout, server \S+ not responding)\.$"
)


class SinkFailed(Exception):
    """Carries an exception raised by a caller's sink or producer through our error mapping."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.exc = exc


class ServeConnection:
    """The stream, its lock and broken state, and its stderr; requests are the subclass's.

    Lines from ``stderr`` are passed to ``on_log`` without their line ending and with ANSI escapes
    kept (builder output is passed through as the remote printed it; a renderer decides what to
    show).
    """

    def __init__(
        self,
        reader: ByteReader,
        writer: ByteWriter,
        *,
        stderr: asyncio.StreamReader | None = None,
        on_log: Callable[[str], None] | None = None,
        name: str = "remote",
        stderr_timeout: float = 5.0,
    ) -> None:
        self.name = name
        self.server_version: int | None = None
        self._reader = reader
        self._writer = writer
        self.on_log = on_log
        # The serve protocol reports no build phases; kept for ``StoreClient``'s sake.
        self.on_phase: Callable[[str, str], None] | None = None
        # Set on a session on the local store: what it sends may be written by nix-store itself.
        self.exporter: Exporter | None = None
        self._stderr = StderrPump(stderr, self._line, name=name, timeout=stderr_timeout)
        self._error_tail = ErrorTail()
        self._lock = asyncio.Lock()
        self._broken: str | None = None
        self._closed = False

    @property
    def usable(self) -> bool:
        """False once a request failed or was interrupted, or after ``close``."""
        return self._broken is None

    async def close(self) -> None:
        """End the session: the remote exits at EOF between commands. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._broken = self._broken or "it was closed"
        await close_writer(self._writer)
        await self._stderr.close()

    # -- connection plumbing -----------------------------------------------------------------

    def _minor(self) -> int:
        if self.server_version is None:
            raise ProtocolError(f"{self.name}: request before the handshake")
        # The 2.8 server gates on our version and the 2.8 client on the server's; newer ones
        # take the minimum. The minimum is right for all of them.
        return min(self.server_version & 0xFF, CLIENT_VERSION & 0xFF)

    async def _stream_in(
        self, producer: NarProducer | StartedChild, limit: int | None, what: str
    ) -> int:
        """Let ``producer`` push bytes to the remote, at most ``limit``; returns how many."""
        if isinstance(producer, ChildBytes | StartedChild):
            try:
                return await producer.pump_into(self._writer)
            except ExportFailed as exc:
                raise SinkFailed(exc) from exc
            except ConnectionError:
                raise
            except OSError as exc:  # the connection's descriptor failed: it is gone for us
                raise ConnectionError(str(exc)) from exc
        sent = 0
        # Failures of this connection raised inside the producer's call to our sink; anything
        # else the producer raises is its own (e.g. the source store died) and passes unchanged.
        own: list[BaseException] = []

        async def sink(chunk: bytes) -> None:
            nonlocal sent
            if limit is not None and sent + len(chunk) > limit:
                # Bytes past narSize would be read as the next command; stop before them.
                own.append(ProtocolError(f"{what} is longer than its narSize {limit}"))
                raise own[-1]
            sent += len(chunk)
            try:
                self._writer.write(chunk)
                await self._writer.drain()
            except BaseException as exc:
                own.append(exc)
                raise

        try:
            await producer(sink)
        except BaseException as exc:
            if any(exc is e for e in own):
                raise
            raise SinkFailed(exc) from exc
        return sent

    async def _send(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    @contextlib.asynccontextmanager
    async def _request(self, what: str) -> AsyncIterator[None]:
        async with self._lock:
            if self._broken is not None:
                raise ProtocolError(f"{self.name}: connection unusable: {self._broken}")
            if self.server_version is None and what != HANDSHAKE:
                raise ProtocolError(f"{self.name}: {what} before the handshake")
            self._stderr.start()
            self._error_tail.clear()
            try:
                yield
            except SinkFailed as exc:
                self._broken = f"{what} was interrupted"
                raise exc.exc from exc.exc.__cause__
            except (ProtocolError, asyncio.IncompleteReadError, ConnectionError, EOFError) as exc:
                self._broken = f"{what} failed"
                error = await self._translate(exc, what)
                error.peer = self.name
                raise error from exc
            except BaseException:
                self._broken = f"{what} was interrupted"
                raise

    async def _translate(self, exc: Exception, what: str) -> ProtocolError:
        eof = stream_ended(exc)
        if eof:
            # The remote prints its error and then exits; wait for the rest of its stderr.
            await self._stderr.ended()
        remote = self._error_tail.as_error(self.name)
        if remote is not None:
            return remote
        if isinstance(exc, PeerSilent):
            return exc.during(self.name, what)
        if eof:
            said = self._error_tail.last
            # ssh's own word on the end, not the builder's: "Connection to H closed by remote
            # host." (its stderr and the builder's are one stream here).
            whose = "ssh's word" if _SSH_CLOSED.match(said or "") else "its last line"
            last = f" ({whose}: {said[:300]!r})" if said else ""
            return ProtocolError(f"{self.name} closed the connection during {what}{last}")
        if isinstance(exc, ProtocolError):
            return ProtocolError(f"{self.name}: {exc.message} (during {what})", hint=exc.hint)
        return ProtocolError(f"{self.name}: {exc} (during {what})")

    # -- stderr ------------------------------------------------------------------------------

    def _line(self, raw: bytes) -> None:
        line = raw.decode(errors="replace").rstrip("\r")
        self._error_tail.feed(strip_ansi(line))
        if self.on_log is not None:
            try:
                self.on_log(line)
            except Exception:
                # A broken log consumer must not stop the draining of stderr: the remote would
                # block once the pipe is full.
                logger.exception("on_log failed for %s", self.name)
