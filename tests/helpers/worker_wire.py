"""Scripted byte streams for worker-protocol unit tests: a daemon's replies fed to a reader,
a writer that keeps what the client wrote, and the daemon's error frame."""

from __future__ import annotations

import asyncio

from offload.protocol.wire import encode_int, encode_str
from offload.protocol.worker.records import Frame

__all__ = ["Stream", "Writer", "error_frame", "stream"]


class Stream:
    """A byte stream that ends after ``data``, as a pipe whose writer has closed.

    Its ``readexactly`` returns what is there and never buffers more than it was given, like
    ``asyncio.StreamReader`` at EOF; it does not need an event loop to be built.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    async def readexactly(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        self.pos += len(chunk)
        if len(chunk) < n:
            raise asyncio.IncompleteReadError(chunk, n)
        return chunk

    def rest(self) -> bytes:
        return self.data[self.pos :]


def stream(data: bytes) -> Stream:
    return Stream(data)


class Writer:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        return None


def error_frame(message: str, traces: tuple[str, ...] = ()) -> bytes:
    out = encode_int(Frame.ERROR) + encode_str("Error") + encode_int(0) + encode_str("Error")
    out += encode_str(message) + encode_int(0) + encode_int(len(traces))
    return out + b"".join(encode_int(0) + encode_str(t) for t in traces)
