"""Scripted server bytes for serve-protocol unit tests: the wire encoding written out by hand,
a writer that keeps what the client wrote, and a ServeClient past the handshake."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from offload.protocol.serve import ServeClient

__all__ = [
    "HANDSHAKE_OUT",
    "SERVER_HELLO",
    "A",
    "B",
    "Writer",
    "Z",
    "connected",
    "reader_with",
    "run",
    "s",
    "strs",
    "u64",
]

T = TypeVar("T")

# Hand-written from nix-protocols.md 2.2: magic 0x390c9deb then version 0x207, u64 little-endian.
HANDSHAKE_OUT = bytes.fromhex("eb9d0c39000000000702000000000000")
SERVER_HELLO = bytes.fromhex("cbee5254000000000702000000000000")

A = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a"
B = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b"
Z = "/nix/store/00000000000000000000000000000000-z"


def u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def s(v: str | bytes) -> bytes:
    data = v.encode() if isinstance(v, str) else v
    padded = -(-len(data) // 8) * 8
    return u64(len(data)) + data.ljust(padded, b"\0")


def strs(*vs: str) -> bytes:
    return u64(len(vs)) + b"".join(s(v) for v in vs)


class Writer:
    def __init__(self, *, dead: bool = False) -> None:
        self.dead = dead
        self.data = bytearray()
        self.writes = 0
        self.drains = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.data += data

    async def drain(self) -> None:
        if self.dead:
            raise BrokenPipeError
        self.drains += 1

    def close(self) -> None:
        self.closed = True


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def reader_with(data: bytes, *, eof: bool = True) -> asyncio.StreamReader:
    r = asyncio.StreamReader()
    r.feed_data(data)
    if eof:
        r.feed_eof()
    return r


async def connected(
    reply: bytes,
    *,
    hello: bytes = SERVER_HELLO,
    stderr: asyncio.StreamReader | None = None,
    on_log: Callable[[str], None] | None = None,
    eof: bool = True,
) -> tuple[ServeClient, Writer]:
    """A client past the handshake whose server will answer with ``reply``."""
    w = Writer()
    client = ServeClient(
        reader_with(hello + reply, eof=eof),
        w,
        stderr=stderr,
        on_log=on_log,
        name="b1",
        stderr_timeout=0.2,
    )
    await client.handshake()
    del w.data[:]
    w.writes = w.drains = 0
    return client, w
