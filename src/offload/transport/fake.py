"""A scripted in-memory Nix store that speaks ``nix-store --serve --write`` (nix-protocols.md 2).

This is the test seam below the scheduler, shipped with the library like httpx's
``MockTransport`` (style.md guideline 2): executor tests run the real ``ServeClient`` against it,
with no processes, no ssh and no sleeps. It is also the server side of the protocol written out.

The model:

* ``FakeStore`` is one machine's store: ``paths`` maps each valid path to a ``FakePath`` (its
  references and real NAR bytes), shared by every session to that machine, and the store records
  what happened to it: ``builds`` (derivations whose builder ran, in order), ``received`` (paths
  registered by AddToStoreNar or ImportPaths, in order) and ``interrupted`` (builds stopped
  because their client went away or was cancelled).
* A session is three one-way in-memory pipes, stdin, stdout and stderr as with a real
  ``nix-store`` child, and one server task running ``FakeStore.serve`` on them. ``open_client``
  and ``connect`` hand out a ``ServeClient`` that has done its handshake over such a session.
* ``FakeLink`` is the executor's ``Link`` (``offload.scheduler.run``) over one store: it opens
  sessions (at most ``max_sessions`` at once; more wait), cancels them, and simulates an
  unreachable host (``go_down``) or connections that drop at chosen points (``break_next``).

The server answers as Nix 2.8's ``nix-store --serve --write`` does (nix-store.cc ``opServe``):
it sends its magic and version 0x207 as soon as it has read the client's magic, and gates every
optional field on the version the *client* announced. A StorePathSet is written sorted by base
name. As in Nix there are no in-band errors: a failing command prints ``error: ...`` on stderr
and the session ends (stdout and stderr closed), so the client sees EOF and raises
``RemoteError`` carrying the message. Per command:

1 QueryValidPaths   lock and substitute are read and ignored; replies the valid subset.
2 QueryPathInfos    one record per valid path (invalid ones are skipped), then ``""``; narHash
                    is ``sha256:<nix32>``, ca is ``""`` and sigs are empty.
3 DumpStorePath     the NAR with no length prefix; an invalid path is an error.
4 ImportPaths       the export stream of section 3.2, checked and registered path by path.
7 QueryClosure      the forward closure; includeOutputs is read and ignored.
8 BuildDerivation   see below.
9 AddToStoreNar     reads the header and exactly narSize bytes, then checks like Nix's
                    ``LocalStore::addToStore``, in its order: the NAR parses (``bad archive``),
                    its hash and size match (``hash mismatch importing path ...``), every
                    reference is valid (``path '...' is not valid``). Nix reads the whole NAR
                    before any check, and so does this. The path is registered only after all
                    of that; an already valid path is left as it is.
Others              5 ExportPaths and 6 BuildPaths exist in Nix but not here; any other number
                    is ``error: unknown serve command N``. Both end the session.

BuildDerivation decodes the BasicDerivation (section 2.5) and the BuildOptions for the client's
minor version (2.4), then, like Nix 2.8's ``Store::buildDerivation``: outputs all valid already
-> ``AlreadyValid`` (nothing runs); an input source missing -> ``MiscFailure`` with Nix's
``dependency '...' of '...' does not exist, and substitution is disabled`` (the serve command
disables substitution, and the goal's error becomes the result, not a dropped connection);
otherwise the store's ``builder`` runs. The default builder succeeds at once; each output
becomes a ``FakePath`` whose file names the derivation and the store and whose references are
the input sources. A scripted builder gets a ``FakeBuild`` (the decoded request and a ``log``
function writing to the session's stderr, so ``ServeClient.on_log`` sees the lines) and returns
a ``BuildOutcome``. It may await events the test controls; it is cancelled (it sees
``CancelledError``) when the client goes away or ``FakeLink.cancel`` stops the session, as a
remote build dies with its ssh connection. The reply has 2.8's layout: status, errorMsg, the
four minor >= 3 fields, then builtOutputs whatever the version (its DrvOutput ids use a made-up
hash, not the derivation's hash modulo). Build timeouts, log limits and repeats are not
enforced.

The pipes buffer without limit (no backpressure) and a write to a session whose server has
ended fails at ``drain`` with ``BrokenPipeError``, as a write to a dead process's stdin does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

from offload.errors import ProtocolError, SshError, StoreError
from offload.protocol.serve import (
    EXPORT_MAGIC,
    SERVE_MAGIC_1,
    SERVE_MAGIC_2,
    BuildOptions,
    BuildStatus,
    ByteWriter,
    Op,
    PathInfo,
    ServeClient,
)
from offload.protocol.wire import (
    encode_int,
    encode_str,
    encode_strs,
    read_bytes,
    read_int,
    read_str,
    read_strs,
)
from offload.store.drv import Derivation, DerivationOutput
from offload.store.nar import NAR_MAGIC, copy_nar, nar_hash_nix32
from offload.store.path import STORE_DIR, nix32_decode, nix32_encode

__all__ = [
    "SERVER_VERSION",
    "BreakPoint",
    "BuildOutcome",
    "Builder",
    "FakeBuild",
    "FakeLink",
    "FakePath",
    "FakeStore",
    "default_outputs",
    "nar_of_text",
    "store_path",
]

SERVER_VERSION = 0x207


# "add-to-store" cuts an AddToStoreNar or the next path of an ImportPaths stream.
BreakPoint = Literal["handshake", "request", "add-to-store", "dump", "build-start", "build-end"]

_SUCCESS = frozenset(
    {
        BuildStatus.BUILT,
        BuildStatus.SUBSTITUTED,
        BuildStatus.ALREADY_VALID,
        BuildStatus.RESOLVES_TO_ALREADY_VALID,
    }
)


def store_path(name: str, *, store_dir: str = STORE_DIR) -> str:
    """A valid store path for ``name`` whose hash part is derived from the name."""
    return f"{store_dir}/{nix32_encode(hashlib.sha256(name.encode()).digest()[:20])}-{name}"


def nar_of_text(text: str | bytes, *, executable: bool = False) -> bytes:
    """The NAR of one regular file holding ``text`` (what ``nix-store --dump`` writes)."""
    data = text.encode() if isinstance(text, str) else text
    tokens = [NAR_MAGIC, b"(", b"type", b"regular"]
    tokens += [b"executable", b""] if executable else []
    tokens += [b"contents", data, b")"]
    return b"".join(encode_str(t) for t in tokens)


@dataclass(frozen=True)
class FakePath:
    """One valid path: its references and its NAR, from which hash and size follow."""

    path: str
    references: tuple[str, ...]
    nar: bytes = field(repr=False)
    deriver: str | None = None

    @classmethod
    def from_text(
        cls,
        path: str,
        text: str | bytes,
        references: Iterable[str] = (),
        deriver: str | None = None,
    ) -> FakePath:
        return cls(path, tuple(sorted(set(references))), nar_of_text(text), deriver)

    @cached_property
    def nar_hash(self) -> str:
        return nar_hash_nix32(hashlib.sha256(self.nar).hexdigest())

    @property
    def nar_size(self) -> int:
        return len(self.nar)

    def info(self) -> PathInfo:
        return PathInfo(
            path=self.path,
            deriver=self.deriver,
            references=tuple(_sorted(self.references)),
            nar_size=self.nar_size,
            nar_hash=self.nar_hash,
        )


@dataclass(frozen=True)
class FakeBuild:
    """What a scripted builder is given: the BuildDerivation request as the server decoded it.

    ``drv`` is the BasicDerivation from the wire: no input derivations, and the input sources the
    client sent (build-remote sends the whole input closure).
    """

    drv_path: str
    drv: Derivation
    options: BuildOptions
    store: FakeStore
    log: Callable[[str], None] = field(repr=False)  # one line to the session's stderr


@dataclass(frozen=True)
class BuildOutcome:
    """What a builder returns; ``None`` from a builder means ``BuildOutcome()``, a success.

    ``outputs`` replaces the default outputs of a successful build (``default_outputs``).
    """

    status: BuildStatus = BuildStatus.BUILT
    error_msg: str = ""
    outputs: Mapping[str, FakePath] | None = None


Builder = Callable[[FakeBuild], Awaitable[BuildOutcome | None]]


def _output_path(build: FakeBuild, name: str) -> str:
    path = build.drv.outputs[name].path
    if path:
        return path
    # Floating and deferred outputs have no path yet; make up one that is stable per output.
    store_dir, _, base = build.drv_path.rpartition("/")
    digest = hashlib.sha256(f"{build.drv_path}!{name}".encode()).digest()[:20]
    suffix = "" if name == "out" else f"-{name}"
    return f"{store_dir}/{nix32_encode(digest)}-{base[33:].removesuffix('.drv')}{suffix}"


def default_outputs(build: FakeBuild) -> dict[str, FakePath]:
    """The outputs a successful default build creates: one small file each."""
    return {
        name: FakePath.from_text(
            _output_path(build, name),
            f"{name} of {build.drv_path}, built on {build.store.name}\n",
            references=build.drv.input_srcs,
            deriver=build.drv_path,
        )
        for name in build.drv.outputs
    }


async def _instant(_build: FakeBuild) -> BuildOutcome | None:
    return None


def _sorted(paths: Iterable[str]) -> list[str]:
    # Nix writes a StorePathSet sorted by base name (nix-protocols.md 1).
    return sorted(set(paths), key=lambda p: (p.rpartition("/")[2], p))


def _parse_sha256(text: str) -> bytes:
    """Like Nix's ``Hash::parseAny(s, htSHA256)``: base16, nix32, base64 or SRI."""
    rest = text.removeprefix("sha256:")
    if rest.startswith("sha256-"):
        rest = rest.removeprefix("sha256-")
    try:
        if len(rest) == 64:
            return bytes.fromhex(rest)
        if len(rest) == 52:
            return nix32_decode(rest)
        if len(rest) == 44:
            return base64.b64decode(rest, validate=True)
    except (ValueError, StoreError) as exc:
        raise _Hangup(f"error: invalid hash '{text}'") from exc
    raise _Hangup(f"error: hash '{text}' has wrong length for hash type 'sha256'")


