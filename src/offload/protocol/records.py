"""The records of the serve protocol (nix-protocols.md section 2) and how replies carry them.

Op codes, the magics and versions of the handshake, what a store knows about a path
(``PathInfo``), the settings sent with a build (``BuildOptions``) and the remote's answer to it
(``BuildResult``). Failed builds are not errors of the connection: a ``BuildResult``'s ``status``
says what happened. Which fields a record has on the wire depends on the protocol's minor
version, so the readers here take it as an argument.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum

from offload.booleans import nix_bool
from offload.errors import ProtocolError, StoreError
from offload.numerals import is_decimal
from offload.protocol.stderr import strip_ansi
from offload.protocol.wire import (
    ByteReader,
    encode_int,
    encode_str,
    encode_strs,
    read_int,
    read_str,
    read_strs,
    read_text,
)
from offload.store.nar import nar_hash_nix32
from offload.store.path import StorePath

__all__ = [
    "CLIENT_VERSION",
    "EXPORT_MAGIC",
    "SERVE_MAGIC_1",
    "SERVE_MAGIC_2",
    "BuildOptions",
    "BuildResult",
    "BuildStatus",
    "Op",
    "PathInfo",
    "checked_info",
    "nar_as_said",
    "nix_exit_bits",
    "nix_exit_code",
    "parse_realisation",
    "path_info_bytes",
    "read_build_result",
    "read_built_outputs",
    "read_path_info",
    "said_store_paths",
    "sorted_paths",
    "store_dir_of",
]

SERVE_MAGIC_1 = 0x390C9DEB
SERVE_MAGIC_2 = 0x5452EECB
CLIENT_VERSION = 0x207
EXPORT_MAGIC = 0x4558494E  # 'NIXE' (section 3.2)
# A narHash as PathInfo carries it (the worker protocol's base-16 is turned into this).
_NAR_HASH = re.compile(r"sha256:[0-9a-df-np-sv-z]{52}")
_HEX_NAR_HASH = re.compile(r"(?:sha256:)?[0-9a-fA-F]{64}")


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

    @property
    def succeeded(self) -> bool:
        """The outputs are valid now (built, substituted, or already there)."""
        return self in _SUCCESS


_SUCCESS = frozenset(
    {
        BuildStatus.BUILT,
        BuildStatus.SUBSTITUTED,
        BuildStatus.ALREADY_VALID,
        BuildStatus.RESOLVES_TO_ALREADY_VALID,
    }
)


def nix_exit_bits(status: int | None, message: str) -> int:
    """The bits of nix-build's exit status (0x60 | bits, or 1 with none) a failed build with
    this status sets (Nix 2.8's worker flags): ``done()`` sets permanentFailure (4) for
    PermanentFailure and InputRejected (CachedFailure in older Nix), timedOut (4 | 1) for
    TimedOut, and ``registerOutputs`` hashMismatch (4 | 2) for a fixed-output derivation whose
    hash differs (sent as OutputRejected, "hash mismatch" in its message). Every other status
    (OutputRejected for a missing output or a forbidden reference, TransientFailure,
    MiscFailure, LogLimitExceeded, NotDeterministic without --check) and none at all set none."""
    if status == BuildStatus.TIMED_OUT:
        return 4 | 1
    if status in _PERMANENT:
        return 4
    if status == BuildStatus.OUTPUT_REJECTED and "hash mismatch" in message:
        return 4 | 2
    return 0


def nix_exit_code(failures: Iterable[tuple[int | None, str]]) -> int:
    """nix-build's exit status for failed builds, each (its status, its message): 0x60 with
    the bits they set (``nix_exit_bits``), or 1 when they set none."""
    bits = 0
    for status, message in failures:
        bits |= nix_exit_bits(status, message)
    return 0x60 | bits if bits else 1


_PERMANENT = frozenset(
    {BuildStatus.PERMANENT_FAILURE, BuildStatus.INPUT_REJECTED, BuildStatus.CACHED_FAILURE}
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

    @classmethod
    def from_settings(cls, get: Callable[[str], str]) -> BuildOptions:
        """Nix's own per-build settings, read by ``get`` (e.g. ``NixSettings.get``): what
        Nix's hook sends (nix-protocols.md 2.4), so a build stops where Nix would stop it and
        is repeated as often as Nix would repeat it."""

        def whole(name: str) -> int:
            text = get(name)
            return int(text) if is_decimal(text) and len(text) < 19 else 0

        return cls(
            max_silent_time=whole("max-silent-time"),
            build_timeout=whole("timeout"),
            max_log_size=whole("max-build-log-size"),
            nr_repeats=whole("repeat"),
            enforce_determinism=nix_bool(get("enforce-determinism"), default=True),
            keep_failed=nix_bool(get("keep-failed")),
        )

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
    # CPU time of the build in microseconds, from daemons of worker protocol 1.37 and later.
    cpu_user_us: int | None = None
    cpu_system_us: int | None = None

    @property
    def success(self) -> bool:
        return self.status.succeeded


def store_dir_of(path: str) -> str:
    """The store directory of ``path``, one of ours (asked of a remote, never its answer)."""
    return path.rpartition("/")[0]


def said_store_paths(paths: Iterable[str], store_dir: str, what: str) -> None:
    """Each of ``paths``, as a remote store said it, is a store path of ``store_dir``. Callers
    lock, write, register and copy by these names (the hook as root), so any other name is the
    remote's lie or a damaged stream, never one to act on."""
    for path in paths:
        try:
            StorePath.parse(path, store_dir)
        except StoreError as exc:
            raise ProtocolError(f"{what}: {exc.message}") from None


def checked_info(info: PathInfo, *, complete: bool = True) -> PathInfo:
    """``info`` as a remote said it, with its path, deriver and references checked to be store
    paths of the path's own store directory and its narHash to be ``sha256:<nix32>`` (or
    missing, as the serve protocol before 2.4 leaves it): the hook writes these fields, one
    a line, into what ``nix-store --register-validity --hash-given`` reads.

    ``complete``: the protocol's version carries narHash and narSize (serve 2.4 on, every
    daemon), which Nix always fills: one without them is refused. Taken as "unknown" instead,
    they switched off the checks of the NAR that came (``nar_as_said``) and its bound: a
    builder could push any bytes, any number of them, into this host's store."""
    what = f"the path info of {info.path[:200]!r}"
    if complete and (not info.nar_hash or info.nar_size <= 0):
        raise ProtocolError(
            f"{what}: no narHash or narSize ({info.nar_size} bytes, {info.nar_hash[:80]!r}), "
            "which Nix always sends"
        )
    said = [info.path, *info.references]
    if info.deriver is not None:
        said.append(info.deriver)
    said_store_paths(said, store_dir_of(info.path), what)
    if info.nar_hash and not _NAR_HASH.fullmatch(info.nar_hash):
        raise ProtocolError(f"{what}: its narHash {info.nar_hash[:80]!r} is not sha256:<nix32>")
    return info


def sorted_paths(paths: Iterable[str]) -> list[str]:
    # Nix writes a StorePathSet sorted by base name; do the same so requests match Nix's bytes.
    return sorted(set(paths), key=lambda p: (p.rsplit("/", 1)[-1], p))


async def read_path_info(r: ByteReader, path: str, minor: int) -> PathInfo:
    """The rest of one QueryPathInfos entry, after its path."""
    deriver = await read_str(r, f"the deriver of {path}")
    references = await read_strs(r, f"the references of {path}")
    await read_int(r, f"the download size of {path}")
    nar_size = await read_int(r, f"the narSize of {path}")
    nar_hash, ca, sigs = "", "", []
    if minor >= 4:
        nar_hash = await read_str(r, f"the narHash of {path}")
        ca = await read_str(r, f"the ca of {path}")
        sigs = await read_strs(r, f"the signatures of {path}")
    info = PathInfo(
        path=path,
        deriver=deriver or None,
        references=tuple(references),
        nar_size=nar_size,
        nar_hash=nar_hash,
        ca=ca or None,
        sigs=tuple(sigs),
    )
    return checked_info(info, complete=minor >= 4)


async def read_build_status(r: ByteReader) -> tuple[BuildStatus, str]:
    """A BuildResult's status and error message, first in both protocols."""
    code = await read_int(r, "the build status")
    try:
        status = BuildStatus(code)
    except ValueError as exc:
        raise ProtocolError(f"unknown build status {code}") from exc
    return status, strip_ansi(await read_text(r, "the build error message"))


async def read_build_times(r: ByteReader) -> tuple[int, bool, int, int]:
    """timesBuilt, isNonDeterministic, startTime and stopTime, where the version sends them."""
    times_built = await read_int(r, "timesBuilt")
    non_det = bool(await read_int(r, "isNonDeterministic"))
    start = await read_int(r, "startTime")
    stop = await read_int(r, "stopTime")
    return times_built, non_det, start, stop


async def read_build_result(r: ByteReader, drv_path: str, minor: int) -> BuildResult:
    """The reply to BuildDerivation of ``drv_path``."""
    status, error_msg = await read_build_status(r)
    times_built, non_det, start, stop = 0, False, 0, 0
    if minor >= 3:
        times_built, non_det, start, stop = await read_build_times(r)
    # Nix 2.8-2.10 send builtOutputs whatever the client version (nix-protocols.md 2.6), and
    # newer servers send it to clients announcing minor >= 6, as we do. ``minor`` is the
    # lower of the two versions: below 6 the server is Nix 2.3 (0x205), which never sends it
    # (read, it was waited for while the server waited for the next request: a hang).
    outputs = await read_built_outputs(r, drv_path) if minor >= 6 else {}
    return BuildResult(
        status=status,
        error_msg=error_msg,
        times_built=times_built,
        is_non_deterministic=non_det,
        start_time=start,
        stop_time=stop,
        built_outputs=outputs,
    )


async def read_built_outputs(r: ByteReader, drv_path: str) -> dict[str, str]:
    """A BuildResult's ``builtOutputs`` (both protocols): output names to full store paths."""
    count = await read_int(r, "the number of built outputs")
    store_dir = drv_path.rsplit("/", 1)[0]
    outputs: dict[str, str] = {}
    for _ in range(count):
        drv_output = await read_str(r, "a built output id")
        realisation = await read_str(r, "a built output realisation")
        name, out_path = parse_realisation(drv_output, realisation, store_dir)
        outputs[name] = out_path
    return outputs


def parse_realisation(drv_output: str, realisation: str, store_dir: str) -> tuple[str, str]:
    """The output name and full output path of one ``builtOutputs`` entry (id, JSON)."""
    name = drv_output.rpartition("!")[2]
    try:
        out_path = json.loads(realisation)["outPath"]
    # RecursionError: JSON nested deeper than Python's stack ("[" * 100000).
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise ProtocolError(f"malformed realisation for {drv_output[:200]!r}") from exc
    if not isinstance(out_path, str) or not name:
        raise ProtocolError(f"malformed realisation for {drv_output[:200]!r}")
    # 2.8 writes the base name only; later versions may write the full path.
    full = out_path if out_path.startswith("/") else f"{store_dir}/{out_path}"
    said_store_paths([full], store_dir, f"the realisation of {drv_output[:200]!r}")
    return name, full


def path_info_bytes(info: PathInfo, registration_time: int | None) -> bytes:
    """A ValidPathInfo without its path, as AddToStoreNar and AddMultipleToStore send it."""
    regtime = int(time.time()) if registration_time is None else registration_time
    return b"".join(
        (
            encode_str(info.deriver or ""),
            encode_str(info.nar_hash),
            encode_strs(sorted_paths(info.references)),
            encode_int(regtime),
            encode_int(info.nar_size),
            encode_int(0),  # ultimate: the receiving store did not build it
            encode_strs(sorted(set(info.sigs))),
            encode_str(info.ca or ""),
        )
    )


def nar_as_said(info: PathInfo, size: int, sha256_hex: str) -> None:
    """The NAR that came is the one ``info`` says: a ``ProtocolError`` if not. A narSize of 0
    or no hash is Nix's "unknown" (paths registered without them), not held against it; a
    hash is ``sha256:<nix32>`` as Nix prints it, or in hex."""
    said = info.nar_hash
    if _NAR_HASH.fullmatch(said):
        same = said == nar_hash_nix32(sha256_hex)
    elif _HEX_NAR_HASH.fullmatch(said):
        same = said.removeprefix("sha256:").lower() == sha256_hex
    else:
        same = not said
    if not same or (info.nar_size and size != info.nar_size):
        got = nar_hash_nix32(sha256_hex)
        raise ProtocolError(
            f"{info.path} arrived as another NAR than said ({size} bytes, {got}; said "
            f"{info.nar_size} bytes, {said[:80]!r})"
        )
