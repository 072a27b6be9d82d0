"""The coordinator's side of a hook's handover: its hello, and Nix's pipes made asyncio channels.

A hook process (``offload.hook.client``) sends a 4-byte length with its pipes attached
(``SCM_RIGHTS``: stdin, stderr and fd 4, those that are open), then that many bytes of
NUL-separated fields (``hook.client.encode_hello``): ``offload-hello-1``, the parent's pid,
which of 0, 2 and 4 were sent (comma-separated, in order), the number of arguments, the
arguments, then ``NAME=value`` for each variable of the environment. A hook whose coordinator
died sends ``offload-resume-1`` in place of the first field, and after the hello a 4-byte
length and that many bytes: what Nix said that its reader takes before Nix's pipe (the
settings, and the try Nix waits on, if any). Anything else, or a peer of another user, is
dropped without a word: only the user's own hook talks here. (Not ``marshal``:
its lengths are trusted, and four bytes claiming a list of 2^31 items allocate 16 GiB.)

The pipes become a ``StreamReader`` (stdin: a pipe the hook process forwards Nix's stdin into,
``offload.hook.client``) and two buffering write transports (stderr, fd 4):
a write never blocks the coordinator, however long Nix takes to read (its worker may be
waiting for another hook's reply meanwhile). Closing them flushes what is buffered first, so
Nix sees every line before the hook's exit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from offload.errors import OffloadError
from offload.hook.client import HELLO_MAGIC, RESUME_MAGIC
from offload.hook.serve import error_line
from offload.hook.wire import HookIO, Sink, fd_sink
from offload.typing_compat import override

__all__ = ["Channels", "Hello", "open_channels", "parse_hello", "peer_is_us", "receive_hello"]

_MAX_HELLO = 4 << 20  # an environment is a few KiB; this is not one
_MAX_FDS = 3
# Bytes of a build's log that may wait unread for Nix before more is left out (``_writer``).
LOG_BACKLOG = 16 << 20


@dataclass(frozen=True)
class Hello:
    argv: list[str]
    env: dict[str, str]
    parent: int
    fds: dict[int, int]  # the hook's fd number -> ours
    replay: bytes | None = None  # a resumed hook's: what its reader takes first


async def _readable(conn: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(conn.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(conn.fileno())


def peer_is_us(conn: socket.socket) -> bool:
    """Whether the process at ``conn``'s other end runs as this user (only the user's own
    hooks talk here)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return bool(uid == os.getuid())


def _number(field: bytes) -> int:
    if not (field.isdigit() and len(field) <= 10):
        raise ValueError("bad number in hello")
    return int(field)


def parse_hello(body: bytes, received: list[int]) -> Hello:
    """The hello in ``body`` with the ``received`` descriptors; ``ValueError`` if it is none."""
    fields = body.split(b"\0")
    if len(fields) < 4 or fields[0] not in {HELLO_MAGIC, RESUME_MAGIC}:
        raise ValueError("not a hello")
    names = [_number(n) for n in fields[2].split(b",")] if fields[2] else []
    argc = _number(fields[3])
    if len(set(names)) != len(names) or len(names) != len(received) or argc > len(fields) - 4:
        raise ValueError("bad hello")
    env = {}
    for item in fields[4 + argc :]:
        name, eq, value = item.partition(b"=")
        if not eq:
            raise ValueError("bad variable in hello")
        env[os.fsdecode(name)] = os.fsdecode(value)
    argv = [os.fsdecode(arg) for arg in fields[4 : 4 + argc]]
    replay = b"" if fields[0] == RESUME_MAGIC else None  # read after the hello
    fds = dict(zip(names, received, strict=True))
    return Hello(argv, env, _number(fields[1]), fds, replay)


async def _body(conn: socket.socket, head: bytes) -> bytes:
    if len(head) != 4:
        raise ValueError("short hello")
    (length,) = struct.unpack("!I", head)
    if length > _MAX_HELLO:
        raise ValueError("hello too long")
    return await _exactly(conn, length)


