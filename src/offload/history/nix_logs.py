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

import functools
import os
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from offload.store.path import split_name_version

__all__ = ["KEEP", "NixLogs", "default_drvs_dir", "file_times", "log_name"]

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
        # A first word's logs by name without version, parsed the first time one of its names
        # is asked (``_paths``), then kept with the listing: names that share a first word
        # (``python3.12-*``) would otherwise parse every log of that word once per name.
        self._parsed: dict[str, dict[str, list[Path]]] = {}

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
        files = self._listed()
        token = _token(pname)
        if (by_pname := self._parsed.get(token)) is None:
            by_pname = self._parsed[token] = {}
            for directory, file_name in files.get(token, ()):
                if (name := log_name(file_name)) is not None:
                    path = self.drvs_dir / directory / file_name
                    by_pname.setdefault(split_name_version(name)[0], []).append(path)
        return by_pname.get(pname, [])

    def _listed(self) -> dict[str, list[tuple[str, str]]]:
        """Every file in the log directories, by the first word of its name (``_token``):
        a name is parsed only when asked for. 100,000 logs take about 0.2 s here, once."""
        now = time.monotonic()
        if self._files is None or (
            self.max_age is not None and now - self._listed_at > self.max_age
        ):
            self._files, self._listed_at, self._parsed = {}, now, {}
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
    the birth (``offload.nix_log_copies.keep_for_nix``'s copies)."""
    times = file_times(path)
    if times is None or times[1] < times[0]:
        return None
    return times


def file_times(path: Path) -> tuple[float, float] | None:
    """When ``path`` was created and last changed, or None where the system or the file
    system does not say when it was created (or it cannot be read)."""
    statx = _statx()
    if statx is not None:
        return statx(path)
    try:
        status = path.stat(follow_symlinks=False)
    except OSError:
        return None
    born = getattr(status, "st_birthtime", None)  # macOS and the BSDs
    return (born, status.st_mtime) if isinstance(born, float) else None


_AT_FDCWD = -100
_AT_SYMLINK_NOFOLLOW = 0x100
_STATX_WANTED = 0x40 | 0x800  # STATX_MTIME | STATX_BTIME


@functools.cache
def _statx() -> Callable[[Path], tuple[float, float] | None] | None:
    """Linux's ``statx(2)`` as a function of a path to its birth and last change (one call
    for both), or None without it (not Linux, not glibc 2.28+). ctypes is loaded here, the
    first time a log's times are asked, not with the module: ``offload build`` imports this
    on every run."""
    import ctypes

    class Timestamp(ctypes.Structure):
        _fields_ = [("sec", ctypes.c_int64), ("nsec", ctypes.c_uint32), ("pad", ctypes.c_int32)]

    class Statx(ctypes.Structure):
        """``struct statx`` (linux/stat.h) up to ``stx_mtime``, padded to its 256 bytes so
        the kernel never writes past it."""

        _fields_ = [
            ("mask", ctypes.c_uint32),
            ("head", ctypes.c_uint8 * 60),  # blksize to attributes_mask: not read
            ("atime", Timestamp),
            ("btime", Timestamp),
            ("ctime", Timestamp),
            ("mtime", Timestamp),
            ("tail", ctypes.c_uint8 * 128),
        ]

    try:
        call = ctypes.CDLL(None, use_errno=True).statx
    except (OSError, AttributeError):
        return None
    call.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(Statx),
    ]
    call.restype = ctypes.c_int
    assert ctypes.sizeof(Statx) == 256

    def times(path: Path) -> tuple[float, float] | None:
        found = Statx()
        if call(_AT_FDCWD, os.fsencode(path), _AT_SYMLINK_NOFOLLOW, _STATX_WANTED, found) != 0:
            return None
        if found.mask & _STATX_WANTED != _STATX_WANTED:
            return None
        return _seconds(found.btime), _seconds(found.mtime)

    return times


def _seconds(stamp: Any) -> float:  # noqa: ANN401 - a ctypes structure of _statx's
    return float(stamp.sec) + float(stamp.nsec) / 1e9
