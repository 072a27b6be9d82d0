"""Client for ``nix-store --serve --write`` (nix-protocols.md section 2) over any byte stream.

The model: one ``ServeClient`` owns one connection to one remote store (a local ``nix-store``
child, or one behind ssh). Requests run one at a time: each is written in one batch, then its reply
is read in full before the next request may start, so a connection can serve any number of
requests in a row. The protocol has no in-band errors: when a command fails, the remote prints
``error: ...`` on its stderr and exits, and the client only sees its stdout end. The client
therefore reads the remote's stderr in the background (when it is given), hands every line to
``on_log`` (builder output arrives there too), and turns "stdout ended" into a ``RemoteError``
carrying the remote's own message. After any failure mid-request the connection is out of step
with the remote and refuses further requests.

Failed builds are not errors of the connection: ``build_derivation`` returns a ``BuildResult``
whose ``status`` says what happened.

NARs are never buffered whole: ``dump_store_path`` pushes chunks into a sink as they arrive and
``add_to_store_nar`` pulls them from a producer, so ``copy_paths`` streams between two stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from functools import partial
from typing import Protocol

from offload.errors import ProtocolError, RemoteError, StoreError
from offload.protocol.wire import (
    ByteReader,
    encode_int,
    encode_str,
    encode_strs,
    read_int,
    read_str,
    read_strs,
)
from offload.store.drv import Derivation
from offload.store.nar import copy_nar

__all__ = [
    "CLIENT_VERSION",
    "SERVE_MAGIC_1",
    "SERVE_MAGIC_2",
    "BuildOptions",
    "BuildResult",
    "BuildStatus",
    "ByteWriter",
    "NarProducer",
    "Op",
    "PathInfo",
    "ServeClient",
    "Sink",
    "copy_paths",
    "encode_basic_derivation",
    "strip_ansi",
    "topo_sort_infos",
]

SERVE_MAGIC_1 = 0x390C9DEB
SERVE_MAGIC_2 = 0x5452EECB
CLIENT_VERSION = 0x207
EXPORT_MAGIC = 0x4558494E  # 'NIXE' (section 3.2)
_MAJOR = 0x200

logger = logging.getLogger(__name__)

Sink = Callable[[bytes], Awaitable[None]]
NarProducer = Callable[[Sink], Awaitable[object]]


class ByteWriter(Protocol):
    """The sending half of a connection: an ``asyncio.StreamWriter`` or anything like it."""

    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def close(self) -> None: ...


class Op(IntEnum):
    QUERY_VALID_PATHS = 1
    QUERY_PATH_INFOS = 2
    DUMP_STORE_PATH = 3
    IMPORT_PATHS = 4
    EXPORT_PATHS = 5
    BUILD_PATHS = 6
    QUERY_CLOSURE = 7
    BUILD_DERIVATION = 8
    ADD_TO_STORE_NAR = 9


class BuildStatus(IntEnum):
    BUILT = 0
    SUBSTITUTED = 1
    ALREADY_VALID = 2
    PERMANENT_FAILURE = 3
    INPUT_REJECTED = 4
    OUTPUT_REJECTED = 5
    TRANSIENT_FAILURE = 6
    CACHED_FAILURE = 7
    TIMED_OUT = 8
    MISC_FAILURE = 9
    DEPENDENCY_FAILED = 10
    LOG_LIMIT_EXCEEDED = 11
    NOT_DETERMINISTIC = 12
    RESOLVES_TO_ALREADY_VALID = 13
    NO_SUBSTITUTERS = 14


_SUCCESS = frozenset(
    {
        BuildStatus.BUILT,
        BuildStatus.SUBSTITUTED,
        BuildStatus.ALREADY_VALID,
        BuildStatus.RESOLVES_TO_ALREADY_VALID,
    }
)


@dataclass(frozen=True)
class PathInfo:
    """What a store knows about one valid path; ``nar_hash`` as the store printed it."""

    path: str
    deriver: str | None
    references: tuple[str, ...]
    nar_size: int
    nar_hash: str
    ca: str | None = None
    sigs: tuple[str, ...] = ()


@dataclass(frozen=True)
class BuildOptions:
    """Per-build settings sent with BuildDerivation; the defaults are what Nix 2.8 sends."""

    max_silent_time: int = 0
    build_timeout: int = 0
    max_log_size: int = 0
    nr_repeats: int = 0
    enforce_determinism: bool = True
    keep_failed: bool = False

    def encode(self, minor: int) -> bytes:
        # The server reads exactly the fields the announced minor version implies (2.4).
        out = [encode_int(self.max_silent_time), encode_int(self.build_timeout)]
        if minor >= 2:
            out.append(encode_int(self.max_log_size))
        if minor >= 3:
            out += [encode_int(self.nr_repeats), encode_int(int(self.enforce_determinism))]
        if minor >= 7:
            out.append(encode_int(int(self.keep_failed)))
        return b"".join(out)


@dataclass(frozen=True)
class BuildResult:
    """The remote's answer to BuildDerivation.

    ``error_msg`` has Nix's ANSI colours removed. ``built_outputs`` maps output names to full
    store paths (from the realisations the server sends).
    """

    status: BuildStatus
    error_msg: str
    times_built: int = 0
    is_non_deterministic: bool = False
    start_time: int = 0
    stop_time: int = 0
    built_outputs: Mapping[str, str] = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return self.status in _SUCCESS


_ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor movement
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC: titles, hyperlinks
    r"|\x1b[@-Z\\-_]"  # other two-byte escapes
)


def strip_ansi(s: str) -> str:
    return _ANSI.sub("", s)


def _sorted_paths(paths: Iterable[str]) -> list[str]:
    # Nix writes a StorePathSet sorted by base name; do the same so requests match Nix's bytes.
    return sorted(set(paths), key=lambda p: (p.rsplit("/", 1)[-1], p))


def topo_sort_infos(infos: Mapping[str, PathInfo]) -> list[PathInfo]:
    """Order ``infos`` dependencies first, ignoring references outside it and self-references."""
    done: set[str] = set()
    on_stack: set[str] = set()
    order: list[PathInfo] = []
    for root in sorted(infos):
        if root in done:
            continue
        # Iterative DFS: closures can be deep enough to hit Python's recursion limit.
        stack: list[tuple[str, Iterable[str]]] = [(root, iter(sorted(infos[root].references)))]
        on_stack.add(root)
        while stack:
            path, refs = stack[-1]
            for ref in refs:
                if ref == path or ref not in infos or ref in done:
                    continue
                if ref in on_stack:
                    raise StoreError(f"reference cycle between {path} and {ref}")
                on_stack.add(ref)
                stack.append((ref, iter(sorted(infos[ref].references))))
                break
            else:
                stack.pop()
                on_stack.discard(path)
                done.add(path)
                order.append(infos[path])
    return order


class _SinkFailed(Exception):
    """Carries an exception raised by a caller's sink or producer through our error mapping."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.exc = exc


