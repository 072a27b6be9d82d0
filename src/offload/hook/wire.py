"""The build-hook protocol, Nix's side of it read and our side written (nix-protocols.md 4).

Nix starts the hook once per worker and talks to it on three channels:

- stdin (binary, the serve protocol's encoding): first every global setting
  (``u64 1, name, value`` ... ``u64 0``), then any number of ``try`` requests
  (``"try", u64 amWilling, system, drvPath, [requiredFeatures]``). After the hook accepts one,
  Nix sends the input closure and the wanted outputs and closes stdin.
- stderr (fd 2, and stdout, which Nix points at the same pipe): reply lines ``# accept`` (then
  the machine's name on the next line), ``# decline``, ``# decline-permanently`` or
  ``# postpone``; ``@nix {json}`` lines are structured log messages; anything else before the
  reply is copied to the user's terminal and after it dropped.
- fd 4: the build log, bytes as the builder printed them.

Everything read here is outside input: store paths are checked to be store paths, strings and
lists are bounded (``offload.protocol.wire``), and an unknown request is a ``ProtocolError``.
A stdin that does not start with Nix's settings, or brings no ``try`` after them, is not Nix
(offload-hook run by hand with a number, as Nix starts it, or fed by another program): its
error names what was expected, with the first bytes read, and says how Nix is told to start
the hook (``NOT_NIX_HINT``).
Newer Nix sends more settings than 2.8 and the same requests (4.8): unknown settings are kept
and ignored by the reader of the mapping.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum

from offload.errors import ProtocolError
from offload.numerals import is_decimal
from offload.protocol.records import said_store_paths
from offload.protocol.wire import ByteReader, read_bytes_str, read_int, read_str, read_strs
from offload.store.path import STORE_DIR, StorePath, split_name_version

__all__ = [
    "NOT_NIX_HINT",
    "Accepted",
    "CountingReader",
    "HookIO",
    "Reply",
    "TryRequest",
    "Turn",
    "UnusableRequest",
    "fd_sink",
    "read_accepted",
    "read_request",
    "read_settings",
    "verbosity",
    "write_nix_json",
    "write_reply",
]

# Nix 2.8 sends about 90 settings; newer ones more. Far more than that is not Nix talking.
_MAX_SETTINGS = 10_000
_MAX_FEATURES = 10_000  # a derivation requires a few; more is a corrupt stream


class Reply(Enum):
    ACCEPT = "accept"
    DECLINE = "decline"
    DECLINE_PERMANENTLY = "decline-permanently"
    POSTPONE = "postpone"


@dataclass(frozen=True)
class TryRequest:
    am_willing: bool  # the local machine has a free build slot for it
    system: str
    drv_path: str
    features: frozenset[str]  # requiredSystemFeatures

    @property
    def name(self) -> str:
        """The derivation's name, as it names itself (with version)."""
        return StorePath.parse(self.drv_path).derivation_name

    @property
    def pname(self) -> str:
        """The name history learns durations under: the derivation's name without version."""
        return split_name_version(self.name)[0]


@dataclass(frozen=True)
class Accepted:
    inputs: tuple[str, ...]  # the closure of the inputs, valid in the local store
    wanted: tuple[str, ...]  # output names not yet valid locally


def verbosity(argv: list[str]) -> int:
    """Nix passes its verbosity as the last argument (newer Nix may put more before it)."""
    if len(argv) > 1 and is_decimal(argv[-1]) and len(argv[-1]) < 3:
        return int(argv[-1])
    return 3


class CountingReader:
    """``reader``, counting the bytes read through it."""

    def __init__(self, reader: ByteReader) -> None:
        self.reader = reader
        self.count = 0

    async def readexactly(self, n: int) -> bytes:
        data = await self.reader.readexactly(n)
        self.count += len(data)
        return data


# Said with a stdin that is not Nix's: offload-hook run by hand with Nix's arguments (what
# ``offload.hook.usage`` cannot tell from argv), or fed by another program than Nix.
NOT_NIX_HINT = (
    "offload-hook reads what Nix writes to its build hook, and only Nix should start it: set "
    "build-hook in nix.conf (`offload hook install --print` prints the line) or pass --option "
    'build-hook "$(command -v offload-hook)" to nix-build'
)


# The first bytes of a stdin that is not Nix's, shown in the error.
_SHOWN = 24


class _FirstBytes:
    """``reader``, keeping the first ``_SHOWN`` bytes read through it, and the count."""

    def __init__(self, reader: ByteReader) -> None:
        self.reader = reader
        self.first = b""
        self.count = 0

    async def readexactly(self, n: int) -> bytes:
        try:
            data = await self.reader.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            self._keep(exc.partial)
            raise
        self._keep(data)
        return data

    def _keep(self, data: bytes) -> None:
        self.first = (self.first + data)[:_SHOWN]
        self.count += len(data)


async def read_settings(reader: ByteReader) -> dict[str, str]:
    """Nix's settings preamble, which Nix writes as it starts its hook: what comes first on
    stdin that is not one is said as no Nix there, with its first bytes (``NOT_NIX_HINT``).
    Once a whole setting was read it is Nix's preamble: a fault after that is said as it is."""
    seen = _FirstBytes(reader)
    settings: dict[str, str] = {}
    try:
        return await _read_settings(seen, settings)
    except ProtocolError as exc:
        if settings:
            raise
        got = repr(seen.first) + ("..." if seen.count > len(seen.first) else "")
        if not seen.first:
            got = "nothing"
        elif "stream ended" in exc.message:
            got += " and then the end"
        message = (
            f"stdin is not Nix's build hook protocol: expected Nix's settings first, got {got}"
        )
        raise ProtocolError(message, hint=NOT_NIX_HINT) from exc


