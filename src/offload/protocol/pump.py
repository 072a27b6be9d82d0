"""Moving bulk bytes from a pipe into a connection without passing them through Python.

The model: a child process (``nix-store --export``, ``--dump``) writes into a pipe whose read
end is ``src``; ``pump`` moves what it writes, up to its end or ``limit`` bytes, into a
connection's sending half. When that half is a pipe or socket of an asyncio transport, the
bytes go by ``splice(2)``: the kernel moves pipe pages, nothing is copied into this process,
and the waits between splices happen in a worker thread, off the event loop.
The transport's own buffer is flushed first and nothing else writes meanwhile (callers hold
the connection's request lock), so the bytes stay in order. Any other writer (a wrapper that
counts, in-memory pipes in tests) gets them by ``read``/``write`` instead.

``src`` must be non-blocking. Errors writing to the connection raise ``OSError`` (a peer that
went away: ``BrokenPipeError``); the caller tells them apart from its child's failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import select
import threading
from collections.abc import Callable
from typing import Any, Protocol, Self

from offload.threads import start

__all__ = ["CHUNK", "BulkPipe", "PumpTarget", "pump", "wait_fd"]

# Pipes are grown to this size where the system allows: fewer wake-ups per megabyte.
CHUNK = 1 << 20


class PumpTarget(Protocol):
    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...


class BulkPipe:
    """A pipe for a child's output: the read end ours (non-blocking), the write end the child's
    (blocking, as children expect), both close-on-exec, grown to ``CHUNK``. Closed on exit;
    ``release_write`` closes our copy of the write end once the child has its own."""

    def __init__(self) -> None:
        self.read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        os.set_blocking(write_end, True)
        self.write_end: int | None = write_end
        _grow(self.read_end)

    def release_write(self) -> None:
        if self.write_end is not None:
            os.close(self.write_end)
            self.write_end = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release_write()
        os.close(self.read_end)


def _grow(fd: int) -> None:
    # Above /proc/sys/fs/pipe-max-size an unprivileged process gets EPERM: keep the default.
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, CHUNK)


async def pump(src: int, writer: PumpTarget, limit: int | None = None) -> int:
    """Move bytes from ``src`` into ``writer`` until ``src`` ends or ``limit`` bytes moved;
    returns how many moved. A writer with ``pump_from`` (a wrapper) is handed the work."""
    delegate = getattr(writer, "pump_from", None)
    if delegate is not None:
        moved: int = await delegate(src, limit)
        return moved
    dst = _raw_fd(writer)
    if dst is None:
        return await _copy(src, writer, limit)
    await _flush(writer)
    # A copy of the descriptor: the transport owns (and may close) its own, and the event
    # loop refuses to watch a descriptor a transport owns.
    dup = os.dup(dst)
    try:
        _grow(dup)
        return await _splice(src, dup, limit)
    finally:
        os.close(dup)


def _raw_fd(writer: PumpTarget) -> int | None:
    transport: Any = getattr(writer, "transport", None)
    if transport is None:
        return None
    for key in ("pipe", "socket"):
        handle = transport.get_extra_info(key)
        if handle is not None:
            fileno: int = handle.fileno()
            return fileno
    return None


async def _flush(writer: PumpTarget) -> None:
    """Wait until the transport has written everything it holds (not just below its mark)."""
    transport: Any = getattr(writer, "transport", None)
    low, high = transport.get_write_buffer_limits()
    transport.set_write_buffer_limits(high=0, low=0)
    try:
        await writer.drain()
    finally:
        transport.set_write_buffer_limits(high=high, low=low)


async def _splice(src: int, dst: int, limit: int | None) -> int:
    """``_splice_loop`` in a worker thread: waiting for either end costs a ``poll`` there, not a
    turn of the event loop (ssh reads its stdin 32 KiB at a time: thousands of waits for a
    200 MiB closure, which through the loop cost a quarter of a core). Cancelling wakes the
    thread and waits for it, so nothing touches the descriptors once this returns."""
    wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        moving = _in_thread(_splice_loop, src, dst, limit, wake_r)
        try:
            return await asyncio.shield(moving)
        except asyncio.CancelledError:
            os.write(wake_w, b"x")
            while not moving.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([moving])
            raise
    finally:
        os.close(wake_r)
        os.close(wake_w)


def _in_thread(work: Callable[..., int], *args: int | None) -> asyncio.Future[int]:
    """``work(*args)`` in a thread of its own: a copy may last minutes, and must hold no
    thread of the loop's default executor that other work waits for."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()

    def settle(result: int | None, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result or 0)

    def run() -> None:
        try:
            result = work(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    start(threading.Thread(target=run, name="offload-splice", daemon=True))
    return done


def _splice_loop(src: int, dst: int, limit: int | None, wake: int) -> int:
    moved = 0
    flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
    while limit is None or moved < limit:
        want = CHUNK if limit is None else min(CHUNK, limit - moved)
        try:
            n = os.splice(src, dst, want, flags=flags)
        except BlockingIOError:
            # Either the child has not written yet or the connection is full: wait for that one.
            poller = select.poll()
            if _ready(src, select.POLLIN):
                poller.register(dst, select.POLLOUT)
            else:
                poller.register(src, select.POLLIN)
            poller.register(wake, select.POLLIN)
            if any(fd == wake for fd, _ in poller.poll()):
                break  # cancelled
            continue
        if n == 0:
            break
        moved += n
    return moved


async def _copy(src: int, writer: PumpTarget, limit: int | None) -> int:
    moved = 0
    while limit is None or moved < limit:
        want = CHUNK if limit is None else min(CHUNK, limit - moved)
        try:
            data = os.read(src, want)
        except BlockingIOError:
            await wait_fd(src, write=False)
            continue
        if not data:
            break
        writer.write(data)
        await writer.drain()
        moved += len(data)
    return moved


def _ready(fd: int, event: int) -> bool:
    poller = select.poll()
    poller.register(fd, event)
    # A hung-up or failed descriptor counts as ready: the next call reports it.
    return bool(poller.poll(0))


async def wait_fd(fd: int, *, write: bool) -> None:
    """Until ``fd`` is readable (or ``write``: writable), hung up or failed."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    (loop.add_writer if write else loop.add_reader)(fd, wake)
    try:
        await ready
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)
