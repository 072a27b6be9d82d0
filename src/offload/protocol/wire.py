"""Nix's primitive wire encoding (nix-protocols.md section 1).

Integers are unsigned 64-bit little-endian; strings are a length, the bytes, and zero padding to
a multiple of eight. Decoding reads from anything with an asyncio ``readexactly``; a stream that
ends early or pads with non-zero bytes raises ``ProtocolError`` naming what was being read.
``ByteReader`` and ``ByteWriter`` are the two halves of a connection as the protocol sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Iterable
from typing import Protocol

from offload.errors import ProtocolError

__all__ = [
    "SHELL_NOISE_HINT",
    "ByteReader",
    "ByteWriter",
    "bad_magic",
    "encode_int",
    "encode_str",
    "encode_strs",
    "padding",
    "read_bytes",
    "read_int",
    "read_str",
    "read_strs",
    "stream_ended",
]

_U64 = struct.Struct("<Q")
# Strings on this protocol are paths, names and messages; anything larger is a broken stream.
MAX_STRING = 64 * 1024 * 1024


class ByteReader(Protocol):
    async def readexactly(self, n: int) -> bytes: ...


class ByteWriter(Protocol):
    """The sending half of a connection: an ``asyncio.StreamWriter`` or anything like it."""

    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def close(self) -> None: ...


SHELL_NOISE_HINT = (
    "make the builder user's shell start-up files (~/.bashrc, ~/.profile, /etc/bashrc) print "
    "nothing when not interactive: put what they print under `case $- in *i*)`"
)


def bad_magic(magic: int, expected: int, what: str, peer: str) -> ProtocolError:
    """The error for a greeting that is not ``peer``'s magic (``what``: "server", "daemon").
    Text there is what the builder user's shell printed before ``peer`` ran (a start-up
    file's echo), the most common cause: it is named, with the fix."""
    text = _U64.pack(magic).rstrip(b"\0").decode("ascii", errors="replace")
    if text.isascii() and " ".join(text.split()).isprintable() and sum(map(str.isalpha, text)) > 1:
        return ProtocolError(
            f"the builder's shell printed {text!r}... where {peer} answers", hint=SHELL_NOISE_HINT
        )
    return ProtocolError(f"bad {what} magic {magic:#x}, expected {expected:#x}")


async def close_writer(writer: ByteWriter) -> None:
    """Close the sending half (the peer exits at EOF between requests), and wait for it where
    the writer can; a connection already gone is closed enough."""
    with contextlib.suppress(ConnectionError):
        writer.close()
        wait_closed = getattr(writer, "wait_closed", None)
        if wait_closed is not None:
            await wait_closed()


def padding(length: int) -> int:
    return (8 - length % 8) % 8


def encode_int(value: int) -> bytes:
    return _U64.pack(value)


def encode_str(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return _U64.pack(len(data)) + data + b"\0" * padding(len(data))


def encode_strs(values: Iterable[str]) -> bytes:
    items = list(values)
    return encode_int(len(items)) + b"".join(encode_str(v) for v in items)


def stream_ended(exc: BaseException) -> bool:
    """Whether ``exc``, met on a session, is its stream's end (or a pipe that broke), not words
    of the peer's: the wire's own "stream ended while reading ..." is one too."""
    if isinstance(exc, ProtocolError):
        return isinstance(exc.__cause__, asyncio.IncompleteReadError)
    return isinstance(exc, asyncio.IncompleteReadError | ConnectionError | EOFError)


async def _exactly(reader: ByteReader, n: int, what: str) -> bytes:
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError as exc:
        msg = f"stream ended while reading {what} ({len(exc.partial)} of {n} bytes)"
        raise ProtocolError(msg) from exc


async def read_int(reader: ByteReader, what: str = "an integer") -> int:
    value: int = _U64.unpack(await _exactly(reader, 8, what))[0]
    return value


async def read_bytes(reader: ByteReader, what: str = "a string", limit: int = MAX_STRING) -> bytes:
    # The descriptions are formatted only on error: this is the protocol's innermost loop.
    try:
        length: int = _U64.unpack(await reader.readexactly(8))[0]
    except asyncio.IncompleteReadError as exc:
        msg = f"stream ended while reading the length of {what} ({len(exc.partial)} of 8 bytes)"
        raise ProtocolError(msg) from exc
    if length > limit:
        raise ProtocolError(f"{what} claims {length} bytes, more than the {limit} allowed")
    data = await _exactly(reader, length, what)
    pad = padding(length)
    if pad and await _exactly(reader, pad, "the padding of a string") != b"\0" * pad:
        raise ProtocolError(f"non-zero padding after {what}")
    return data


async def read_str(reader: ByteReader, what: str = "a string") -> str:
    data = await read_bytes(reader, what)
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{what} is not valid UTF-8") from exc


async def read_bytes_str(reader: ByteReader, what: str = "a string") -> str:
    """A string Nix keeps as bytes (a setting's value, a path, a system name): its bytes that
    are not UTF-8 kept as surrogate escapes, so that it is written back as it came."""
    return (await read_bytes(reader, what)).decode("utf-8", "surrogateescape")


async def read_text(reader: ByteReader, what: str = "a text") -> str:
    """A string meant for people (a build's log line, an error message): bytes that are not
    UTF-8 become U+FFFD, as the serve protocol's log lines do, since a build prints whatever
    its tools print (a Latin-1 message), and that is no fault of the connection."""
    return (await read_bytes(reader, what)).decode(errors="replace")


async def read_strs(reader: ByteReader, what: str = "a list of strings") -> list[str]:
    count = await read_int(reader, f"the length of {what}")
    if count > MAX_STRING:
        raise ProtocolError(f"{what} claims {count} entries")
    return [await read_str(reader, f"entry {i} of {what}") for i in range(count)]
