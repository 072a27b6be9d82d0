"""What every command handler of one server session shares: its streams, the version the
client announced, its store, and reading a request's fields with the checks Nix makes.

The server gates every optional field on the version the *client* announced (``minor``), as
Nix 2.8's ``nix-store --serve`` does. A path that is not in the store directory, or a path a
command needs that is not valid, ends the session with Nix's error.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from offload.protocol.serve import ByteWriter
from offload.protocol.wire import read_bytes, read_int, read_str
from offload.transport.fake.faults import BreakPoint, fatal
from offload.transport.fake.paths import FakePath

if TYPE_CHECKING:
    from offload.transport.fake.store import FakeStore

__all__ = ["SessionIO"]


class SessionIO:
    """The server side of one session, less its commands."""

    def __init__(
        self,
        store: FakeStore,
        reader: asyncio.StreamReader,
        writer: ByteWriter,
        stderr: ByteWriter | None,
    ) -> None:
        self.store = store
        self.inp = reader
        self.out = writer
        self.err = stderr
        self.client_version = 0

    def check_break(self, at: BreakPoint) -> None:
        hangup = self.store._take_break(at)  # noqa: SLF001 (one unit with FakeStore)
        if hangup is not None:
            raise hangup

    @property
    def minor(self) -> int:
        return self.client_version & 0xFF

    def log(self, line: str) -> None:
        if self.err is not None:
            self.err.write(line.encode("utf-8", "surrogateescape") + b"\n")

    async def read_drv_str(self, what: str) -> str:
        # Derivation strings may hold any bytes; keep them as surrogate escapes like drv.py.
        return (await read_bytes(self.inp, what)).decode("utf-8", "surrogateescape")

    def check_path(self, path: str) -> str:
        if not path.startswith(self.store.store_dir + "/"):
            raise fatal(f"path '{path}' is not in the Nix store")
        return path

    async def read_path(self, what: str) -> str:
        return self.check_path(await read_str(self.inp, what))

    async def read_paths(self, what: str = "a path set") -> list[str]:
        count = await read_int(self.inp, f"the length of {what}")
        return [await self.read_path(f"entry {i} of {what}") for i in range(count)]

    def valid(self, path: str) -> FakePath:
        found = self.store.paths.get(path)
        if found is None:
            raise fatal(f"path '{path}' is not valid")
        return found
