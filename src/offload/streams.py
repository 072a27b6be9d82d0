"""Standard streams whose reader has gone (``offload build --json | head -1``, ``2>&1 | head``)
or that cannot be written (``>/dev/full``, a full disk).

Nix ignores a failed write to stderr so that its clean-up runs to the end, and nix-build with
its stdout's reader gone still builds, makes its result links and exits 0. offload does the
same: the first write that finds the reader gone points the stream's descriptor at /dev/null
(``reader_gone``), so nothing written there afterwards fails, neither what Python still holds
in the stream's buffer, nor another write to it, nor a Nix or ssh child sharing it. stderr
forgives every failed write so (``ForgivingStderr``: a full disk there has nowhere to be said).
Any other failure to write stdout is said as stdout's (``StdoutError``), not as an internal
error of whatever was printing. At the bottom of the layers: the renderers and the CLI both
use it.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
from types import TracebackType
from typing import TextIO

from offload.typing_compat import override

__all__ = ["ForgivingStderr", "SaidStdout", "StdoutError", "reader_gone", "unless_gone"]

# A reader that went away: a pipe's (EPIPE), or a terminal that was closed (EIO on a pty whose
# other side is gone, as a SIGHUP'd run's clean-up meets it).
_GONE = frozenset({errno.EPIPE, errno.EIO})


def unless_gone(stream: TextIO, *, any_error: bool = False) -> _UnlessGone:
    """Writes to ``stream`` in the block that find its reader gone (``any_error``: that fail
    at all) end the block, and point ``stream`` at /dev/null (``reader_gone``); any other
    failure is raised."""
    return _UnlessGone(stream, any_error=any_error)


class _UnlessGone:
    # A class, not a generator: its __exit__ says (to type checkers too) that it may swallow.
    def __init__(self, stream: TextIO, *, any_error: bool) -> None:
        self._stream = stream
        self._any_error = any_error

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if not isinstance(exc, OSError) or not (self._any_error or exc.errno in _GONE):
            return False
        reader_gone(self._stream)
        return True


def reader_gone(stream: TextIO) -> None:
    """``stream``'s reader has gone: its descriptor (if it has one) writes to /dev/null."""
    with contextlib.suppress(OSError, ValueError):  # ValueError: no descriptor, or closed
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, stream.fileno())
        finally:
            os.close(null)


class ForgivingStderr(io.TextIOWrapper):
    """stderr that never fails: for a reader that went away a run's lines and its clean-up's
    are worth nothing, and a disk full there leaves nowhere to say so; raising would stop the
    run half-way (Nix's ``writeToStderr`` ignores EPIPE, and a full disk stopped a build before
    it started)."""

    @override
    def write(self, text: str, /) -> int:
        with unless_gone(self, any_error=True):
            return super().write(text)
        return len(text)

    @override
    def flush(self) -> None:
        with unless_gone(self, any_error=True):
            super().flush()
            return
        with contextlib.suppress(OSError):  # what was held goes to /dev/null now
            super().flush()


class StdoutError(OSError):
    """Standard output could not be written (not for a reader gone: ``unless_gone``)."""


class SaidStdout(io.TextIOWrapper):
    """stdout whose failed writes (a full disk, ``>/dev/full``) raise ``StdoutError``, said as
    stdout's one line, not as an internal error of the code that printed."""

    @override
    def write(self, text: str, /) -> int:
        try:
            return super().write(text)
        except OSError as exc:
            _as_stdouts(exc)
            raise

    @override
    def flush(self) -> None:
        try:
            super().flush()
        except OSError as exc:
            _as_stdouts(exc)
            raise


def _as_stdouts(exc: OSError) -> None:
    """Raise ``exc`` as ``StdoutError``, unless it is one already (a flush inside a write) or
    says the reader went away, which is said where that is looked for (``unless_gone``)."""
    if exc.errno not in _GONE and not isinstance(exc, StdoutError):
        raise StdoutError(exc.errno, exc.strerror) from exc