async def _exactly(conn: socket.socket, length: int) -> bytes:
    body = b""
    while len(body) < length:
        chunk = await asyncio.get_running_loop().sock_recv(conn, length - len(body))
        if not chunk:
            raise ValueError("hello cut short")
        body += chunk
    return body


async def receive_hello(conn: socket.socket) -> Hello | None:
    """The hook's hello with its pipes, or None (and nothing kept open) if it is not one."""
    received: list[int] = []
    try:
        if not peer_is_us(conn):
            return None
        await _readable(conn)
        head, received, _, _ = socket.recv_fds(conn, 4, _MAX_FDS, socket.MSG_CMSG_CLOEXEC)
        hello = parse_hello(await _body(conn, head), received)
        if hello.replay is not None:
            replay = await _body(conn, await _exactly(conn, 4))
            hello = dataclasses.replace(hello, replay=replay)
    except (OSError, ValueError):
        for fd in received:
            os.close(fd)
        return None
    return hello


class _Closed(asyncio.BaseProtocol):
    def __init__(self) -> None:
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @override
    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002 - asyncio's
        if not self.closed.done():
            self.closed.set_result(None)


async def _writer(
    fd: int | None, cap: int | None = None
) -> tuple[Sink, Callable[[], Awaitable[None]]]:
    """A non-blocking sink for ``fd`` and how to flush and close it. With ``cap``, what comes
    while that many bytes wait unread is dropped, and said (one line, once it has drained by
    half): under the nix-daemon, a client that stops reading (a paused pager) stops the
    daemon's worker reading the hook's log, and the coordinator, serving every hook, held
    the whole build's log in memory for it."""
    if fd is None:
        return (lambda _data: None), _nothing
    loop = asyncio.get_running_loop()
    try:
        transport, protocol = await loop.connect_write_pipe(_Closed, os.fdopen(fd, "wb", 0))
    except ValueError:  # a regular file (tests, a hook run by hand): writes never block there
        sink = fd_sink(fd, tolerant=True)

        async def close_fd() -> None:
            os.close(fd)

        return sink, close_fd

    dropped = 0

    def write(data: bytes) -> None:
        nonlocal dropped
        if transport.is_closing():
            return
        waiting = transport.get_write_buffer_size()
        if cap is not None and (waiting > cap or (dropped and waiting > cap // 2)):
            dropped += len(data)
            return
        if dropped:
            said = f"offload-hook: {dropped} bytes of log left out: Nix was not reading\n"
            transport.write(said.encode())
            dropped = 0
        transport.write(data)

    async def close() -> None:
        transport.close()
        await protocol.closed

    return write, close


async def _nothing() -> None:
    return None


@dataclass
class Channels:
    reader: asyncio.StreamReader
    io: HookIO
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def aclose(self) -> None:
        for close in self.closers:
            await close()

    def result(self, serving: asyncio.Task[int]) -> int:
        """The served hook's exit code; a failure is said on its stderr, as the hook would."""
        exc = serving.exception()
        if exc is None:
            return serving.result()
        if isinstance(exc, OffloadError):
            self.io.err(error_line(exc, "stopping"))
        else:
            self.io.err(f"offload-hook: internal error: {type(exc).__name__}: {exc}\n".encode())
        return 1


async def open_channels(fds: dict[int, int], *, replay: bytes = b"") -> Channels:
    """The hook's pipes as channels; its reader takes ``replay`` before Nix's stdin."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    if replay:
        reader.feed_data(replay)
    closers: list[Callable[[], Awaitable[None]]] = []
    if 0 in fds:
        stdin, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fds[0], "rb", 0)
        )

        async def close_stdin() -> None:
            stdin.close()

        closers.append(close_stdin)
    else:
        reader.feed_eof()
    err, close_err = await _writer(fds.get(2))
    log, close_log = await _writer(fds.get(4), LOG_BACKLOG)
    return Channels(reader, HookIO(err, log), [*closers, close_log, close_err])
