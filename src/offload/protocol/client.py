"""Client for ``nix-store --serve --write`` (nix-protocols.md section 2) over any byte stream.

The model: one ``ServeClient`` owns one connection to one remote store (a local ``nix-store``
child, or one behind ssh). Requests run one at a time on it, each read in full before the next,
so a connection can serve any number of requests in a row; how a request is run, how its
failures are mapped (the remote's own message from its stderr) and how the connection refuses
requests after one failed mid-way is ``offload.protocol.connection``'s. A build's result is
returned once every line the build wrote before it has gone to ``on_log`` (ssh may pass its
last lines on after the result: one more round trip is the barrier).

NARs are never buffered whole: ``dump_store_path`` pushes chunks into a sink as they arrive and
``add_to_store_nar`` pulls them from a producer, so two clients can stream between two stores.
``add_paths`` receives many paths: runs of paths below ``IMPORT_LIMIT`` as one export stream
(one round trip for the lot), runs of larger ones by AddToStoreNar each, pipelined (every
request sent before the replies are read: the remote registers one path while the next is on
its way, with no round trip between them; each is still registered only whole). Given the local
store's ``exporter``, the local ``nix-store`` writes those bodies (``--export``, ``--dump``)
and ``offload.protocol.pump`` splices them into the connection: only the requests around them
are written from here.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterable, Sequence
from functools import partial

from offload.errors import ProtocolError
from offload.protocol.connection import HANDSHAKE, NarProducer, ServeConnection, Sink, SinkFailed
from offload.protocol.drv_wire import encode_basic_derivation
from offload.protocol.export import ChildBytes, Exporter, StartedChild
from offload.protocol.records import (
    CLIENT_VERSION,
    EXPORT_MAGIC,
    SERVE_MAGIC_1,
    SERVE_MAGIC_2,
    BuildOptions,
    BuildResult,
    Op,
    PathInfo,
    nar_as_said,
    path_info_bytes,
    read_build_result,
    read_path_info,
    said_store_paths,
    sorted_paths,
    store_dir_of,
)
from offload.protocol.wire import (
    bad_magic,
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
    "CLIENT_HELLO",
    "IMPORT_LIMIT",
    "SERVER_HELLO",
    "SPLICED_IMPORT_LIMIT",
    "NarProducer",
    "ServeClient",
    "Sink",
]

_MAJOR = 0x200

# The client's half of the handshake, and the first 8 bytes of the server's. A transport may
# send the hello before the serve program is known to run (``handshake(sent=True)``): the
# reply then tells a serve program from anything else that answered (offload.transport.links).
CLIENT_HELLO = encode_int(SERVE_MAGIC_1) + encode_int(CLIENT_VERSION)
SERVER_HELLO = encode_int(SERVE_MAGIC_2)
_DEFAULT_OPTIONS = BuildOptions()
# Paths up to these sizes travel in one ImportPaths stream (one round trip for the lot); larger
# ones go each by AddToStoreNar. Nix 2.8's importer holds each NAR in memory until it is
# complete and hashes it twice, so a cut stream leaves nothing on the receiver's disk;
# AddToStoreNar streams straight into the store (as nix-copy-closure sends every path), so a cut
# one leaves an unregistered partial directory until Nix next writes that path.
# From the local store to a builder (the ``exporter``'s splice), large paths go by AddToStoreNar:
# a 200 MiB closure of four paths took 1.17x nix-copy-closure's time by ImportPaths and 1.02x
# by AddToStoreNar (paired medians, loaded 2-core machine); the copier deletes what a cut one
# left there (offload.scheduler.run.copy). Pipelined (``add_to_store_nars``), 40 paths of 5 MiB
# took 1.09x nix-copy-closure's time against 1.56x one request at a time (4 pairs, loaded).
# Into the local store (outputs fetched home) paths keep the whole-or-nothing ImportPaths up to
# 512 MiB (and so do copies between builders): nothing half-written stays here.
IMPORT_LIMIT = 512 * 1024 * 1024
SPLICED_IMPORT_LIMIT = 4 * 1024 * 1024
# Small paths whose total is at most this go through here (the local store's serve session
# dumps each, sizes and hashes checked as they pass), not by a ``nix-store --export`` child:
# starting one costs more than the bytes. One input of a build, local store to a bench
# member: 24-27 ms by the child, 2.3 ms through here; 1 MiB 34 ms against 9 ms; 3 MB 42 ms
# against 32 ms (medians of 25, loaded 2-core machine; the set-up of most remote builds).
SPLICED_FROM = 4 * 1024 * 1024


class ServeClient(ServeConnection):
    """One connection to a ``nix-store --serve --write`` process: the requests.

    Call ``handshake`` first and ``close`` at the end.
    """

    # -- public requests ---------------------------------------------------------------------

    async def handshake(self, *, sent: bool = False) -> int:
        """Exchange magics and versions; returns the server's version. ``sent``: the transport
        wrote ``CLIENT_HELLO`` already."""
        async with self._request(HANDSHAKE):
            if not sent:
                await self._send(CLIENT_HELLO)
            magic = await read_int(self._reader, "the server magic")
            if magic != SERVE_MAGIC_2:
                raise bad_magic(magic, SERVE_MAGIC_2, "server", "nix-store --serve")
            version = await read_int(self._reader, "the server version")
            if version & 0xFF00 != _MAJOR:
                raise ProtocolError(f"unsupported serve protocol version {version:#x}")
            self.server_version = version
        return version

    async def query_valid_paths(
        self, paths: Iterable[str], *, lock: bool = False, substitute: bool = False
    ) -> set[str]:
        """The valid paths among ``paths``; with ``substitute`` the remote first fetches what
        its caches have, and all it said meanwhile (a cache left out: ``build.caches``) has
        passed to ``on_log`` when this returns (``_log_ended``), before a build's own lines."""
        request = (
            encode_int(Op.QUERY_VALID_PATHS)
            + encode_int(int(lock))
            + encode_int(int(substitute))
            + encode_strs(sorted_paths(paths))
        )
        async with self._request("QueryValidPaths"):
            await self._send(request)
            valid = set(await read_strs(self._reader, "the valid paths"))
        if substitute:
            await self._log_ended()
        return valid

    async def query_path_infos(self, paths: Iterable[str]) -> dict[str, PathInfo]:
        """Infos of the valid paths among ``paths``; invalid ones are left out."""
        asked = sorted_paths(paths)
        request = encode_int(Op.QUERY_PATH_INFOS) + encode_strs(asked)
        wanted = set(asked)
        async with self._request("QueryPathInfos"):
            await self._send(request)
            infos: dict[str, PathInfo] = {}
            while path := await read_str(self._reader, "a path info"):
                # Each answer names its path: callers act on that name (the hook writes it),
                # so an answer for a path not asked is the builder's lie, never a path to use.
                if path not in wanted:
                    raise ProtocolError(f"the builder answered for {path[:200]!r}, not asked")
                infos[path] = await read_path_info(self._reader, path, self._minor())
            return infos

    async def query_closure(
        self, paths: Iterable[str], *, include_outputs: bool = False
    ) -> set[str]:
        asked = sorted_paths(paths)
        request = encode_int(Op.QUERY_CLOSURE) + encode_int(int(include_outputs))
        async with self._request("QueryClosure"):
            await self._send(request + encode_strs(asked))
            closure = await read_strs(self._reader, "the closure")
            if closure:  # in the store of the paths asked (the closure of none is none)
                said_store_paths(closure, store_dir_of(asked[0]) if asked else "", "the closure")
        return set(closure)

    async def dump_store_path(
        self, path: str, sink: Sink, *, limit: int | None = None, said: PathInfo | None = None
    ) -> int:
        """Stream the NAR of ``path`` into ``sink`` chunk by chunk; returns its size. One
        longer than ``limit`` (its narSize) is refused before its excess is read; with
        ``said`` (what this store said of the path), one whose size or hash is not that is a
        ``ProtocolError`` once its last byte is through, before the caller writes anything
        after it (an export's trailer: the receiving Nix registers nothing then).

        If ``sink`` raises, its exception propagates unchanged and this connection is unusable
        (the rest of the NAR is still in flight).
        """

        async def guarded(chunk: bytes) -> None:
            try:
                await sink(chunk)
            except BaseException as exc:
                raise SinkFailed(exc) from exc

        async with self._request(f"DumpStorePath of {path}"):
            await self._send(encode_int(Op.DUMP_STORE_PATH) + encode_str(path))
            stats = await copy_nar(self._reader, guarded, limit=limit)
            if said is not None:
                nar_as_said(said, stats.size, stats.sha256)
            return stats.size

    async def add_to_store_nar(
        self, info: PathInfo, nar: NarProducer, *, registration_time: int | None = None
    ) -> None:
        """Register ``info.path`` remotely; ``nar(sink)`` must push exactly ``info.nar_size`` bytes.

        The remote checks the hash and size itself and registers nothing on a mismatch. If fewer
        or more bytes are pushed, ``ProtocolError`` is raised and the connection is unusable.
        """
        await self.add_to_store_nars([(info, nar)], registration_time=registration_time)

    async def add_to_store_nars(
        self,
        items: Sequence[tuple[PathInfo, NarProducer]],
        *,
        registration_time: int | None = None,
    ) -> None:
        """``add_to_store_nar`` for each path in turn, pipelined: every request is sent before
        the replies are read, so the remote checks and registers one path while the next is
        already on its way (the serve program reads requests one at a time, in order). Each
        path is still registered on its own, only once its whole NAR arrived and matched."""
        if not items:
            return
        regtime = int(time.time()) if registration_time is None else registration_time
        what = f"AddToStoreNar of {items[0][0].path}" + (
            f" and {len(items) - 1} more" if len(items) > 1 else ""
        )
        async with self._request(what), contextlib.AsyncExitStack() as stack:
            # Each local nix-store child is started while the path before it is still being
            # sent, so its start costs nothing between them; each is done with before the next.
            ahead = await _start(stack, items[0][1])
            for i, (info, _) in enumerate(items):
                current, child = ahead, stack.pop_all()
                async with child:
                    if i + 1 < len(items):
                        ahead = await _start(stack, items[i + 1][1])
                    await self._send(_add_header(info, regtime))
                    sent = await self._stream_in(current, info.nar_size, f"the NAR of {info.path}")
                if sent != info.nar_size:
                    msg = f"the NAR of {info.path} has {sent} bytes, narSize says {info.nar_size}"
                    raise ProtocolError(msg)
            for _ in items:
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

    async def add_paths(
        self, items: Sequence[tuple[PathInfo, NarProducer]], *, exporter: Exporter | None = None
    ) -> None:
        """Register the paths, dependencies first, each NAR pushed by its producer; or, with
        the local store's ``exporter``, written into this connection by its ``nix-store`` (not
        for a few small ones: ``SPLICED_FROM``). Consecutive small paths go as one export
        stream, consecutive large ones pipelined."""
        limit = SPLICED_IMPORT_LIMIT if exporter is not None else IMPORT_LIMIT
        keep = exporter is None
        for way, run in itertools.groupby(items, key=lambda item: _way(item[0], limit, keep)):
            group = list(run)
            if way == "export":
                paths = [info.path for info, _ in group]
                bulk = sum(info.nar_size for info, _ in group) > SPLICED_FROM
                export = (
                    exporter.export(paths) if exporter and bulk else partial(_export_stream, group)
                )
                await self.import_paths(export)
            elif way == "large" and exporter is not None and exporter.can_dump:
                dumps = [(info, exporter.dump(info.path, info.nar_size)) for info, _ in group]
                await self.add_to_store_nars(dumps)
            else:
                await self.add_to_store_nars(group)

    async def build_derivation(
        self,
        drv_path: str,
        drv: Derivation,
        *,
        input_srcs: Iterable[str] | None = None,
        options: BuildOptions = _DEFAULT_OPTIONS,
    ) -> BuildResult:
        """Build ``drv`` remotely; its inputs must already be valid there.

        ``input_srcs`` replaces the derivation's own: like build-remote, pass the whole input
        closure when the derivation has input derivations (there are none on this wire).
        Failed builds are not errors of the connection: the result's ``status`` says what
        happened.
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
            result = await read_build_result(self._reader, drv_path, minor)
        await self._log_ended()
        return result

    async def _log_ended(self) -> None:
        """Every line the build (or a substituting query) wrote to stderr before its result
        passed to ``on_log``, so none is lost when its borrower stops listening, nor heard by
        the session's next one (nor as the build's own output). ssh may pass them on after the
        result (sshd sends a channel's stdout before its stderr when it read both at once; the
        client writes them to two pipes), by as long as it is kept from running: a round trip
        on stdout is a barrier (its answer goes out after them, in the same ssh stream), then
        what the pipe holds is read (``heard_all``). A session that fails there was built on
        all the same: the next request says so."""
        if not self._stderr.reading:
            return
        with contextlib.suppress(ProtocolError):
            await self.query_valid_paths(())
        await self._stderr.heard_all()


async def _start(stack: contextlib.AsyncExitStack, nar: NarProducer) -> NarProducer | StartedChild:
    """A local child's bytes started on ``stack``; any other producer as it is."""
    if isinstance(nar, ChildBytes):
        return await stack.enter_async_context(nar.started())
    return nar


