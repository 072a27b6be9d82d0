"""Nix archives (NAR): a streaming reader that finds where one ends, and a serializer for tests.

A NAR is a sequence of padded strings (nix-protocols.md sections 1 and 3.1)::

    nar   = "nix-archive-1" node
    node  = "(" "type" ( "regular" ["executable" ""] "contents" <bytes>
                       | "symlink" "target" <str>
                       | "directory" { "entry" "(" "name" <str> "node" node ")" } ) ")"

Nothing says how long a NAR is, so a client reading ``DumpStorePath`` or an export stream must
parse it to know where it stops. ``copy_nar`` does that token by token, forwarding every byte it
consumed to a sink while hashing it, and never holds more than one chunk of a file in memory.
Directories are walked with an explicit stack, so deep trees cannot exhaust Python's recursion
limit. The reader accepts exactly what Nix writes: the canonical field order, byte-sorted unique
entry names, zero padding.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from offload.errors import ProtocolError, StoreError
from offload.store.path import nix32_encode

__all__ = [
    "NAR_MAGIC",
    "ByteReader",
    "NarStats",
    "Sink",
    "copy_nar",
    "dump_nar",
    "file_nar",
    "nar_hash_nix32",
]

NAR_MAGIC = b"nix-archive-1"
# Names and symlink targets are bounded by the file system (NAME_MAX, PATH_MAX); anything this
# large is a broken stream, not a file tree.
MAX_TOKEN = 64 * 1024
_U64 = struct.Struct("<Q")


class ByteReader(Protocol):
    """Structurally ``offload.protocol.wire.ByteReader``; redeclared so ``store`` imports nothing
    from the protocol layer above it."""

    async def readexactly(self, n: int) -> bytes: ...


Sink = Callable[[bytes], Awaitable[None]]


@dataclass(frozen=True)
class NarStats:
    size: int
    sha256: str  # hex digest of the whole NAR


def _pad(length: int) -> int:
    return (8 - length % 8) % 8


def _show(token: bytes) -> str:
    text = token[:40].decode("utf-8", "replace")
    return repr(text + ("..." if len(token) > 40 else ""))


class _NarStream:
    def __init__(
        self, reader: ByteReader, sink: Sink | None, chunk: int, limit: int | None
    ) -> None:
        self.reader = reader
        self.sink = sink
        self.chunk = chunk
        self.limit = limit
        self.offset = 0
        self.hasher = hashlib.sha256()
        # Small structural tokens are batched so the sink is not called once per 8 bytes.
        self.pending = bytearray()

    async def flush(self) -> None:
        if self.sink is not None:
            for i in range(0, len(self.pending), self.chunk):
                await self.sink(bytes(self.pending[i : i + self.chunk]))
        self.pending.clear()

    async def read(self, n: int, what: str) -> bytes:
        if self.limit is not None and self.offset + n > self.limit:
            raise ProtocolError(
                f"the NAR is longer than the {self.limit} bytes said of it"
                f" ({what} at byte {self.offset} claims {n} more)"
            )
        try:
            data = await self.reader.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            at = self.offset + len(exc.partial)
            msg = f"NAR stream ended at byte {at} while reading {what}"
            raise ProtocolError(f"{msg} ({len(exc.partial)} of {n} bytes)") from exc
        self.offset += n
        self.hasher.update(data)
        return data

    async def read_length(self, what: str) -> int:
        data = await self.read(8, f"the length of {what}")
        self.pending += data
        length: int = _U64.unpack(data)[0]
        return length

    async def padding(self, length: int, what: str) -> None:
        pad = _pad(length)
        if pad:
            start = self.offset
            data = await self.read(pad, f"the padding of {what}")
            if data != b"\0" * pad:
                raise ProtocolError(f"malformed NAR at byte {start}: non-zero padding after {what}")
            self.pending += data

    async def token(self, what: str) -> bytes:
        start = self.offset
        length = await self.read_length(what)
        if length > MAX_TOKEN:
            msg = f"malformed NAR at byte {start}: {what} claims {length} bytes"
            raise ProtocolError(f"{msg}, more than the {MAX_TOKEN} allowed")
        data = await self.read(length, what)
        self.pending += data
        await self.padding(length, what)
        if len(self.pending) >= self.chunk:
            await self.flush()
        return data

    async def expect(self, want: bytes, what: str) -> None:
        start = self.offset
        got = await self.token(what)
        if got != want:
            raise ProtocolError(
                f"malformed NAR at byte {start}: expected {what} {_show(want)}, found {_show(got)}"
            )

    def bad(self, start: int, expected: str, got: bytes) -> ProtocolError:
        return ProtocolError(
            f"malformed NAR at byte {start}: expected {expected}, found {_show(got)}"
        )

    async def contents(self) -> None:
        what = "the file contents"
        size = remaining = await self.read_length(what)
        await self.flush()
        while remaining:
            n = min(remaining, self.chunk)
            data = await self.read(n, what)
            if self.sink is not None:
                await self.sink(data)
            remaining -= n
        await self.padding(size, what)

    async def node(self) -> bool:
        """Read a node up to its closing, or a directory's head only; True for a directory."""
        await self.expect(b"(", "a node's opening")
        await self.expect(b"type", "a node's")
        start = self.offset
        kind = await self.token("a node type")
        if kind == b"regular":
            await self.regular()
        elif kind == b"symlink":
            await self.expect(b"target", "a symlink's")
            await self.token("a symlink target")
            await self.expect(b")", "a symlink's closing")
        elif kind != b"directory":
            raise self.bad(start, "'regular', 'symlink' or 'directory'", kind)
        return kind == b"directory"

    async def regular(self) -> None:
        start = self.offset
        field = await self.token("'executable' or 'contents'")
        if field == b"executable":
            await self.expect(b"", "the executable marker's value")
            start = self.offset
            field = await self.token("'contents'")
        if field != b"contents":
            raise self.bad(start, "'contents'", field)
        await self.contents()
        await self.expect(b")", "a regular file's closing")

    async def next_entry(self, open_dirs: list[bytes], *, node_finished: bool) -> bool:
        """Climb out of finished nodes up to the next entry's node; False when the NAR is done."""
        while True:
            if node_finished:
                if not open_dirs:
                    return False
                await self.expect(b")", "a directory entry's closing")
            start = self.offset
            field = await self.token("'entry' or ')' in a directory")
            if field == b")":
                open_dirs.pop()
                node_finished = True
                continue
            if field != b"entry":
                raise self.bad(start, "'entry' or ')' in a directory", field)
            await self.entry_head(open_dirs)
            return True

    async def entry_head(self, open_dirs: list[bytes]) -> None:
        await self.expect(b"(", "a directory entry's opening")
        await self.expect(b"name", "a directory entry's")
        start = self.offset
        name = await self.token("an entry name")
        if not name or name in {b".", b".."} or b"/" in name or b"\0" in name:
            raise ProtocolError(f"malformed NAR at byte {start}: invalid entry name {_show(name)}")
        if name <= open_dirs[-1]:
            raise ProtocolError(
                f"malformed NAR at byte {start}: entry {_show(name)} is not after"
                f" {_show(open_dirs[-1])}; entries must be unique and sorted"
            )
        open_dirs[-1] = name
        await self.expect(b"node", "a directory entry's")


