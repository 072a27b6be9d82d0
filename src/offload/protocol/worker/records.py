"""The records of Nix's worker (daemon) protocol (docs/worker-protocol.md) and their wire forms.

Op codes, the magics and version numbers of the handshake, the stderr frame tags, Nix's
activity, result and verbosity codes, the settings SetOptions sends (``DaemonOptions``), and
readers for the path infos and build results the daemon replies with. Which fields a record has
depends on the negotiated minor version, so readers take it as an argument. Path infos and build
results come back as the serve protocol's ``PathInfo`` and ``BuildResult``, so code above the
protocol sees one model whichever protocol a builder speaks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum

from offload.errors import ProtocolError
from offload.protocol.records import (
    BuildOptions,
    BuildResult,
    PathInfo,
    checked_info,
    read_build_status,
    read_build_times,
    read_built_outputs,
)
from offload.protocol.wire import ByteReader, encode_int, encode_str, read_int, read_str, read_strs
from offload.store.nar import nar_hash_nix32

__all__ = [
    "CLIENT_VERSION",
    "MIN_DAEMON_MINOR",
    "WORKER_MAGIC_1",
    "WORKER_MAGIC_2",
    "ActivityType",
    "DaemonOptions",
    "Frame",
    "Op",
    "ResultType",
    "Verbosity",
    "read_build_result",
    "read_optional_trust",
    "read_path_info",
]

WORKER_MAGIC_1 = 0x6E697863  # 'cxin'
WORKER_MAGIC_2 = 0x6478696F  # 'oixd'
# 1.38: the newest number any released daemon announces (2.24 and later, docs section 2).
CLIENT_VERSION = 0x126
# Framed AddToStoreNar arrived in 1.23; older daemons (Nix 2.3 and before) are refused.
MIN_DAEMON_MINOR = 23


class Op(IntEnum):
    IS_VALID_PATH = 1
    SET_OPTIONS = 19
    QUERY_PATH_INFO = 26
    QUERY_VALID_PATHS = 31
    BUILD_DERIVATION = 36
    NAR_FROM_PATH = 38
    ADD_TO_STORE_NAR = 39
    ADD_MULTIPLE_TO_STORE = 44


class Frame(IntEnum):
    """The tags of the daemon's stderr frames (docs section 3)."""

    NEXT = 0x6F6C6D67
    READ = 0x64617461
    WRITE = 0x64617416
    LAST = 0x616C7473
    ERROR = 0x63787470
    START_ACTIVITY = 0x53545254
    STOP_ACTIVITY = 0x53544F50
    RESULT = 0x52534C54


class Verbosity(IntEnum):
    ERROR = 0
    WARN = 1
    NOTICE = 2
    INFO = 3
    TALKATIVE = 4
    CHATTY = 5
    DEBUG = 6
    VOMIT = 7


class ActivityType(IntEnum):
    UNKNOWN = 0
    COPY_PATH = 100
    FILE_TRANSFER = 101
    REALISE = 102
    COPY_PATHS = 103
    BUILDS = 104
    BUILD = 105
    OPTIMISE_STORE = 106
    VERIFY_PATHS = 107
    SUBSTITUTE = 108
    QUERY_PATH_INFO = 109
    POST_BUILD_HOOK = 110
    BUILD_WAITING = 111


class ResultType(IntEnum):
    FILE_LINKED = 100
    BUILD_LOG_LINE = 101
    UNTRUSTED_PATH = 102
    CORRUPTED_PATH = 103
    SET_PHASE = 104
    PROGRESS = 105
    SET_EXPECTED = 106
    POST_BUILD_LOG_LINE = 107


