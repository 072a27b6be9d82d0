"""What every fuzz test shares: the two budgets, the one allowed kind of error, bounded streams.

A reader of outside bytes may end in one of two ways only: a result, or the one-line error of
its layer (an ``OffloadError`` subclass whose message and hint hold no line break). ``FUZZ`` is
the hypothesis settings each test runs under: a modest number of examples in the normal test
run (profile ``ci``), and at least 10,000 per reader with ``HYPOTHESIS_PROFILE=deep`` (run by
hand; docs/RELIABILITY.md records the last such run).

Streams are in memory and never hand out more than they hold: a reader that trusted a hostile
length would ask ``readexactly`` for it, and with ``asyncio.StreamReader`` that is a buffer of
that size. ``Stream`` records the largest request, so a test can say no request exceeded the
limit (64 MiB, what the serve protocol allows one string); ``Endless`` is a pipe that never ends
and counts what was taken from it.
"""

from __future__ import annotations

import asyncio
import os
import tracemalloc
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings

from offload.errors import OffloadError

__all__ = [
    "FUZZ",
    "LIMIT",
    "Endless",
    "Stream",
    "bounded_memory",
    "drive",
    "one_line",
]

T = TypeVar("T")

LIMIT = 64 * 1024 * 1024

settings.register_profile(
    "fuzz-ci",
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "fuzz-deep",
    max_examples=10_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_PROFILE = "fuzz-deep" if os.environ.get("HYPOTHESIS_PROFILE") == "deep" else "fuzz-ci"
FUZZ = settings.get_profile(_PROFILE)


def one_line(exc: BaseException, kind: type[OffloadError] = OffloadError) -> None:
    """``exc`` is an error of the allowed kind, said in one line (and a one-line hint)."""
    assert isinstance(exc, kind), f"{type(exc).__name__}: {exc}"
    assert exc.message, "an error without a message"
    assert "\n" not in exc.message, repr(exc.message)
    assert "\r" not in exc.message, repr(exc.message)
    assert exc.hint is None or "\n" not in exc.hint, repr(exc.hint)


def drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that reads only in-memory streams: it must finish without suspending."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise AssertionError("the reader waited on an in-memory stream")


class Stream:
    """A pipe whose writer wrote ``data`` and closed it; ``largest`` is the biggest request."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.largest = 0

    async def readexactly(self, n: int) -> bytes:
        self.largest = max(self.largest, n)
        assert n <= LIMIT, f"a reader trusted a length of {n} bytes"
        chunk = self.data[self.pos : self.pos + n]
        self.pos += len(chunk)
        if len(chunk) < n:
            raise asyncio.IncompleteReadError(chunk, n)
        return chunk

    async def read(self, n: int = -1) -> bytes:
        size = len(self.data) - self.pos if n < 0 else n
        chunk = self.data[self.pos : self.pos + size]
        self.pos += len(chunk)
        return chunk


class Endless:
    """A pipe that never ends: ``head`` then ``fill`` repeated; ``taken`` counts bytes read."""

    def __init__(self, head: bytes, fill: bytes = b"\0" * 8, budget: int = LIMIT) -> None:
        self.head = head
        self.fill = fill
        self.budget = budget
        self.taken = 0

    def _take(self, n: int) -> bytes:
        assert self.taken + n <= self.budget, "a reader kept reading an endless stream"
        out = bytearray()
        while len(out) < n:
            at = self.taken + len(out)
            if at < len(self.head):
                out += self.head[at : at + n - len(out)]
            else:
                offset = (at - len(self.head)) % len(self.fill)
                out += self.fill[offset : offset + n - len(out)]
        self.taken += n
        return bytes(out)

    async def readexactly(self, n: int) -> bytes:
        assert n <= LIMIT, f"a reader trusted a length of {n} bytes"
        return self._take(n)

    async def read(self, n: int = -1) -> bytes:
        return self._take(1 << 16 if n < 0 else n)


@contextmanager
def bounded_memory(fed: int, factor: int = 64) -> Iterator[None]:
    """The block allocates at most 1 MiB plus ``factor`` times the ``fed`` bytes of input."""
    tracemalloc.start()
    try:
        yield
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < (1 << 20) + factor * fed, f"{peak} bytes allocated for {fed} bytes of input"


def outcome(call: Callable[[], T], kind: type[OffloadError] = OffloadError) -> T | OffloadError:
    """``call()``'s result, or the one-line error it raised (anything else fails the test)."""
    try:
        return call()
    except OffloadError as exc:
        one_line(exc, kind)
        return exc
