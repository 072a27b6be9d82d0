"""The JSON files of the state directory (backoff.json, use.json, slot-fallback.json,
loads.json), read as a cache is read and written whole.

These files are what offload learned or was told, rewritten whole on each save; one a user
damaged (truncated, edited, replaced by a device or a FIFO) reads as no file at all rather than
failing every command. So reading never raises and never waits: at most ``MAX_BYTES`` are read,
without blocking, and text that is not UTF-8, not JSON or nested beyond the decoder's recursion
limit is ``None``; so is a number no state file holds, which would pass a type check and then
fail where it is used (``float`` of a 400-digit integer raises, and ``NaN`` printed back is not
JSON): ``NaN`` and ``Infinity``, a float that overflows, an integer of more than 18 digits. The
callers check the shape of what they get. Each is a merge of what a process learned into what
the file says: read, merged and written under ``merging``'s lock, so that two processes saving
at once (a hook's coordinator, an ``offload build``) each keep the other's change.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

__all__ = [
    "MAX_BYTES",
    "decode_state_json",
    "latest_entries",
    "merging",
    "read_state_json",
    "write_state_json",
]

MAX_BYTES = 1 << 20  # a state file holds a few entries per machine; a MiB is thousands
# Digits of the longest integer read: a time in nanoseconds has 19, offload writes seconds.
_MAX_DIGITS = 18


def read_state_json(path: Path) -> object | None:
    """The decoded JSON of ``path``, or None when it is missing, too big or not JSON."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return None
    try:
        data = os.read(fd, MAX_BYTES + 1)
        while 0 < len(data) <= MAX_BYTES and (more := os.read(fd, MAX_BYTES + 1 - len(data))):
            data += more
    except OSError:  # a directory, a FIFO without a writer's data (EAGAIN), an I/O error
        return None
    finally:
        os.close(fd)
    return decode_state_json(data)


def decode_state_json(data: bytes) -> object | None:
    """``data`` decoded as a state file is, or None (too big, not JSON, a number no state file
    holds): for a file the caller read itself (under a lock)."""
    if len(data) > MAX_BYTES:
        return None
    try:
        value: object = json.loads(
            data.decode(), parse_int=_int, parse_float=_float, parse_constant=_constant
        )
    except (ValueError, RecursionError):
        return None
    return value


def _int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_DIGITS:
        raise ValueError(f"integer of {len(text)} digits")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999
        raise ValueError(f"float {text[:20]} out of range")
    return value


def _constant(name: str) -> float:
    raise ValueError(f"{name} in a state file")


def latest_entries(
    paths: Sequence[Path], entry: Callable[[object], T | None], when: Callable[[T], float]
) -> dict[str, T]:
    """The entries by name of every file in ``paths`` (JSON objects), each read by ``entry``
    (None: malformed, left out); a name in several files keeps its latest by ``when``."""
    merged: dict[str, T] = {}
    for path in paths:
        data = read_state_json(path)
        if not isinstance(data, dict):
            continue
        for name, raw in data.items():
            read = entry(raw)
            if read is not None and (name not in merged or when(read) > when(merged[name])):
                merged[str(name)] = read
    return merged


@contextlib.contextmanager
def merging(path: Path) -> Iterator[None]:
    """Hold ``path``'s lock (``.<name>.lock`` beside it, 0600) for a read, merge and write of
    it. Where the lock cannot be made (a read-only directory), none is held: the write that
    follows fails there all the same, and says why."""
    lock = path.with_name(f".{path.name}.lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_state_json(path: Path, data: object) -> None:
    """``data`` as ``path``, replaced atomically (a reader sees the old file or the new one),
    mode 0600 in a directory made 0700 if it is missing."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=1)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