@dataclass(frozen=True)
class DaemonOptions:
    """What SetOptions sends (docs section 4.1); defaults keep a remote build quiet and local.

    ``overrides`` are Nix settings by name; the daemon applies only some of them for untrusted
    clients (``timeout``, ``repeat``, ``connect-timeout``, trusted substituters).
    """

    keep_failed: bool = False
    keep_going: bool = False
    try_fallback: bool = False
    verbosity: Verbosity = Verbosity.ERROR
    max_build_jobs: int = 1
    max_silent_time: int = 0
    verbose_build: bool = True
    build_cores: int = 0
    use_substitutes: bool = False
    overrides: Mapping[str, str] | None = None

    @classmethod
    def from_build_options(cls, options: BuildOptions, *, build_cores: int = 0) -> DaemonOptions:
        """The daemon form of the serve protocol's per-build settings."""
        return cls(
            keep_failed=options.keep_failed,
            max_silent_time=options.max_silent_time,
            build_cores=build_cores,
            overrides={
                "timeout": str(options.build_timeout),
                "max-build-log-size": str(options.max_log_size),
                "repeat": str(options.nr_repeats),
                "enforce-determinism": "true" if options.enforce_determinism else "false",
            },
        )

    def encode(self) -> bytes:
        overrides = sorted((self.overrides or {}).items())
        fields = (
            int(self.keep_failed),
            int(self.keep_going),
            int(self.try_fallback),
            int(self.verbosity),
            self.max_build_jobs,
            self.max_silent_time,
            1,  # obsolete useBuildHook
            int(Verbosity.ERROR if self.verbose_build else Verbosity.VOMIT),
            0,  # obsolete logType
            0,  # obsolete printBuildTrace
            self.build_cores,
            int(self.use_substitutes),
        )
        out = [encode_int(Op.SET_OPTIONS), *(encode_int(f) for f in fields)]
        out.append(encode_int(len(overrides)))
        out += [encode_str(k) + encode_str(v) for k, v in overrides]
        return b"".join(out)


_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")


async def read_path_info(r: ByteReader, path: str, minor: int) -> PathInfo:
    """A ValidPathInfo without its path (docs section 4.4); narHash as ``sha256:<nix32>``."""
    deriver = await read_str(r, f"the deriver of {path}")
    nar_hash = await read_str(r, f"the narHash of {path}")
    references = await read_strs(r, f"the references of {path}")
    await read_int(r, f"the registration time of {path}")
    nar_size = await read_int(r, f"the narSize of {path}")
    ca, sigs = "", []
    if minor >= 16:
        await read_int(r, f"the ultimate flag of {path}")
        sigs = await read_strs(r, f"the signatures of {path}")
        ca = await read_str(r, f"the ca of {path}")
    # The daemon writes base-16 without a prefix; the serve protocol and `nix path-info` print
    # sha256:<nix32>, the form PathInfo carries everywhere else.
    if _HEX_SHA256.fullmatch(nar_hash):
        nar_hash = nar_hash_nix32(nar_hash)
    info = PathInfo(
        path=path,
        deriver=deriver or None,
        references=tuple(references),
        nar_size=nar_size,
        nar_hash=nar_hash,
        ca=ca or None,
        sigs=tuple(sigs),
    )
    return checked_info(info)


async def _read_optional_micros(r: ByteReader, what: str) -> int | None:
    tag = await read_int(r, f"the tag of {what}")
    if tag == 0:
        return None
    if tag != 1:
        raise ProtocolError(f"invalid optional tag {tag} for {what}")
    return await read_int(r, what)


async def read_optional_trust(r: ByteReader) -> bool | None:
    """The daemon's trust in us (1.35 and later): None when it does not say."""
    code = await read_int(r, "the trust status")
    if code > 2:  # 0 unknown, 1 trusted, 2 not trusted
        raise ProtocolError(f"invalid trust status {code}")
    return None if code == 0 else code == 1


async def read_build_result(r: ByteReader, drv_path: str, minor: int) -> BuildResult:
    """The reply to BuildDerivation of ``drv_path`` (docs section 4.7)."""
    status, error_msg = await read_build_status(r)
    times_built, non_det, start, stop = 0, False, 0, 0
    if minor >= 29:
        times_built, non_det, start, stop = await read_build_times(r)
    cpu_user = cpu_system = None
    if minor >= 37:
        cpu_user = await _read_optional_micros(r, "cpuUser")
        cpu_system = await _read_optional_micros(r, "cpuSystem")
    outputs = await read_built_outputs(r, drv_path) if minor >= 28 else {}
    return BuildResult(
        status=status,
        error_msg=error_msg,
        times_built=times_built,
        is_non_deterministic=non_det,
        start_time=start,
        stop_time=stop,
        built_outputs=outputs,
        cpu_user_us=cpu_user,
        cpu_system_us=cpu_system,
    )
