"""The server side of ``nix-store --serve --write`` over in-memory pipes (nix-protocols.md 2).

A session is three one-way in-memory pipes, stdin, stdout and stderr as with a real
``nix-store`` child, and one server task running a ``Server`` on them.

The server answers as Nix 2.8's ``nix-store --serve --write`` does (nix-store.cc ``opServe``):
it sends its magic and version 0x207 as soon as it has read the client's magic, and gates every
optional field on the version the *client* announced. A StorePathSet is written sorted by base
name. As in Nix there are no in-band errors: a failing command prints ``error: ...`` on stderr
and the session ends (stdout and stderr closed), so the client sees EOF and raises
``RemoteError`` carrying the message. Per command:

1 QueryValidPaths   lock is read and ignored; with substitute, the store's ``cache`` paths asked
                    are made valid first (after its ``cache_says`` lines on stderr, as Nix
                    says a cache it leaves out). Replies the valid subset.
2, 3, 4, 9          QueryPathInfos, DumpStorePath, ImportPaths, AddToStoreNar: see ``transfer``.
7 QueryClosure      the forward closure; includeOutputs is read and ignored.
8 BuildDerivation   see ``builds``.
Others              5 ExportPaths and 6 BuildPaths exist in Nix but not here; any other number
                    is ``error: unknown serve command N``. Both end the session.

The pipes buffer without limit (no backpressure) and a write to a session whose server has
ended fails at ``drain`` with ``BrokenPipeError``, as a write to a dead process's stdin does.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable
from dataclasses import dataclass

from offload.errors import ProtocolError
from offload.protocol.serve import SERVE_MAGIC_1, SERVE_MAGIC_2, Op, ServeClient
from offload.protocol.wire import encode_int, encode_strs, read_int
from offload.transport.fake.builds import BuildCommands
from offload.transport.fake.faults import Hangup, fatal
from offload.transport.fake.paths import sorted_paths
from offload.transport.fake.transfer import TransferCommands
from offload.typing_compat import override

__all__ = ["SERVER_VERSION", "Pipe", "Server", "Session"]

SERVER_VERSION = 0x207


class Pipe:
    """One direction of an in-memory connection: what is written comes out of ``reader``."""

    def __init__(self) -> None:
        self.reader = asyncio.StreamReader()
        self.closed = False
        self.reader_gone = False

    def write(self, data: bytes) -> None:
        if data and not self.closed and not self.reader_gone:
            self.reader.feed_data(data)

    async def drain(self) -> None:
        if self.reader_gone:
            raise BrokenPipeError(errno.EPIPE, "the fake store's session has ended")

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.reader.feed_eof()


class LatePipe(Pipe):
    """A session's stderr whose bytes come out of ``reader`` only right after its stdout's next
    bytes (``ThenPipe``): sshd and ssh may pass on what a builder wrote to stdout
    (the build's result) before what it wrote to stderr just before (its last log lines), both
    in one event-loop turn of the client, which may then read the result first."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[bytes] = []

    @override
    def write(self, data: bytes) -> None:
        if data and not self.closed and not self.reader_gone:
            self.held.append(data)

    def release(self) -> None:
        held, self.held = b"".join(self.held), []
        super().write(held)

    @override
    def close(self) -> None:
        self.release()
        super().close()


class RoundTripPipe(LatePipe):
    """A ``LatePipe`` whose bytes come out only right before its stdout's bytes after the next
    (``BeforeAndAfterPipe``): later than the reply they were written before by any number of
    the client's loop turns, but before the reply to its next request, which ssh still passes
    on after them (a round trip is a barrier: ``ServeClient``)."""

    def __init__(self) -> None:
        super().__init__()
        self.older: list[bytes] = []

    def release_older(self) -> None:
        older, self.older = b"".join(self.older), []
        Pipe.write(self, older)

    def mark(self) -> None:
        self.older += self.held
        self.held = []

    @override
    def close(self) -> None:
        self.release_older()
        super().close()


class BeforeAndAfterPipe(Pipe):
    """A ``Pipe`` that lets a ``RoundTripPipe`` go on around each of its writes."""

    def __init__(self, stderr: RoundTripPipe) -> None:
        super().__init__()
        self.stderr = stderr

    @override
    def write(self, data: bytes) -> None:
        self.stderr.release_older()
        super().write(data)
        self.stderr.mark()


class ThenPipe(Pipe):
    """A ``Pipe`` that calls ``then`` after each write (a ``LatePipe``'s release)."""

    def __init__(self, then: Callable[[], None]) -> None:
        super().__init__()
        self.then = then

    @override
    def write(self, data: bytes) -> None:
        super().write(data)
        self.then()


class Server(TransferCommands, BuildCommands):
    """The server side of one session."""

    async def run(self) -> None:
        try:
            await self.handshake()
            while (op := await self.next_op()) is not None:
                self.check_break("request")
                await self.dispatch(op)
                await self.out.drain()
        except Hangup as exc:
            if exc.message is not None:
                self.log(exc.message)
        except ProtocolError as exc:
            # The client's bytes ended or were malformed mid-command; Nix says as much and exits.
            self.log(f"error: {exc.message}")
        finally:
            self.out.close()
            if self.err is not None:
                self.err.close()

    async def handshake(self) -> None:
        if await read_int(self.inp, "the client magic") != SERVE_MAGIC_1:
            raise fatal("protocol mismatch")
        self.check_break("handshake")
        # 2.8 answers before it reads the client's version (nix-protocols.md 2.2).
        self.out.write(encode_int(SERVE_MAGIC_2) + encode_int(SERVER_VERSION))
        await self.out.drain()
        self.client_version = await read_int(self.inp, "the client version")

    async def next_op(self) -> int | None:
        try:
            data = await self.inp.readexactly(8)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise fatal("unexpected end-of-file") from exc
            return None  # EOF between commands: the session ends normally
        return int.from_bytes(data, "little")

    async def dispatch(self, op: int) -> None:
        match op:
            case Op.QUERY_VALID_PATHS:
                await read_int(self.inp, "lock")
                substitute = await read_int(self.inp, "substitute")
                paths = await self.read_paths()
                if substitute:
                    self.store.substitute(paths, self.log)
                self.out.write(encode_strs(sorted_paths(p for p in paths if self.store.has(p))))
            case Op.QUERY_PATH_INFOS:
                await self.query_path_infos()
            case Op.DUMP_STORE_PATH:
                await self.dump_store_path()
            case Op.IMPORT_PATHS:
                await self.import_paths()
            case Op.QUERY_CLOSURE:
                await read_int(self.inp, "includeOutputs")
                paths = await self.read_paths()
                for path in paths:
                    self.valid(path)
                self.out.write(encode_strs(sorted_paths(self.store.closure(paths))))
            case Op.BUILD_DERIVATION:
                await self.build_derivation()
            case Op.ADD_TO_STORE_NAR:
                await self.add_to_store_nar()
            case Op.EXPORT_PATHS | Op.BUILD_PATHS:
                raise fatal(f"the fake store does not implement serve command {op}")
            case _:
                raise fatal(f"unknown serve command {op}")


@dataclass(eq=False)
class Session:
    """One open session: the client end, its server and the task running that server."""

    client: ServeClient
    server: Server
    task: asyncio.Task[None]

    async def close(self) -> None:
        await self.client.close()
        # The server ends at EOF on its stdin; a build still running is stopped on the way.
        # wait() rather than await: a server task cancelled by FakeLink.cancel is no error here.
        await asyncio.wait({self.task})
        if not self.task.cancelled():
            self.task.result()  # a crash of the fake itself must not pass silently