_HINTS = (
    ("is not valid", "copy the path's references to the remote first (dependencies first)"),
    ("is not allowed", "the remote must run `nix-store --serve --write`"),
    ("protocol mismatch", "the remote program is not `nix-store --serve`"),
    ("hash mismatch", "the NAR sent did not match the narHash given for it"),
)

_HANDSHAKE = "the handshake"

# How much of an unterminated stderr line is kept before it is passed on anyway.
_MAX_LINE = 64 * 1024


class ServeClient:
    """One connection to a ``nix-store --serve --write`` process.

    Lines from ``stderr`` are passed to ``on_log`` without their line ending and with ANSI escapes
    kept (builder output is passed through as the remote printed it; a renderer decides what to
    show). Call ``handshake`` first and ``close`` at the end.
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
        self._stderr = stderr
        self.on_log = on_log
        self._stderr_timeout = stderr_timeout
        self._stderr_task: asyncio.Task[None] | None = None
        self._error_lines: list[str] = []
        self._lock = asyncio.Lock()
        self._broken: str | None = None
        self._closed = False

    @property
    def usable(self) -> bool:
        """False once a request failed or was interrupted, or after ``close``."""
        return self._broken is None

    # -- public requests ---------------------------------------------------------------------

    async def handshake(self) -> int:
        """Exchange magics and versions; returns the server's version."""
        async with self._request(_HANDSHAKE):
            await self._send(encode_int(SERVE_MAGIC_1) + encode_int(CLIENT_VERSION))
            magic = await read_int(self._reader, "the server magic")
            if magic != SERVE_MAGIC_2:
                raise ProtocolError(f"bad server magic {magic:#x}, expected {SERVE_MAGIC_2:#x}")
            version = await read_int(self._reader, "the server version")
            if version & 0xFF00 != _MAJOR:
                raise ProtocolError(f"unsupported serve protocol version {version:#x}")
            self.server_version = version
        return version

    async def query_valid_paths(
        self, paths: Iterable[str], *, lock: bool = False, substitute: bool = False
    ) -> set[str]:
        request = (
            encode_int(Op.QUERY_VALID_PATHS)
            + encode_int(int(lock))
            + encode_int(int(substitute))
            + encode_strs(_sorted_paths(paths))
        )
        async with self._request("QueryValidPaths"):
            await self._send(request)
            return set(await read_strs(self._reader, "the valid paths"))

    async def query_path_infos(self, paths: Iterable[str]) -> dict[str, PathInfo]:
        """Infos of the valid paths among ``paths``; invalid ones are left out."""
        request = encode_int(Op.QUERY_PATH_INFOS) + encode_strs(_sorted_paths(paths))
        async with self._request("QueryPathInfos"):
            await self._send(request)
            infos: dict[str, PathInfo] = {}
            while path := await read_str(self._reader, "a path info"):
                infos[path] = await self._read_path_info(path)
            return infos

    async def query_closure(
        self, paths: Iterable[str], *, include_outputs: bool = False
    ) -> set[str]:
        request = (
            encode_int(Op.QUERY_CLOSURE)
            + encode_int(int(include_outputs))
            + encode_strs(_sorted_paths(paths))
        )
        async with self._request("QueryClosure"):
            await self._send(request)
            return set(await read_strs(self._reader, "the closure"))

    async def dump_store_path(self, path: str, sink: Sink) -> int:
        """Stream the NAR of ``path`` into ``sink`` chunk by chunk; returns its size.

        If ``sink`` raises, its exception propagates unchanged and this connection is unusable
        (the rest of the NAR is still in flight).
        """

        async def guarded(chunk: bytes) -> None:
            try:
                await sink(chunk)
            except BaseException as exc:
                raise _SinkFailed(exc) from exc

        async with self._request(f"DumpStorePath of {path}"):
            await self._send(encode_int(Op.DUMP_STORE_PATH) + encode_str(path))
            stats = await copy_nar(self._reader, guarded)
            return stats.size

    async def add_to_store_nar(
        self, info: PathInfo, nar: NarProducer, *, registration_time: int | None = None
    ) -> None:
        """Register ``info.path`` remotely; ``nar(sink)`` must push exactly ``info.nar_size`` bytes.

        The remote checks the hash and size itself and registers nothing on a mismatch. If fewer
        or more bytes are pushed, ``ProtocolError`` is raised and the connection is unusable.
        """
        regtime = int(time.time()) if registration_time is None else registration_time
        header = b"".join(
            (
                encode_int(Op.ADD_TO_STORE_NAR),
                encode_str(info.path),
                encode_str(info.deriver or ""),
                encode_str(info.nar_hash),
                encode_strs(_sorted_paths(info.references)),
                encode_int(regtime),
                encode_int(info.nar_size),
                encode_int(0),  # ultimate: the remote did not build it
                encode_strs(sorted(set(info.sigs))),
                encode_str(info.ca or ""),
            )
        )
        async with self._request(f"AddToStoreNar of {info.path}"):
            await self._send(header)
            sent = await self._stream_in(nar, info.nar_size, f"the NAR of {info.path}")
            if sent != info.nar_size:
                msg = f"the NAR of {info.path} has {sent} bytes, narSize says {info.nar_size}"
                raise ProtocolError(msg)
            ack = await read_int(self._reader, "the AddToStoreNar reply")
            if ack != 1:
                raise ProtocolError(f"unexpected AddToStoreNar reply {ack}")

    async def import_paths(self, export: NarProducer) -> None:
        """Send the export stream (section 3.2, final ``0`` included) pushed by ``export(sink)``."""
        async with self._request("ImportPaths"):
            await self._send(encode_int(Op.IMPORT_PATHS))
            await self._stream_in(export, None, "the export stream")
            ack = await read_int(self._reader, "the ImportPaths reply")
            if ack != 1:
                raise ProtocolError(f"unexpected ImportPaths reply {ack}")

    async def build_derivation(
        self,
        drv_path: str,
        drv: Derivation,
        *,
        input_srcs: Iterable[str] | None = None,
        options: BuildOptions = BuildOptions(),
    ) -> BuildResult:
        """Build ``drv`` remotely; its inputs must already be valid there.

        ``input_srcs`` replaces the derivation's own: like build-remote, pass the whole input
        closure when the derivation has input derivations (there are none on this wire).
        """
        minor = self._minor()
        request = b"".join(
            (
                encode_int(Op.BUILD_DERIVATION),
                encode_str(drv_path),
                encode_basic_derivation(drv, input_srcs),
                options.encode(minor),
            )
        )
        async with self._request(f"BuildDerivation of {drv_path}"):
            await self._send(request)
            return await self._read_build_result(drv_path, minor)

    async def close(self) -> None:
        """End the session: the remote exits at EOF between commands. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._broken = self._broken or "it was closed"
        with contextlib.suppress(ConnectionError):
            self._writer.close()
            wait_closed = getattr(self._writer, "wait_closed", None)
            if wait_closed is not None:
                await wait_closed()
        task = self._stderr_task
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), self._stderr_timeout)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # -- replies ----------------------------------------------------------------------------

    async def _read_path_info(self, path: str) -> PathInfo:
        r = self._reader
        deriver = await read_str(r, f"the deriver of {path}")
        references = await read_strs(r, f"the references of {path}")
        await read_int(r, f"the download size of {path}")
        nar_size = await read_int(r, f"the narSize of {path}")
        nar_hash, ca, sigs = "", "", []
        if self._minor() >= 4:
            nar_hash = await read_str(r, f"the narHash of {path}")
            ca = await read_str(r, f"the ca of {path}")
            sigs = await read_strs(r, f"the signatures of {path}")
        return PathInfo(
            path=path,
            deriver=deriver or None,
            references=tuple(references),
            nar_size=nar_size,
            nar_hash=nar_hash,
            ca=ca or None,
            sigs=tuple(sigs),
        )

    async def _read_build_result(self, drv_path: str, minor: int) -> BuildResult:
        r = self._reader
        code = await read_int(r, "the build status")
        try:
            status = BuildStatus(code)
        except ValueError as exc:
            raise ProtocolError(f"unknown build status {code}") from exc
        error_msg = strip_ansi(await read_str(r, "the build error message"))
        times_built, non_det, start, stop = 0, False, 0, 0
        if minor >= 3:
            times_built = await read_int(r, "timesBuilt")
            non_det = bool(await read_int(r, "isNonDeterministic"))
            start = await read_int(r, "startTime")
            stop = await read_int(r, "stopTime")
        # Nix 2.8-2.10 send builtOutputs whatever the client version (nix-protocols.md 2.6), and
        # newer servers send it to clients announcing minor >= 6, as we do: always read it.
        count = await read_int(r, "the number of built outputs")
        store_dir = drv_path.rsplit("/", 1)[0]
        outputs: dict[str, str] = {}
        for _ in range(count):
            drv_output = await read_str(r, "a built output id")
            realisation = await read_str(r, "a built output realisation")
            name, out_path = _parse_realisation(drv_output, realisation, store_dir)
            outputs[name] = out_path
        return BuildResult(
            status=status,
            error_msg=error_msg,
            times_built=times_built,
            is_non_deterministic=non_det,
            start_time=start,
            stop_time=stop,
            built_outputs=outputs,
        )

    # -- connection plumbing -----------------------------------------------------------------

    def _minor(self) -> int:
        if self.server_version is None:
            raise ProtocolError(f"{self.name}: request before the handshake")
        # The 2.8 server gates on our version and the 2.8 client on the server's; newer ones
        # take the minimum. The minimum is right for all of them.
        return min(self.server_version & 0xFF, CLIENT_VERSION & 0xFF)

    async def _stream_in(self, producer: NarProducer, limit: int | None, what: str) -> int:
        """Let ``producer`` push bytes to the remote, at most ``limit``; returns how many."""
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
            raise _SinkFailed(exc) from exc
        return sent

    async def _send(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    @contextlib.asynccontextmanager
    async def _request(self, what: str) -> AsyncIterator[None]:
        async with self._lock:
            if self._broken is not None:
                raise ProtocolError(f"{self.name}: connection unusable: {self._broken}")
            if self.server_version is None and what != _HANDSHAKE:
                raise ProtocolError(f"{self.name}: {what} before the handshake")
            self._start_stderr()
            self._error_lines = []
            try:
                yield
            except _SinkFailed as exc:
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
        eof = not isinstance(exc, ProtocolError) or isinstance(
            exc.__cause__, asyncio.IncompleteReadError
        )
        if eof and self._stderr_task is not None:
            # The remote prints its error and then exits; wait for the rest of its stderr.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._stderr_task), self._stderr_timeout)
        remote = self._remote_error()
        if remote is not None:
            return remote
        if eof:
            return ProtocolError(f"{self.name} closed the connection during {what}")
        detail = exc.message if isinstance(exc, ProtocolError) else str(exc)
        return ProtocolError(f"{self.name}: {detail} (during {what})")

    def _remote_error(self) -> RemoteError | None:
        if not self._error_lines:
            return None
        # Nix continues long errors on indented lines ("specified: ... got: ..."); one line.
        text = " ".join(" ".join(line.split()) for line in self._error_lines)
        text = text.removeprefix("error:").strip()
        hint = next((h for key, h in _HINTS if key in text), None)
        return RemoteError(f"{self.name}: {text}", hint=hint)

    def _start_stderr(self) -> None:
        if self._stderr is not None and self._stderr_task is None:
            self._stderr_task = asyncio.get_running_loop().create_task(
                self._pump_stderr(self._stderr), name=f"{self.name} stderr"
            )

    async def _pump_stderr(self, stream: asyncio.StreamReader) -> None:
        pending = b""
        while True:
            try:
                chunk = await stream.read(65536)
            except (ConnectionError, OSError):
                break
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if len(pending) > _MAX_LINE:
                lines.append(pending)
                pending = b""
            for line in lines:
                self._line(line)
        if pending:
            self._line(pending)

    def _line(self, raw: bytes) -> None:
        line = raw.decode(errors="replace").rstrip("\r")
        plain = strip_ansi(line)
        # The server prints its fatal error last and exits; a builder may print "error:" lines
        # of its own earlier, so the last error block is the one that explains the EOF.
        if plain.startswith("error:"):
            self._error_lines = [plain]
        elif self._error_lines:
            self._error_lines.append(plain)
        if self.on_log is not None:
            try:
                self.on_log(line)
            except Exception:
                # A broken log consumer must not stop the draining of stderr: the remote would
                # block once the pipe is full.
                logger.exception("on_log failed for %s", self.name)


def _parse_realisation(drv_output: str, realisation: str, store_dir: str) -> tuple[str, str]:
    name = drv_output.rpartition("!")[2]
    try:
        out_path = json.loads(realisation)["outPath"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolError(f"malformed realisation for {drv_output!r}") from exc
    if not isinstance(out_path, str) or not name:
        raise ProtocolError(f"malformed realisation for {drv_output!r}")
    # 2.8 writes the base name only; later versions may write the full path.
    return name, out_path if out_path.startswith("/") else f"{store_dir}/{out_path}"


def _drv_str(value: str) -> bytes:
    # Derivation strings may carry arbitrary bytes as surrogate escapes (offload.store.drv).
    return encode_str(value.encode("utf-8", "surrogateescape"))


def _byte_key(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def encode_basic_derivation(drv: Derivation, input_srcs: Iterable[str] | None = None) -> bytes:
    """The BasicDerivation wire form (section 2.5): no inputDrvs, ``input_srcs`` if given."""
    srcs = drv.input_srcs if input_srcs is None else input_srcs
    out = [encode_int(len(drv.outputs))]
    for name in sorted(drv.outputs, key=_byte_key):
        o = drv.outputs[name]
        out += [_drv_str(name), _drv_str(o.path), _drv_str(o.hash_algo), _drv_str(o.hash)]
    out += [encode_strs(_sorted_paths(srcs)), _drv_str(drv.platform), _drv_str(drv.builder)]
    out.append(encode_int(len(drv.args)))
    out += [_drv_str(arg) for arg in drv.args]
    out.append(encode_int(len(drv.env)))
    for key in sorted(drv.env, key=_byte_key):
        out += [_drv_str(key), _drv_str(drv.env[key])]
    return b"".join(out)


# Paths up to this size travel in one ImportPaths stream; Nix 2.8's importer holds each NAR in
# memory until it is complete, so a cut stream leaves nothing on the receiver's disk. Larger
# ones go by AddToStoreNar, which unpacks straight into the store: if that is cut, an
# unregistered partial directory stays until Nix next writes that path.
IMPORT_LIMIT = 512 * 1024 * 1024


async def copy_paths(src: ServeClient, dst: ServeClient, infos: Sequence[PathInfo]) -> int:
    """Stream the paths from ``src`` into ``dst`` in the order given; returns the bytes moved.

    Give the paths dependencies first (``topo_sort_infos``): the remote refuses a path whose
    references it does not have yet. Runs of paths below ``IMPORT_LIMIT`` go as one export
    stream (one round trip for the lot); a larger path goes on its own by AddToStoreNar.
    """
    if src is dst:
        raise ValueError("cannot copy a connection's paths onto itself")
    moved = 0
    batch: list[PathInfo] = []
    for info in [*infos, None]:
        if info is not None and info.nar_size <= IMPORT_LIMIT:
            batch.append(info)
            continue
        if batch:
            await dst.import_paths(partial(_export_stream, src, list(batch)))
            moved += sum(i.nar_size for i in batch)
            batch.clear()
        if info is not None:
            await dst.add_to_store_nar(info, partial(src.dump_store_path, info.path))
            moved += info.nar_size
    return moved


async def _export_stream(src: ServeClient, infos: Sequence[PathInfo], sink: Sink) -> None:
    """``nix-store --export`` of ``infos`` (section 3.2), NARs streamed from ``src``."""
    for info in infos:
        await sink(encode_int(1))
        await src.dump_store_path(info.path, sink)
        await sink(
            encode_int(EXPORT_MAGIC)
            + encode_str(info.path)
            + encode_strs(_sorted_paths(info.references))
            + encode_str(info.deriver or "")
            + encode_int(0)
        )
    await sink(encode_int(0))
