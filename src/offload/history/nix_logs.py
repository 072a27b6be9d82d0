"""How long Nix took to build things, read from the times of its own build logs.

Nix keeps the log of every build it ran or had a builder run (``keep-build-log``, on by
default) as ``<log dir>/drvs/<2 hash characters>/<rest of the hash>-<name>.drv[.bz2]``. It
creates the file when the build starts (for a builder's build, once the build hook accepted)
and writes it last when the build ends, so the file's birth and its last change bracket the
build. A user's first ``offload build`` thus need not guess what their machine has built
before: ``NixLogs.durations`` answers, per name without version (history's key), the median
time of its newest logs.

A log does not say where the build ran, and the caller reads its time as work at the pool's
fastest speed (``offload.history.estimates``): that overestimates a build that ran on a slower
machine, the cheaper error (simulated, docs/BENCHMARKS.md "Estimates from Nix's build logs").

Birth times come from ``st_birthtime`` where ``os.stat`` has it (macOS), else from Linux's
``statx(2)``; a file system that keeps none gives no duration. The log directory is listed the
first time a ``NixLogs`` is asked, and again only past its ``max_age``; a directory that cannot
be read answers nothing.
Nothing here is an error: these are hints, and a run without them guesses as before.
"""

from __future__ import annotations

import ctypes
import os
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import cast

from offload.store.path import split_name_version

__all__ = ["KEEP", "NixLogs", "birth_time", "default_drvs_dir", "log_name"]

# Per name, the newest logs whose median is its duration (an older version's build is less
# like the next one).
KEEP = 5
# A log's time under this is taken as this: file times are kept to a clock tick, and a build
# of no work is not free.
_SHORTEST = 0.01
# Characters of the hash in a log's file name (the first two name its directory).
_HASH_REST = 30
_NIX32 = frozenset("0123456789abcdfghijklmnpqrsvwxyz")


def default_drvs_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where Nix keeps build logs: ``$NIX_LOG_DIR/drvs``, ``/nix/var/log/nix/drvs`` by default."""
    env = os.environ if env is None else env
    return Path(env.get("NIX_LOG_DIR") or "/nix/var/log/nix") / "drvs"


def log_name(file_name: str) -> str | None:
    """The derivation name of a log file's name (``<hash rest>-<name>.drv[.bz2]``), or None."""
    stem = file_name.removesuffix(".bz2")
    if not stem.endswith(".drv") or len(stem) < _HASH_REST + 6 or stem[_HASH_REST] != "-":
        return None
    if not _NIX32.issuperset(stem[:_HASH_REST]):
        return None
    return stem[_HASH_REST + 1 : -4] or None


class NixLogs:
    """The build logs under ``drvs_dir``, by name without version (module docstring)."""

    def __init__(self, drvs_dir: Path, *, max_age: float | None = None) -> None:
        self.drvs_dir = drvs_dir
        # How long a listing serves (None: for good, a run's); a hook's coordinator lists
        # again now and then, for what Nix built locally since.
        self.max_age = max_age
        self._files: dict[str, list[tuple[str, str]]] | None = None
        self._listed_at = 0.0  # monotonic

    def durations(self, pnames: Iterable[str]) -> dict[str, float]:
        """Seconds per name of ``pnames`` that has logs with birth times: the median of the
        ``KEEP`` born last."""
        found: dict[str, float] = {}
        for pname in pnames:
            timed = sorted(
                (times for path in self._paths(pname) if (times := _times(path)) is not None),
                reverse=True,
            )
            if timed:
                found[pname] = statistics.median(
                    max(end - start, _SHORTEST) for start, end in timed[:KEEP]
                )
        return found

    def _paths(self, pname: str) -> list[Path]:
        """The logs of ``pname``'s builds, of any version."""
        paths = []
        for directory, file_name in self._listed().get(_token(pname), ()):
            name = log_name(file_name)
            if name is not None and split_name_version(name)[0] == pname:
                paths.append(self.drvs_dir / directory / file_name)
        return paths

    def _listed(self) -> dict[str, list[tuple[str, str]]]:
        """Every file in the log directories, by the first word of its name (``_token``):
        a name is parsed only when asked for. 100,000 logs take about 0.2 s here, once."""
        now = time.monotonic()
        if self._files is None or (
            self.max_age is not None and now - self._listed_at > self.max_age
        ):
            self._files, self._listed_at = {}, now
            for directory in _names(self.drvs_dir):
                for file_name in _names(self.drvs_dir / directory):
                    stem = file_name.removesuffix(".bz2").removesuffix(".drv")
                    token = _token(stem[_HASH_REST + 1 :])
                    self._files.setdefault(token, []).append((directory, file_name))
        return self._files


def _token(name: str) -> str:
    """A name's first ``-``-separated word: the same for every version of a name."""
    return name.partition("-")[0]


def _names(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)  # noqa: PTH208 - names only: no Path per file
    except OSError:  # absent, a file, or not ours to read: no hints from it
        return []


def _times(path: Path) -> tuple[float, float] | None:
    """``path``'s birth and last change, or None if either is unknown or the change is before
    the birth (``offload.logs.keep_for_nix``'s copies)."""
    try:
        status = path.stat(follow_symlinks=False)
    except OSError:
        return None
    born = birth_time(path, status)
    if born is None or status.st_mtime < born:
        return None
    return born, status.st_mtime


def birth_time(path: Path, status: os.stat_result | None = None) -> float | None:
    """When ``path`` was created, or None where the system or file system does not say
    (``status``: its ``stat``, if the caller has it)."""
    if _STATX is not None:
        return _statx_birth(_STATX, path)
    if status is None:
        try:
            status = path.stat(follow_symlinks=False)
        except OSError:
            return None
    born = getattr(status, "st_birthtime", None)  # macOS and the BSDs
    return born if isinstance(born, float) else None


class _Timestamp(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_int64), ("nsec", ctypes.c_uint32), ("reserved", ctypes.c_int32)]


class _Statx(ctypes.Structure):
    """``struct statx`` (linux/stat.h) as far as ``stx_btime``; ``_rest`` pads it to its 256
    bytes, so the kernel never writes past it."""

    _fields_ = [
        ("mask", ctypes.c_uint32),
        ("blksize", ctypes.c_uint32),
        ("attributes", ctypes.c_uint64),
        ("nlink", ctypes.c_uint32),
        ("uid", ctypes.c_uint32),
        ("gid", ctypes.c_uint32),
        ("mode", ctypes.c_uint16),
        ("spare0", ctypes.c_uint16),
        ("ino", ctypes.c_uint64),
        ("size", ctypes.c_uint64),
        ("blocks", ctypes.c_uint64),
        ("attributes_mask", ctypes.c_uint64),
        ("atime", _Timestamp),
        ("btime", _Timestamp),
        ("_rest", ctypes.c_uint8 * 160),
    ]


_AT_FDCWD = -100
_AT_SYMLINK_NOFOLLOW = 0x100
_STATX_BTIME = 0x800


def _statx_function() -> Callable[..., int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).statx
    except (OSError, AttributeError):  # not glibc 2.28+ (or not Linux)
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_Statx),
    ]
    function.restype = ctypes.c_int
    return cast("Callable[..., int]", function)


_STATX = _statx_function()


def _statx_birth(statx: Callable[..., int], path: Path) -> float | None:
    found = _Statx()
    if statx(_AT_FDCWD, os.fsencode(path), _AT_SYMLINK_NOFOLLOW, _STATX_BTIME, found) != 0:
        return None
    if not found.mask & _STATX_BTIME:
        return None
    return float(found.btime.sec) + float(found.btime.nsec) / 1e9