def _add_header(info: PathInfo, registration_time: int) -> bytes:
    return (
        encode_int(Op.ADD_TO_STORE_NAR)
        + encode_str(info.path)
        + path_info_bytes(info, registration_time)
    )


def _way(info: PathInfo, limit: int, keep: bool) -> str:
    """How a path goes: in an export stream ("export"), whose format holds no signature or
    content address; a large one by AddToStoreNar ("large"), its NAR written by the local
    ``nix-store`` if it can. With ``keep`` (a copy from a builder: to this host, or to another
    builder), one that has either goes by AddToStoreNar as well ("kept"): a fixed output
    brought home kept no ``ca`` here, and a builder's signatures were lost. Uploads from here
    stay spliced (a source is content-addressed, and its bytes would pass through Python)."""
    if info.nar_size > limit:
        return "large"
    return "kept" if keep and (info.ca or info.sigs) else "export"


async def _export_stream(items: Sequence[tuple[PathInfo, NarProducer]], sink: Sink) -> None:
    """``nix-store --export`` of the paths (nix-protocols.md 3.2), each NAR from its producer."""
    for info, nar in items:
        await sink(encode_int(1))
        await nar(sink)
        await sink(
            encode_int(EXPORT_MAGIC)
            + encode_str(info.path)
            + encode_strs(sorted_paths(info.references))
            + encode_str(info.deriver or "")
            + encode_int(0)
        )
    await sink(encode_int(0))
