"""Client for Nix's worker protocol (docs/worker-protocol.md), e.g. ``nix-daemon --stdio`` over ssh.

The model matches ``offload.protocol.client.ServeClient``, so either can stand behind a builder:
one ``WorkerClient`` owns one connection; requests run one at a time, each written in one batch
and answered in full before the next. Unlike the serve protocol, the daemon reports in-band:
every reply is preceded by stderr frames (``frames.read_frames``) carrying log lines,
activities and build phases, and a refused request ends in an error frame, raised as a
``DaemonError`` that leaves the connection in step. Any other failure (a truncated or malformed
stream, an interrupted transfer) leaves it out of step, and it refuses further requests.

NARs are never held whole: ``dump_store_path`` pushes chunks into a sink as they arrive and
``add_to_store_nar`` pulls them from a producer and sends them as frames, while a task reads
the daemon's stderr frames concurrently (the daemon logs while it unpacks, and would block on a
full pipe if nobody read).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import replace

from offload.errors import DaemonError, PeerSilent, ProtocolError
from offload.protocol.client import NarProducer, Sink
from offload.protocol.connection import SinkFailed
from offload.protocol.drv_wire import encode_basic_derivation
from offload.protocol.export import Exporter
from offload.protocol.records import (
    BuildOptions,
    BuildResult,
    PathInfo,
    nar_as_said,
    path_info_bytes,
    sorted_paths,
)
from offload.protocol.trust import untrusted_daemon_error
from offload.protocol.wire import (
    ByteReader,
    ByteWriter,
    bad_magic,
    close_writer,
    encode_int,
    encode_str,
    encode_strs,
    read_int,
    read_str,
    read_strs,
    stream_ended,
)
from offload.protocol.worker.frames import BuildEvents, Event, Events, read_frames
from offload.protocol.worker.nars import SizeMismatch, exact_nar
from offload.protocol.worker.records import (
    CLIENT_VERSION,
    MIN_DAEMON_MINOR,
    WORKER_MAGIC_1,
    WORKER_MAGIC_2,
    DaemonOptions,
    Op,
    read_build_result,
    read_optional_trust,
    read_path_info,
)
from offload.store.drv import Derivation
from offload.store.nar import copy_nar
from offload.tasks import stop

__all__ = ["CLIENT_HELLO", "SERVER_HELLO", "WorkerClient"]

_HANDSHAKE = "the handshake"
# The client's first words, and the first 8 bytes of the daemon's answer: a transport may send
# the hello before it knows what runs at the other end (``handshake(sent=True)``).
CLIENT_HELLO = encode_int(WORKER_MAGIC_1) + encode_int(CLIENT_VERSION)
SERVER_HELLO = encode_int(WORKER_MAGIC_2)
# QueryPathInfo requests written before their replies are read: enough to hide the round trips,
# few enough that the daemon's replies never fill the pipe while we still write.
_PIPELINE = 64
_DEFAULT_OPTIONS = BuildOptions()
# A daemon announces a handful of feature names; more is a corrupt or hostile stream.
_MAX_FEATURES = 1024


class _Answered(Exception):
    """The daemon ended a request (with an error) while we were still sending its data."""


class WorkerClient:
    """One connection to a Nix daemon. Call ``handshake`` first and ``close`` at the end.

    ``on_log`` gets builder log lines and the daemon's messages (ANSI escapes kept, as
    ``ServeClient`` passes them); ``on_phase`` gets ``(drv_path, phase)`` when a builder enters
    a phase; ``on_event`` gets every raw log event instead of both, for callers that want them.
    """

    def __init__(
        self,
        reader: ByteReader,
        writer: ByteWriter,
        *,
        on_log: Callable[[str], None] | None = None,
        on_phase: Callable[[str, str], None] | None = None,
        on_event: Events | None = None,
        name: str = "remote",
        build_cores: int = 0,
    ) -> None:
        self.name = name
        self.build_cores = build_cores
        self.server_version: int | None = None
        self.daemon_nix_version: str | None = None
        self.trusted: bool | None = None
        self.features: frozenset[str] = frozenset()
        # Never a session on the local store (that is a serve session); StoreClient's sake.
        self.exporter: Exporter | None = None
        self._reader = reader
        self._writer = writer
        self._build_events = BuildEvents(on_log, on_phase)
        self._on_event = on_event
        self._options_sent: BuildOptions | None = None
        self._daemon_options = DaemonOptions()  # as last sent by SetOptions
        self._lock = asyncio.Lock()
        self._broken: str | None = None
        self._closed = False

    @property
    def on_log(self) -> Callable[[str], None] | None:
        return self._build_events.on_log

    @on_log.setter
    def on_log(self, value: Callable[[str], None] | None) -> None:
        self._build_events.on_log = value

    @property
    def on_phase(self) -> Callable[[str, str], None] | None:
        return self._build_events.on_phase

    @on_phase.setter
    def on_phase(self, value: Callable[[str, str], None] | None) -> None:
        self._build_events.on_phase = value

    @property
    def usable(self) -> bool:
        """False once a request failed other than by the daemon's refusal, or after ``close``."""
        return self._broken is None

    @property
    def minor(self) -> int:
        """The negotiated minor version: the lower of the daemon's and ours."""
        if self.server_version is None:
            raise ProtocolError(f"{self.name}: request before the handshake")
        return min(self.server_version & 0xFF, CLIENT_VERSION & 0xFF)

    # -- handshake and options ---------------------------------------------------------------

    async def handshake(self, options: DaemonOptions | None = None, *, sent: bool = False) -> int:
        """Exchange magics, versions and features, then send ``options``; returns the
        daemon's version. ``sent``: the transport wrote ``CLIENT_HELLO`` already."""
        async with self._request(_HANDSHAKE):
            if not sent:
                await self._send(CLIENT_HELLO)
            magic = await read_int(self._reader, "the daemon magic")
            if magic != WORKER_MAGIC_2:
                raise bad_magic(magic, WORKER_MAGIC_2, "daemon", "nix-daemon")
            version = await read_int(self._reader, "the daemon version")
            if version >> 8 != 1 or version & 0xFF < MIN_DAEMON_MINOR:
                msg = f"unsupported worker protocol version {version >> 8}.{version & 0xFF}"
                raise ProtocolError(msg)
            self.server_version = version
            await self._post_handshake()
        await self.set_options(options or DaemonOptions())
        return version

    async def _post_handshake(self) -> None:
        minor = self.minor
        if minor >= 38:
            # We ask for no optional features; the daemon answers with its own set.
            await self._send(encode_strs([]))
            features = await read_int(self._reader, "the number of daemon features")
            if features > _MAX_FEATURES:
                raise ProtocolError(f"the daemon claims {features} features")
            self.features = frozenset(
                [await read_str(self._reader, "a daemon feature") for _ in range(features)]
            )
        await self._send(encode_int(0) + encode_int(0))  # obsolete CPU affinity, reserveSpace
        if minor >= 33:
            self.daemon_nix_version = await read_str(self._reader, "the daemon's Nix version")
        if minor >= 35:
            self.trusted = await read_optional_trust(self._reader)
        await self._frames()

    async def set_options(self, options: DaemonOptions) -> None:
        async with self._request("SetOptions"):
            await self._send(options.encode())
            await self._frames()
        self._daemon_options = options

    # -- queries -----------------------------------------------------------------------------

    async def is_valid_path(self, path: str) -> bool:
        async with self._request(f"IsValidPath of {path}"):
            await self._send(encode_int(Op.IS_VALID_PATH) + encode_str(path))
            await self._frames()
            return bool(await read_int(self._reader, "the IsValidPath reply"))

    async def query_valid_paths(
        self, paths: Iterable[str], *, lock: bool = False, substitute: bool = False
    ) -> set[str]:
        """The valid paths among ``paths``; ``lock`` is accepted for ``ServeClient``'s sake (the
        daemon has no such flag: its GC respects the paths our requests touch)."""
        del lock
        if substitute and not self._daemon_options.use_substitutes:
            # The daemon substitutes (for this query, and for builds) only with useSubstitutes
            # set: the flag below alone gets nothing from its caches (misc.cc queryMissing).
            await self.set_options(replace(self._daemon_options, use_substitutes=True))
        request = encode_int(Op.QUERY_VALID_PATHS) + encode_strs(sorted_paths(paths))
        if self.minor >= 27:
            request += encode_int(int(substitute))
        async with self._request("QueryValidPaths"):
            await self._send(request)
            await self._frames()
            return set(await read_strs(self._reader, "the valid paths"))

    async def query_path_info(self, path: str) -> PathInfo | None:
        """What the daemon knows about ``path``; None when it is not valid there."""
        async with self._request(f"QueryPathInfo of {path}"):
            await self._send(encode_int(Op.QUERY_PATH_INFO) + encode_str(path))
            await self._frames()
            if not await read_int(self._reader, "the QueryPathInfo validity flag"):
                return None
            return await read_path_info(self._reader, path, self.minor)

    async def query_path_infos(self, paths: Iterable[str]) -> dict[str, PathInfo]:
        """Infos of the valid paths among ``paths``, as ``ServeClient.query_path_infos``.

        The daemon has no batch form: requests go ``_PIPELINE`` at a time, then their replies."""
        infos: dict[str, PathInfo] = {}
        ordered = sorted_paths(paths)
        for start in range(0, len(ordered), _PIPELINE):
            chunk = ordered[start : start + _PIPELINE]
            async with self._request(f"QueryPathInfo of {len(chunk)} paths"):
                requests = (encode_int(Op.QUERY_PATH_INFO) + encode_str(path) for path in chunk)
                await self._send(b"".join(requests))
                for path in chunk:
                    try:
                        await self._frames()
                    except DaemonError:
                        # The replies still to come are read before the error goes up.
                        await self._skip_replies(chunk[chunk.index(path) + 1 :])
                        raise
                    if await read_int(self._reader, "the QueryPathInfo validity flag"):
                        infos[path] = await read_path_info(self._reader, path, self.minor)
        return infos

    async def _skip_replies(self, paths: Sequence[str]) -> None:
        for path in paths:
            with contextlib.suppress(DaemonError):
                await self._frames()
                if await read_int(self._reader, "the QueryPathInfo validity flag"):
                    await read_path_info(self._reader, path, self.minor)

    async def query_closure(
        self, paths: Iterable[str], *, include_outputs: bool = False
    ) -> set[str]:
        """The valid paths among ``paths`` and everything they refer to, as Nix's
        ``computeFSClosure`` finds it over a daemon (by references, a level at a time)."""
        if include_outputs:
            raise ProtocolError(f"{self.name}: query_closure with outputs is not implemented")
        closure: set[str] = set()
        frontier = set(paths)
        while frontier:
            infos = await self.query_path_infos(frontier)
            closure |= set(infos)
            frontier = {ref for info in infos.values() for ref in info.references} - closure
        return closure

    # -- NARs --------------------------------------------------------------------------------

    async def dump_store_path(
        self, path: str, sink: Sink, *, limit: int | None = None, said: PathInfo | None = None
    ) -> int:
        """NarFromPath of ``path`` into ``sink``: its size, at most ``limit``, and as ``said``
        (``nar_as_said``). A ``sink`` that raises leaves this connection unusable."""

        async def guarded(chunk: bytes) -> None:
            try:
                await sink(chunk)
            except BaseException as exc:
                raise SinkFailed(exc) from exc

        async with self._request(f"NarFromPath of {path}"):
            await self._send(encode_int(Op.NAR_FROM_PATH) + encode_str(path))
            await self._frames()
            stats = await copy_nar(self._reader, guarded, limit=limit)
            if said is not None:
                nar_as_said(said, stats.size, stats.sha256)
            return stats.size

    async def add_to_store_nar(
        self,
        info: PathInfo,
        nar: NarProducer,
        *,
        registration_time: int | None = None,
        check_sigs: bool = False,
    ) -> None:
        """Register ``info.path``; ``nar(sink)`` must push exactly ``info.nar_size`` bytes.

        The daemon checks hash and size and registers nothing on a mismatch (``DaemonError``).
        ``check_sigs=False`` asks it to skip signature checks, which it grants trusted users.
        """
        header = b"".join(
            (
                encode_int(Op.ADD_TO_STORE_NAR),
                encode_str(info.path),
                path_info_bytes(info, registration_time),
            )
        )
        header += encode_int(0) + encode_int(int(not check_sigs))  # repair, dontCheckSigs
        async with self._request(f"AddToStoreNar of {info.path}"):
            await self._send(header)
            await self._upload(exact_nar(nar, info))

    async def add_multiple_to_store(
        self, items: Sequence[tuple[PathInfo, NarProducer]], *, check_sigs: bool = False
    ) -> None:
        """Add several paths in one request (1.32 and later; one AddToStoreNar each before),
        dependencies first. Paths the daemon has are left out: the 2.8 daemon does not read
        their NARs (docs section 4.6); added meanwhile, the rest go by AddToStoreNar."""
        valid = await self.query_valid_paths(info.path for info, _ in items)
        todo: Sequence[tuple[PathInfo, NarProducer]]
        todo = [(info, nar) for info, nar in items if info.path not in valid]
        if self.minor >= 32 and len(todo) > 1:
            todo = await self._add_multiple(todo, check_sigs)
        for info, nar in todo:
            await self.add_to_store_nar(info, nar, check_sigs=check_sigs)

    async def _add_multiple(
        self, todo: Sequence[tuple[PathInfo, NarProducer]], check_sigs: bool
    ) -> Sequence[tuple[PathInfo, NarProducer]]:
        """``todo`` in one request: what is left to add (after section 4.6's hazard)."""

        async def stream(sink: Sink) -> None:
            await sink(encode_int(len(todo)))
            for info, nar in todo:
                await sink(encode_str(info.path) + path_info_bytes(info, None))
                await exact_nar(nar, info)(sink)

        request = encode_int(Op.ADD_MULTIPLE_TO_STORE) + encode_int(0)
        request += encode_int(int(not check_sigs))
        try:
            async with self._request(f"AddMultipleToStore of {len(todo)} paths"):
                await self._send(request)
                await self._upload(stream)
        except DaemonError:
            # A path added by someone else since the query: its NAR unread, the next path read
            # from inside it ("not an absolute path: 'nix-archive-1'"), the session kept whole
            # by its frames. The rest go one by one; an error of their own comes again then.
            now = await self.query_valid_paths(info.path for info, _ in todo)
            if not now:
                raise
            return [(info, nar) for info, nar in todo if info.path not in now]
        return []

    async def add_paths(
        self, items: Sequence[tuple[PathInfo, NarProducer]], *, exporter: Exporter | None = None
    ) -> None:
        """Register the paths, dependencies first: ``add_multiple_to_store``. Its framed
        stream takes the producers' bytes; ``exporter`` is not used."""
        del exporter
        await self.add_multiple_to_store(items)

    # -- builds ------------------------------------------------------------------------------

    async def build_derivation(
        self,
        drv_path: str,
        drv: Derivation,
        *,
        input_srcs: Iterable[str] | None = None,
        options: BuildOptions = _DEFAULT_OPTIONS,
    ) -> BuildResult:
        """Build ``drv`` on the daemon; its inputs must be valid there already.

        As ``ServeClient.build_derivation``; ``options`` go by SetOptions when they differ
        from the last ones sent. A failed build is a result, not an error.
        """
        if options != self._options_sent:
            daemon_options = DaemonOptions.from_build_options(options, build_cores=self.build_cores)
            # Substitution, once asked for (builders-use-substitutes), stays on for builds.
            on = self._daemon_options.use_substitutes
            await self.set_options(replace(daemon_options, use_substitutes=on))
            self._options_sent = options
        request = b"".join(
            (
                encode_int(Op.BUILD_DERIVATION),
                encode_str(drv_path),
                encode_basic_derivation(drv, input_srcs),
                encode_int(0),  # bmNormal
            )
        )
        async with self._request(f"BuildDerivation of {drv_path}"):
            await self._send(request)
            await self._frames()
            return await read_build_result(self._reader, drv_path, self.minor)

    async def close(self) -> None:
        """End the session: the daemon exits at EOF between requests. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._broken = self._broken or "it was closed"
        await close_writer(self._writer)

    # -- connection plumbing -----------------------------------------------------------------

    def _event(self, event: Event) -> None:
        if self._on_event is not None:
            self._on_event(event)
        else:
            self._build_events(event)

    async def _frames(self) -> None:
        await read_frames(self._reader, self.minor, self._event, self.name)

    async def _send(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def _upload(self, producer: NarProducer) -> None:
        """Send what ``producer`` pushes as frames while reading the daemon's stderr frames."""
        frames = asyncio.get_running_loop().create_task(self._frames(), name=f"{self.name} log")
        own: list[BaseException] = []

        async def sink(chunk: bytes) -> None:
            if frames.done():
                raise _Answered
            if chunk:  # an empty frame would end the stream
                try:
                    await self._send(encode_int(len(chunk)) + chunk)
                except BaseException as exc:
                    own.append(exc)
                    raise

        try:
            try:
                await producer(sink)
            except _Answered:
                pass
            except BaseException as exc:
                if any(exc is e for e in own) or isinstance(exc, SizeMismatch):
                    raise
                raise SinkFailed(exc) from exc
            # The daemon reads up to the empty frame even after failing, so end the stream.
            await self._send(encode_int(0))
            await frames
        finally:
            if not frames.done():
                await stop(frames)

    @contextlib.asynccontextmanager
    async def _request(self, what: str) -> AsyncIterator[None]:
        async with self._lock:
            if self._broken is not None:
                raise ProtocolError(f"{self.name}: connection unusable: {self._broken}")
            if self.server_version is None and what != _HANDSHAKE:
                raise ProtocolError(f"{self.name}: {what} before the handshake")
            try:
                yield
            except DaemonError as exc:
                exc.peer = self.name
                untrusted = untrusted_daemon_error(exc, self.name)
                if untrusted is None:
                    raise
                raise untrusted from exc
            except SinkFailed as exc:
                self._broken = f"{what} was interrupted"
                raise exc.exc from exc.exc.__cause__
            except (ProtocolError, asyncio.IncompleteReadError, ConnectionError, EOFError) as exc:
                self._broken = f"{what} failed"
                raise self._translate(exc, what) from exc
            except BaseException:
                self._broken = f"{what} was interrupted"
                raise

    def _translate(self, exc: Exception, what: str) -> ProtocolError:
        if isinstance(exc, PeerSilent):
            return exc.during(self.name, what)
        if stream_ended(exc) or not isinstance(exc, ProtocolError):
            # The stream ended (or the pipe broke): said as a serve session's end is, not in
            # the wire's words ("stream ended while reading a stderr frame tag").
            error = ProtocolError(f"{self.name} closed the connection during {what}")
            error.peer = self.name
            return error
        error = ProtocolError(f"{self.name}: {exc.message} (during {what})", hint=exc.hint)
        error.peer = self.name
        return error