class _Hangup(Exception):
    """Ends a session: ``message`` (if any) goes to stderr, then stdout and stderr close."""

    def __init__(self, message: str | None) -> None:
        super().__init__(message)
        self.message = message


def _fatal(message: str) -> _Hangup:
    return _Hangup(f"error: {message}")


class _Pipe:
    """One direction of an in-memory connection: what is written comes out of ``reader``."""

    def __init__(self) -> None:
        self.reader = asyncio.StreamReader()
        self.closed = False
        self.reader_gone = False

    def write(self, data: bytes) -> None:
        if data and not self.closed and not self.reader_gone:
            self.reader.feed_data(data)

    async def drain(self) -> None:
        if self.reader_gone:
            raise BrokenPipeError(errno.EPIPE, "the fake store's session has ended")

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.reader.feed_eof()


class _Server:
    """The server side of one session."""

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
        self.building: str | None = None  # the derivation whose builder is running
        self.stopped: str | None = None  # a build stopped because the session ended under it

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

    async def run(self) -> None:
        try:
            await self.handshake()
            while (op := await self.next_op()) is not None:
                self.check_break("request")
                await self.dispatch(op)
                await self.out.drain()
        except _Hangup as exc:
            if exc.message is not None:
                self.log(exc.message)
        except ProtocolError as exc:
            # The client's bytes ended or were malformed mid-command; Nix says as much and exits.
            self.log(f"error: {exc.message}")
        finally:
            self.out.close()
            if self.err is not None:
                self.err.close()

    async def handshake(self) -> None:
        if await read_int(self.inp, "the client magic") != SERVE_MAGIC_1:
            raise _fatal("protocol mismatch")
        self.check_break("handshake")
        # 2.8 answers before it reads the client's version (nix-protocols.md 2.2).
        self.out.write(encode_int(SERVE_MAGIC_2) + encode_int(SERVER_VERSION))
        await self.out.drain()
        self.client_version = await read_int(self.inp, "the client version")

    async def next_op(self) -> int | None:
        try:
            data = await self.inp.readexactly(8)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise _fatal("unexpected end-of-file") from exc
            return None  # EOF between commands: the session ends normally
        return int.from_bytes(data, "little")

    async def dispatch(self, op: int) -> None:
        match op:
            case Op.QUERY_VALID_PATHS:
                await read_int(self.inp, "lock")
                await read_int(self.inp, "substitute")
                paths = await self.read_paths()
                self.out.write(encode_strs(_sorted(p for p in paths if self.store.has(p))))
            case Op.QUERY_PATH_INFOS:
                await self.query_path_infos()
            case Op.DUMP_STORE_PATH:
                await self.dump_store_path()
            case Op.IMPORT_PATHS:
                await self.import_paths()
            case Op.QUERY_CLOSURE:
                await read_int(self.inp, "includeOutputs")
                paths = await self.read_paths()
                for path in paths:
                    self.valid(path)
                self.out.write(encode_strs(_sorted(self.store.closure(paths))))
            case Op.BUILD_DERIVATION:
                await self.build_derivation()
            case Op.ADD_TO_STORE_NAR:
                await self.add_to_store_nar()
            case Op.EXPORT_PATHS | Op.BUILD_PATHS:
                raise _fatal(f"the fake store does not implement serve command {op}")
            case _:
                raise _fatal(f"unknown serve command {op}")

    # -- reading requests --------------------------------------------------------------------

    async def read_drv_str(self, what: str) -> str:
        # Derivation strings may hold any bytes; keep them as surrogate escapes like drv.py.
        return (await read_bytes(self.inp, what)).decode("utf-8", "surrogateescape")

    def check_path(self, path: str) -> str:
        if not path.startswith(self.store.store_dir + "/"):
            raise _fatal(f"path '{path}' is not in the Nix store")
        return path

    async def read_path(self, what: str) -> str:
        return self.check_path(await read_str(self.inp, what))

    async def read_paths(self, what: str = "a path set") -> list[str]:
        count = await read_int(self.inp, f"the length of {what}")
        return [await self.read_path(f"entry {i} of {what}") for i in range(count)]

    def valid(self, path: str) -> FakePath:
        found = self.store.paths.get(path)
        if found is None:
            raise _fatal(f"path '{path}' is not valid")
        return found

    # -- commands ----------------------------------------------------------------------------

    async def query_path_infos(self) -> None:
        out = []
        for path in _sorted(await self.read_paths()):
            fp = self.store.paths.get(path)
            if fp is None:
                continue
            out += [
                encode_str(path),
                encode_str(fp.deriver or ""),
                encode_strs(_sorted(fp.references)),
                encode_int(fp.nar_size),  # downloadSize: the NAR size, as 2.8 sends it
                encode_int(fp.nar_size),
            ]
            if self.minor >= 4:
                out += [encode_str(fp.nar_hash), encode_str(""), encode_strs([])]
        self.out.write(b"".join(out) + encode_str(""))

    async def dump_store_path(self) -> None:
        fp = self.valid(await self.read_path("the path to dump"))
        hangup = self.store._take_break("dump")  # noqa: SLF001
        if hangup is not None:
            self.out.write(fp.nar[: len(fp.nar) // 2])
            raise hangup
        self.out.write(fp.nar)

    async def add_to_store_nar(self) -> None:
        path = await self.read_path("the path")
        deriver = await read_str(self.inp, "the deriver")
        nar_hash = await read_str(self.inp, "the narHash")
        references = await self.read_paths("the references")
        await read_int(self.inp, "the registration time")
        nar_size = await read_int(self.inp, "the narSize")
        await read_int(self.inp, "ultimate")
        await read_strs(self.inp, "the signatures")
        await read_str(self.inp, "the ca")
        if deriver:
            self.check_path(deriver)
        expected = _parse_sha256(nar_hash)
        if nar_size == 0:
            raise _fatal("narInfo is too old and missing the narSize field")
        hangup = self.store._take_break("add-to-store")  # noqa: SLF001
        if hangup is not None:
            await self.inp.readexactly(nar_size // 2)
            raise hangup
        try:
            nar = await self.inp.readexactly(nar_size)
        except asyncio.IncompleteReadError as exc:
            raise _fatal("unexpected end-of-file") from exc
        fp = FakePath(path, tuple(references), nar, deriver or None)
        await self.register(fp, expected)
        self.out.write(encode_int(1))

    async def import_paths(self) -> None:
        while True:
            marker = await read_int(self.inp, "the export marker")
            if marker == 0:
                break
            if marker != 1:
                raise _fatal("input doesn't look like something created by 'nix-store --export'")
            hangup = self.store._take_break("add-to-store")  # noqa: SLF001
            if hangup is not None:
                await self.inp.readexactly(8)
                raise hangup
            nar = bytearray()

            async def keep(chunk: bytes, nar: bytearray = nar) -> None:
                nar.extend(chunk)

            try:
                await copy_nar(self.inp, keep)
            except ProtocolError as exc:
                raise _fatal(f"bad archive: {exc.message}") from exc
            if await read_int(self.inp, "the export magic") != EXPORT_MAGIC:
                raise _fatal("Nix archive cannot be imported; wrong format")
            path = await self.read_path("the imported path")
            references = await self.read_paths("the references")
            deriver = await read_str(self.inp, "the deriver")
            if await read_int(self.inp, "the signature marker") == 1:
                await read_str(self.inp, "a legacy signature")
            if deriver:
                self.check_path(deriver)
            # The importer computes the hash itself, so there is nothing to compare it with.
            await self.register(FakePath(path, tuple(references), bytes(nar), deriver or None))
        self.out.write(encode_int(1))

    async def register(self, fp: FakePath, expected: bytes | None = None) -> None:
        if self.store.has(fp.path):
            return  # Nix leaves a valid path alone and discards the NAR sent for it.
        reader = asyncio.StreamReader()
        reader.feed_data(fp.nar)
        reader.feed_eof()
        try:
            stats = await copy_nar(reader)
        except ProtocolError as exc:
            raise _fatal(f"bad archive: {exc.message}") from exc
        got = hashlib.sha256(fp.nar[: stats.size]).digest()
        if expected is not None and got != expected:
            raise _fatal(
                f"hash mismatch importing path '{fp.path}';\n"
                f"  specified: sha256:{nix32_encode(expected)}\n"
                f"  got:       sha256:{nix32_encode(got)}"
            )
        if stats.size != fp.nar_size:
            raise _fatal(
                f"size mismatch importing path '{fp.path}';\n"
                f"  specified: {fp.nar_size}\n  got:       {stats.size}"
            )
        for ref in fp.references:
            if ref != fp.path:
                self.valid(ref)
        self.store.paths[fp.path] = fp
        self.store.received.append(fp.path)

    async def read_basic_derivation(self) -> Derivation:
        outputs: dict[str, DerivationOutput] = {}
        for _ in range(await read_int(self.inp, "the number of outputs")):
            name = await self.read_drv_str("an output name")
            path = await self.read_drv_str("an output path")
            algo = await self.read_drv_str("an output hash algorithm")
            hash_ = await self.read_drv_str("an output hash")
            outputs[name] = DerivationOutput(path=path, hash_algo=algo, hash=hash_)
        input_srcs = await self.read_paths("the input sources")
        platform = await self.read_drv_str("the platform")
        builder = await self.read_drv_str("the builder")
        args = [
            await self.read_drv_str("an argument")
            for _ in range(await read_int(self.inp, "the number of arguments"))
        ]
        env: dict[str, str] = {}
        for _ in range(await read_int(self.inp, "the number of environment variables")):
            key = await self.read_drv_str("an environment variable name")
            env[key] = await self.read_drv_str("an environment variable value")
        return Derivation.create(
            outputs=outputs,
            input_drvs={},
            input_srcs=input_srcs,
            platform=platform,
            builder=builder,
            args=args,
            env=env,
        )

    async def read_build_options(self) -> BuildOptions:
        # Exactly the fields the client's announced minor version implies (2.4).
        r, minor = self.inp, self.minor
        max_silent_time = await read_int(r, "maxSilentTime")
        build_timeout = await read_int(r, "buildTimeout")
        max_log_size = await read_int(r, "maxLogSize") if minor >= 2 else 0
        nr_repeats, enforce = 0, True
        if minor >= 3:
            nr_repeats = await read_int(r, "nrRepeats")
            enforce = bool(await read_int(r, "enforceDeterminism"))
        keep_failed = bool(await read_int(r, "keepFailed")) if minor >= 7 else False
        return BuildOptions(
            max_silent_time, build_timeout, max_log_size, nr_repeats, enforce, keep_failed
        )

    async def build_derivation(self) -> None:
        drv_path = await self.read_path("the derivation path")
        drv = await self.read_basic_derivation()
        options = await self.read_build_options()
        build = FakeBuild(drv_path, drv, options, self.store, self.log)
        outputs = {name: _output_path(build, name) for name in drv.outputs}
        if all(self.store.has(p) for p in outputs.values()):
            self.reply_build(drv_path, BuildStatus.ALREADY_VALID, outputs=outputs)
            return
        missing = [p for p in drv.input_srcs if not self.store.has(p)]
        if missing:
            msg = (
                f"dependency '{missing[0]}' of '{drv_path}' does not exist,"
                " and substitution is disabled"
            )
            self.reply_build(drv_path, BuildStatus.MISC_FAILURE, msg)
            return
        self.check_break("build-start")
        self.store.builds.append(drv_path)
        start = int(time.time())
        outcome = await self.run_builder(build)
        stop = int(time.time())
        if outcome.status not in _SUCCESS:
            msg = outcome.error_msg
            self.reply_build(drv_path, outcome.status, msg, times_built=1, start=start, stop=stop)
            return
        made = default_outputs(build) if outcome.outputs is None else dict(outcome.outputs)
        for fp in made.values():
            self.store.paths[fp.path] = fp
        self.check_break("build-end")
        built = {name: fp.path for name, fp in made.items()}
        self.reply_build(
            drv_path,
            outcome.status,
            outcome.error_msg,
            times_built=1,
            start=start,
            stop=stop,
            outputs=built,
        )

    async def run_builder(self, build: FakeBuild) -> BuildOutcome:
        builder = self.store.builder or _instant
        task = asyncio.ensure_future(builder(build))
        # A client that goes away mid-build (EOF on stdin) stops the build, as a remote build
        # dies with its ssh connection. A well-behaved client sends nothing during a build.
        gone = asyncio.ensure_future(self.inp.read(1))
        self.building = build.drv_path
        try:
            await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                self.stop_build()
                raise _Hangup(None if gone.result() == b"" else "error: input during a build")
            try:
                return task.result() or BuildOutcome()
            except Exception as exc:
                msg = f"error: fake builder for '{build.drv_path}' raised {exc!r}"
                raise _Hangup(msg) from exc
        except asyncio.CancelledError:
            self.stop_build()
            raise
        finally:
            self.building = None
            task.cancel()
            gone.cancel()
            await asyncio.gather(task, gone, return_exceptions=True)

    def stop_build(self) -> None:
        if self.building is not None:
            self.stopped = self.building
            self.store.interrupted.append(self.building)

    def reply_build(
        self,
        drv_path: str,
        status: BuildStatus,
        error_msg: str = "",
        *,
        times_built: int = 0,
        start: int = 0,
        stop: int = 0,
        outputs: Mapping[str, str] | None = None,
    ) -> None:
        out = [encode_int(status), encode_str(error_msg)]
        if self.minor >= 3:
            out += [encode_int(times_built), encode_int(0), encode_int(start), encode_int(stop)]
        # 2.8 sends builtOutputs whatever the client announced (nix-protocols.md 2.6). The id
        # should carry the derivation's hash modulo; a stand-in hash is enough for clients.
        outputs = outputs or {}
        out.append(encode_int(len(outputs)))
        fake_hash = hashlib.sha256(drv_path.encode()).hexdigest()
        for name in sorted(outputs):
            drv_output = f"sha256:{fake_hash}!{name}"
            realisation = {
                "dependentRealisations": {},
                "id": drv_output,
                "outPath": outputs[name].rpartition("/")[2],
                "signatures": [],
            }
            out += [
                encode_str(drv_output),
                encode_str(json.dumps(realisation, separators=(",", ":"))),
            ]
        self.out.write(b"".join(out))


@dataclass(eq=False)
class _Session:
    client: ServeClient
    server: _Server
    task: asyncio.Task[None]

    async def close(self) -> None:
        await self.client.close()
        # The server ends at EOF on its stdin; a build still running is stopped on the way.
        # wait() rather than await: a server task cancelled by FakeLink.cancel is no error here.
        await asyncio.wait({self.task})
        if not self.task.cancelled():
            self.task.result()  # a crash of the fake itself must not pass silently


class FakeStore:
    """One machine's store, shared by all its sessions. See the module docstring."""

    def __init__(
        self,
        name: str = "fake",
        paths: Iterable[FakePath] = (),
        *,
        builder: Builder | None = None,
        store_dir: str = STORE_DIR,
    ) -> None:
        self.name = name
        self.store_dir = store_dir
        self.builder = builder
        self.paths: dict[str, FakePath] = {p.path: p for p in paths}
        self.builds: list[str] = []
        self.received: list[str] = []
        self.interrupted: list[str] = []
        self._breaks: list[tuple[BreakPoint, str | None]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def has(self, path: str) -> bool:
        return path in self.paths

    def add(self, *paths: FakePath) -> None:
        """Make ``paths`` valid directly (test set-up: no checks, nothing recorded)."""
        for fp in paths:
            self.paths[fp.path] = fp

    def closure(self, paths: Iterable[str]) -> set[str]:
        """The valid paths reachable from ``paths`` through references, ``paths`` included."""
        seen: set[str] = set()
        todo = [p for p in paths if p in self.paths]
        while todo:
            path = todo.pop()
            if path not in seen:
                seen.add(path)
                todo += [r for r in self.paths[path].references if r in self.paths]
        return seen

    def break_next(self, at: BreakPoint = "request", *, message: str | None = None) -> None:
        """Make the next session to reach ``at`` drop its connection there.

        ``handshake``: after the client's magic, before the server's reply. ``request``: after
        the next command's opcode. ``add-to-store``: half-way through an AddToStoreNar's NAR
        (nothing is registered). ``dump``: after half of a DumpStorePath's NAR. ``build-start``:
        before the builder runs. ``build-end``: after a successful build registered its outputs,
        before the reply. ``message`` is written to stderr first, as is: by default
        ``Connection to <name> closed by remote host.`` (ssh's words; the client raises
        ``ProtocolError``); an ``error: ...`` line makes it a ``RemoteError``; ``""`` writes
        nothing. Several calls queue up.
        """
        if message is None:
            message = f"Connection to {self.name} closed by remote host."
        self._breaks.append((at, message or None))

    def _take_break(self, at: BreakPoint) -> _Hangup | None:
        for i, (point, message) in enumerate(self._breaks):
            if point == at:
                del self._breaks[i]
                return _Hangup(message)
        return None

    async def serve(
        self,
        reader: asyncio.StreamReader,
        writer: ByteWriter,
        stderr: ByteWriter | None = None,
    ) -> None:
        """Serve one session on these streams until the client's EOF or an error.

        ``writer`` and ``stderr`` are closed at the end, as a process's would be at exit.
        """
        await _Server(self, reader, writer, stderr).run()

    async def _open(self, name: str | None, on_log: Callable[[str], None] | None) -> _Session:
        stdin, stdout, stderr = _Pipe(), _Pipe(), _Pipe()
        server = _Server(self, stdin.reader, stdout, stderr)

        async def run() -> None:
            try:
                await server.run()
            finally:
                stdin.reader_gone = True

        task = asyncio.create_task(run(), name=f"fake store {self.name}")
        # Keep a reference: the loop holds tasks only weakly.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        client = ServeClient(
            stdout.reader, stdin, stderr=stderr.reader, on_log=on_log, name=name or self.name
        )
        session = _Session(client, server, task)
        try:
            await client.handshake()
        except BaseException:
            await session.close()
            raise
        return session

    async def open_client(
        self, *, name: str | None = None, on_log: Callable[[str], None] | None = None
    ) -> ServeClient:
        """A client that has done its handshake; its session ends when it is closed."""
        return (await self._open(name, on_log)).client

    @contextlib.asynccontextmanager
    async def connect(
        self, *, name: str | None = None, on_log: Callable[[str], None] | None = None
    ) -> AsyncIterator[ServeClient]:
        """``open_client`` that closes the client and waits for the server on exit."""
        session = await self._open(name, on_log)
        try:
            yield session.client
        finally:
            await session.close()


class FakeLink:
    """The executor's ``Link`` over a ``FakeStore``: sessions, cancellation, failures.

    ``cancelled`` lists the derivations whose builds ``cancel`` stopped: still running, or
    stopped already because the session closed under them (the executor cancels after leaving
    the session). ``cancel_calls`` counts every call.
    """

    def __init__(self, store: FakeStore, *, max_sessions: int = 8) -> None:
        self.store = store
        self.max_sessions = max_sessions
        self.sessions_opened = 0
        self.sessions_refused = 0
        self.peak_sessions = 0
        self.cancel_calls = 0
        self.cancelled: list[str] = []
        self._up = True
        self._open: set[_Session] = set()
        self._sessions: dict[ServeClient, _Session] = {}
        self._slots = asyncio.Semaphore(max_sessions)

    def go_down(self) -> None:
        """New sessions fail as with an unreachable ssh host; open ones are left alone."""
        self._up = False

    def come_up(self) -> None:
        self._up = True

    def break_next(self, at: BreakPoint = "request", *, message: str | None = None) -> None:
        self.store.break_next(at, message=message)

    def session(self) -> AbstractAsyncContextManager[ServeClient]:
        return self._session()

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[ServeClient]:
        name = self.store.name
        async with self._slots:
            if not self._up:
                self.sessions_refused += 1
                raise SshError(
                    f"cannot connect to builder '{name}': ssh: connect to host {name}"
                    " port 22: Connection refused",
                    hint="check it with `ssh` using the same options, or leave it out",
                )
            try:
                session = await self.store._open(name, None)  # noqa: SLF001
            except ProtocolError as exc:
                # As open_ssh_store: a failed handshake means the host cannot be used.
                self.sessions_refused += 1
                raise SshError(f"cannot connect to builder '{name}': {exc}") from exc
            self.sessions_opened += 1
            self._sessions[session.client] = session
            self._open.add(session)
            self.peak_sessions = max(self.peak_sessions, len(self._open))
            try:
                yield session.client
            finally:
                self._open.discard(session)
                await session.close()

    async def cancel(self, client: ServeClient) -> None:
        """Stop whatever ``client``'s session runs remotely, as killing the remote would."""
        self.cancel_calls += 1
        session = self._sessions.get(client)
        if session is None:
            return
        server = session.server
        if not session.task.done():
            session.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await session.task
        if server.stopped is not None:
            self.cancelled.append(server.stopped)
            server.stopped = None
