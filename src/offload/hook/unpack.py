"""A small NAR unpacked by Python, so a tiny output costs no ``nix-store --restore`` process.

Every output the hook brings home used to start a ``nix-store --restore`` (about 30 ms of CPU on
this machine, a fifth of all the CPU a trivial derivation costs end to end). An output whose NAR
is at most ``SMALL_NAR`` bytes is read into memory and written here instead; bigger ones still go
through Nix, where streaming matters and 30 ms does not.

The reader accepts exactly what ``offload.store.nar`` accepts (nix-protocols.md 3.1: the
canonical field order, entry names non-empty, without ``/`` or NUL, not ``.`` or ``..``, sorted
and unique, zero padding) and raises ``StoreError`` on anything else, as on a name or target
the file system refuses (longer than ``NAME_MAX``). The tree is written under a
fresh temporary name that the caller owns: directories are created by us (never followed through
a symlink, since a name is used once per directory), files with ``O_EXCL | O_NOFOLLOW``, symlinks
as they are. Modes and times are left to ``nix-store --register-validity``, which canonicalises
them as the store does.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from offload.errors import StoreError
from offload.store.nar import NAR_MAGIC

__all__ = ["SMALL_NAR", "unpack_nar"]

SMALL_NAR = 1 << 20
_U64 = struct.Struct("<Q")


class _Tokens:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self) -> bytes:
        if self.at + 8 > len(self.data):
            raise StoreError(f"NAR ends at byte {self.at}, inside a length")
        (length,) = _U64.unpack_from(self.data, self.at)
        start = self.at + 8
        end = start + length
        padded = end + (-length % 8)
        if padded > len(self.data):
            raise StoreError(f"NAR ends at byte {len(self.data)}, inside a {length}-byte string")
        if any(self.data[end:padded]):
            raise StoreError(f"NAR has non-zero padding at byte {end}")
        self.at = padded
        return self.data[start:end]

    def expect(self, want: bytes) -> None:
        at = self.at
        got = self.take()
        if got != want:
            raise StoreError(f"NAR byte {at}: expected {want!r}, found {got[:40]!r}")


def _node(tokens: _Tokens, path: Path) -> None:
    tokens.expect(b"(")
    tokens.expect(b"type")
    kind = tokens.take()
    if kind == b"regular":
        _regular(tokens, path)
    elif kind == b"symlink":
        tokens.expect(b"target")
        target = tokens.take()
        if not target or b"\0" in target:
            raise StoreError(f"NAR symlink target {target[:40]!r} is not a path")
        path.symlink_to(os.fsdecode(target))
    elif kind == b"directory":
        path.mkdir(mode=0o755)
        _entries(tokens, path)
        return  # the directory's ")" closed the entry list
    else:
        raise StoreError(f"NAR node of unknown type {kind[:40]!r}")
    tokens.expect(b")")


def _regular(tokens: _Tokens, path: Path) -> None:
    field = tokens.take()
    executable = field == b"executable"
    if executable:
        tokens.expect(b"")
        field = tokens.take()
    if field != b"contents":
        raise StoreError(f"NAR regular file without contents (found {field[:40]!r})")
    contents = tokens.take()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o755 if executable else 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(contents)


def _entries(tokens: _Tokens, directory: Path) -> None:
    previous = b""
    while True:
        field = tokens.take()
        if field == b")":
            return
        if field != b"entry":
            raise StoreError(f"NAR directory: expected an entry or its end, found {field[:40]!r}")
        tokens.expect(b"(")
        tokens.expect(b"name")
        name = tokens.take()
        if not name or name in {b".", b".."} or b"/" in name or b"\0" in name:
            raise StoreError(f"NAR entry name {name[:40]!r} is not a file name")
        if name <= previous:
            raise StoreError(f"NAR entry {name[:40]!r} is not after {previous[:40]!r}")
        previous = name
        tokens.expect(b"node")
        _node(tokens, directory / os.fsdecode(name))
        tokens.expect(b")")


def unpack_nar(data: bytes, dest: Path) -> None:
    """Write the tree ``data`` (one whole NAR) describes at ``dest``, which must not exist."""
    tokens = _Tokens(data)
    tokens.expect(NAR_MAGIC)
    try:
        _node(tokens, dest)
    except RecursionError as exc:
        raise StoreError("NAR nests directories deeper than any output does") from exc
    except OSError as exc:
        # A name or symlink target the file system refuses (longer than NAME_MAX, ...).
        name = os.fsencode(exc.filename or "")[-60:]
        raise StoreError(f"NAR cannot be written here: {exc.strerror}: ...{name!r}") from exc
    if tokens.at != len(data):
        raise StoreError(f"NAR has {len(data) - tokens.at} bytes after its end")
