"""A pipe whose buffer is full, for a process that must be caught while it writes: the next
write to it blocks until the reader drains it (``/proc``'s wchan says so), with no sleep
standing in for that moment."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["drained", "full_pipe", "writing"]


def full_pipe() -> tuple[int, int]:
    """(read end, write end) of a pipe whose buffer is full: the next write to it blocks."""
    read, write = os.pipe()
    os.set_blocking(write, False)
    try:
        while True:
            os.write(write, b"-" * 4096)
    except BlockingIOError:
        pass
    os.set_blocking(write, True)
    return read, write


def writing(pid: int) -> bool:
    """Whether process ``pid`` waits in a write to a pipe."""
    try:
        return "pipe_write" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False


def drained(fd: int) -> bytes:
    """All that the pipe's read end ``fd`` gives until its writers are gone."""
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)
