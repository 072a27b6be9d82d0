"""The JSON files of the state directory (backoff.json, use.json), read as a cache is read.

These files are what offload learned or was told, rewritten whole on each save; one a user
damaged (truncated, edited, replaced by a device or a FIFO) reads as no file at all rather than
failing every command. So reading never raises and never waits: at most ``MAX_BYTES`` are read,
without blocking, and text that is not UTF-8, not JSON or nested beyond the decoder's recursion
limit is ``None``. The callers check the shape of what they get.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["MAX_BYTES", "read_state_json"]

MAX_BYTES = 1 << 20  # a state file holds a few entries per machine; a MiB is thousands


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
    if len(data) > MAX_BYTES:
        return None
    try:
        value: object = json.loads(data.decode())
    except (ValueError, RecursionError):
        return None
    return value