async def copy_nar(
    reader: ByteReader,
    sink: Sink | None = None,
    *,
    chunk: int = 1 << 16,
    limit: int | None = None,
) -> NarStats:
    """Read exactly one NAR from ``reader``, passing its bytes to ``sink`` in order.

    Stops at the NAR's last byte, so the reader is left at whatever follows. Raises
    ``ProtocolError`` naming the byte offset on malformed input or an early end of stream, and
    with ``limit`` (the narSize the sender said) before a byte past it is read: a sender's
    word on a file's length is never what the reader holds or writes beyond that.
    """
    if chunk <= 0:
        raise ValueError("chunk must be positive")
    nar = _NarStream(reader, sink, chunk, limit)
    await nar.expect(NAR_MAGIC, "the NAR magic")
    # One entry per open directory: the last entry name seen there, for the sort check.
    open_dirs: list[bytes] = []
    while True:
        is_directory = await nar.node()
        if is_directory:
            open_dirs.append(b"")
        if not await nar.next_entry(open_dirs, node_finished=not is_directory):
            break
    await nar.flush()
    return NarStats(size=nar.offset, sha256=nar.hasher.hexdigest())


def _str(data: bytes) -> bytes:
    return _U64.pack(len(data)) + data + b"\0" * _pad(len(data))


def _dump(path: Path, out: list[bytes]) -> None:
    st = path.lstat()
    out.append(_str(b"(") + _str(b"type"))
    if stat.S_ISREG(st.st_mode):
        out.append(_str(b"regular"))
        # Only the owner's execute bit is recorded, as Nix does.
        if st.st_mode & stat.S_IXUSR:
            out.append(_str(b"executable") + _str(b""))
        out.append(_str(b"contents") + _str(path.read_bytes()))
    elif stat.S_ISLNK(st.st_mode):
        out.append(_str(b"symlink") + _str(b"target") + _str(os.fsencode(path.readlink())))
    elif stat.S_ISDIR(st.st_mode):
        out.append(_str(b"directory"))
        # Nix sorts entries by their bytes.
        for name, child in sorted((os.fsencode(c.name), c) for c in path.iterdir()):
            out.append(_str(b"entry") + _str(b"(") + _str(b"name") + _str(name) + _str(b"node"))
            _dump(child, out)
            out.append(_str(b")"))
    else:
        raise StoreError(f"cannot archive {str(path)!r}: not a regular file, symlink or directory")
    out.append(_str(b")"))


def dump_nar(path: Path) -> bytes:
    """Serialize ``path`` like ``nix-store --dump``; reads the whole tree into memory."""
    out = [_str(NAR_MAGIC)]
    try:
        _dump(Path(path), out)
    except OSError as exc:
        raise StoreError(f"cannot archive {str(path)!r}: {exc}") from exc
    return b"".join(out)


def file_nar(contents: bytes) -> bytes:
    """The NAR of one regular, non-executable file holding ``contents``."""
    node = _str(b"(") + _str(b"type") + _str(b"regular") + _str(b"contents") + _str(contents)
    return _str(NAR_MAGIC) + node + _str(b")")


def nar_hash_nix32(sha256_hex: str) -> str:
    """``sha256:<nix32>``, the form Nix prints as narHash, from a hex digest."""
    try:
        digest = bytes.fromhex(sha256_hex)
    except ValueError as exc:
        raise StoreError(f"invalid sha256 digest {sha256_hex!r}: not hexadecimal") from exc
    if len(digest) != hashlib.sha256().digest_size:
        raise StoreError(f"invalid sha256 digest {sha256_hex!r}: {len(digest)} bytes, not 32")
    return "sha256:" + nix32_encode(digest)