async def _read_settings(reader: ByteReader, settings: dict[str, str]) -> dict[str, str]:
    """The settings, each added to ``settings`` as it is read."""
    # Constant descriptions: this runs once per derivation Nix sends away, ~90 settings each.
    for _ in range(_MAX_SETTINGS):
        more = await read_int(reader, "the settings preamble")
        if more == 0:
            return settings
        if more != 1:
            raise ProtocolError(f"bad settings preamble marker {more}")
        # As bytes, as Nix has them: a value not UTF-8 (a path) failed the whole build.
        name = await read_bytes_str(reader, "a setting's name")
        settings[name] = await read_bytes_str(reader, "a setting's value")
    raise ProtocolError(f"more than {_MAX_SETTINGS} settings in the preamble")


def _store_path(text: str, what: str) -> str:
    said_store_paths([text], STORE_DIR, f"{what} is not a store path")
    return text


class UnusableRequest(ProtocolError):
    """A whole ``try`` was read, but what it names is no derivation offload can build: Nix
    waits for a reply to it, and the stream goes on (the hook declines it; Nix builds it)."""


async def read_request(reader: ByteReader) -> TryRequest | None:
    """The next ``try``, or None when Nix closed stdin between requests (it is done);
    ``UnusableRequest`` when it is read whole but names no derivation offload can build."""
    try:
        command = await read_str(reader, "the next request")
    except ProtocolError as exc:
        if "stream ended" in exc.message and "(0 of 8 bytes)" in exc.message:
            return None
        raise
    if command != "try":
        message = f"expected Nix's next request ('try'), got {command[:40]!r}"
        raise ProtocolError(message, hint=NOT_NIX_HINT)
    willing = await read_int(reader, "amWilling")
    system = await read_bytes_str(reader, "the derivation's system")
    drv_path = await read_str(reader, "the derivation path")
    count = await read_int(reader, "the number of required features")
    if count > _MAX_FEATURES:
        raise ProtocolError(f"the required features claim {count} entries")
    features = frozenset([await read_bytes_str(reader, "a required feature") for _ in range(count)])
    try:
        _store_path(drv_path, "the derivation")
    except ProtocolError as exc:
        raise UnusableRequest(exc.message) from exc
    if not drv_path.endswith(".drv"):
        raise UnusableRequest(f"{drv_path[:200]!r} is not a derivation")
    return TryRequest(willing != 0, system, drv_path, features)


async def read_accepted(reader: ByteReader) -> Accepted:
    inputs = tuple(_store_path(p, "an input") for p in await read_strs(reader, "the input closure"))
    wanted = tuple(await read_strs(reader, "the wanted outputs"))
    return Accepted(inputs, wanted)


Sink = Callable[[bytes], None]


class Turn(Enum):
    """Whose turn it is in the hook's talk with Nix, as ``HookIO.on_turn`` is told it."""

    ASKED = "asked"  # a try was read: Nix waits for the reply
    REPLYING = "replying"  # a decline or postpone is being written: Nix may have it or not
    ANSWERED = "answered"  # declined or postponed: Nix waits for nothing until its next try
    ACCEPTED = "accepted"  # about to accept: Nix waits for the build's end


@dataclass
class HookIO:
    """The hook's two channels to Nix: ``err``, its stderr (replies, messages, ``@nix`` lines),
    and ``log``, fd 4 (the build log). Writers, so one coordinator can serve many hooks.
    ``accepted``: a build was accepted on them; Nix reads no other reply after that.
    ``on_turn``: told each ``Turn``, so the hook process knows whether Nix waits for a reply
    and can give one itself, or have a new coordinator give it, should the coordinator die
    (``offload.hook.client``). A reply is told before it is written and after (told only
    after, a death in between would leave Nix waiting or answer one try twice), an accept
    just before (after it, Nix reads only ``@nix`` lines). ``on_settings``: told the settings
    preamble's length in bytes once it is read."""

    err: Sink
    log: Sink
    accepted: bool = False
    on_turn: Callable[[Turn], None] | None = None
    on_settings: Callable[[int], None] | None = None

    def turn(self, turn: Turn) -> None:
        if self.on_turn is not None:
            self.on_turn(turn)

    def settings_read(self, size: int) -> None:
        if self.on_settings is not None:
            self.on_settings(size)

    @classmethod
    def of_fds(cls, err: int = 2, log: int = 4) -> HookIO:
        return cls(fd_sink(err), fd_sink(log, tolerant=True))


def fd_sink(fd: int, *, tolerant: bool = False) -> Sink:
    """Blocking writes of whole buffers to ``fd``; ``tolerant`` drops them once it is closed
    (a log pipe Nix stopped reading is not our build's failure)."""

    def write(data: bytes) -> None:
        try:
            while data:
                data = data[os.write(fd, data) :]
        except OSError:
            if not tolerant:
                raise

    return write


def write_reply(io: HookIO, reply: Reply, machine: str | None = None) -> None:
    """One reply; ``machine`` follows ``accept`` on its own line, as Nix reads it next."""
    text = f"# {reply.value}\n"
    if reply is Reply.ACCEPT:
        assert machine is not None
        text += machine.replace("\n", " ") + "\n"
        io.accepted = True
        io.turn(Turn.ACCEPTED)
    else:
        io.turn(Turn.REPLYING)
    io.err(text.encode())
    if reply is not Reply.ACCEPT:
        io.turn(Turn.ANSWERED)


def write_nix_json(io: HookIO, message: Mapping[str, object]) -> None:
    """A structured log message (``@nix {...}``), as Nix's own JSON logger writes them."""
    io.err(b"@nix " + json.dumps(message, separators=(",", ":")).encode() + b"\n")
