"""offload.protocol.pump and .export: a child's output moved into a connection, with real pipes
and real child processes (``sh``), checked byte for byte and for every way it can go wrong."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from offload.protocol.export import ChildBytes, Exporter, ExportFailed
from offload.protocol.pump import BulkPipe, pump
from tests.helpers.worker_wire import Writer

T = TypeVar("T")
PAYLOAD = bytes(range(256)) * 12_289  # 3 MiB and change: several pipe-fulls, not aligned


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def _sh(script: str, size: int | None = None, name: str = "local") -> ChildBytes:
    return ChildBytes(("sh", "-c", script), None, name, size)


async def _through_pipe(
    move: Callable[[asyncio.StreamWriter], Awaitable[int]], head: bytes
) -> tuple[int, bytes]:
    """Run ``move`` into the writing end of a real pipe (as a session's stdin is) after
    ``head`` was written through the transport; returns what ``move`` said and what arrived."""
    loop = asyncio.get_running_loop()
    read_end, write_end = os.pipe()
    reader = asyncio.StreamReader(limit=1 << 24)
    read_transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_end, "rb", 0)
    )
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(write_end, "wb", 0)
    )
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    received = loop.create_task(reader.read())
    try:
        writer.write(head)  # more than the pipe holds: part of it waits in the transport
        moved = await move(writer)
        writer.write(b"tail")
        await writer.drain()
        writer.close()
        return moved, await received
    finally:
        writer.close()
        read_transport.close()
        received.cancel()


def test_pump_splices_after_what_the_transport_still_holds(tmp_path: Path) -> None:
    source = tmp_path / "payload"
    source.write_bytes(PAYLOAD)
    head = b"h" * 300_000
    child = _sh(f"cat {source}")
    moved, got = run(_through_pipe(child.pump_into, head))
    assert moved == len(PAYLOAD)
    assert got == head + PAYLOAD + b"tail"


def test_pump_stops_at_the_limit_and_falls_back_without_a_descriptor() -> None:
    async def go() -> tuple[int, bytes, bytes]:
        with BulkPipe() as pipe:
            assert pipe.write_end is not None
            os.write(pipe.write_end, b"0123456789")
            pipe.release_write()
            writer = Writer()  # no descriptor: pump falls back to read and write
            moved = await pump(pipe.read_end, writer, 6)
            return moved, bytes(writer.data), os.read(pipe.read_end, 100)

    assert run(go()) == (6, b"012345", b"6789")


def test_child_bytes_is_a_plain_producer_too() -> None:
    chunks: list[bytes] = []

    async def sink(chunk: bytes) -> None:
        chunks.append(chunk)

    run(_sh("head -c 3000000 /dev/zero", 3_000_000)(sink))
    assert b"".join(chunks) == b"\0" * 3_000_000


def test_a_failing_child_is_the_local_stores_error_with_its_message() -> None:
    child = _sh("printf partial; echo 'error: path is not valid' >&2; exit 3", name="local")
    with pytest.raises(ExportFailed) as caught:
        run(_through_pipe(child.pump_into, b""))
    assert caught.value.peer == "local"
    assert "error: path is not valid" in caught.value.message


@pytest.mark.parametrize(("size", "said"), [(100, "99 bytes"), (98, "more bytes")])
def test_a_nar_of_another_size_than_announced_fails(size: int, said: str) -> None:
    child = _sh("head -c 99 /dev/zero", size)
    with pytest.raises(ExportFailed, match=f"wrote {said}, narSize says {size}"):
        run(_through_pipe(child.pump_into, b""))


def test_exporter_commands_name_the_store() -> None:
    exporter = Exporter(("nix-store", "--store", "/tmp/x"), None, "local", can_dump=False)
    assert exporter.export(["/nix/store/a", "/nix/store/b"]).argv == (
        "nix-store",
        "--store",
        "/tmp/x",
        "--export",
        "/nix/store/a",
        "/nix/store/b",
    )
    dump = exporter.dump("/nix/store/a", 42)
    assert dump.argv[-2:] == ("--dump", "/nix/store/a")
    assert dump.size == 42


def test_a_cancelled_pump_stops_its_thread_and_leaves_the_descriptors_usable() -> None:
    async def go() -> None:
        with BulkPipe() as pipe:
            dst_r, dst_w = os.pipe2(os.O_NONBLOCK)
            try:
                assert pipe.write_end is not None
                os.write(pipe.write_end, b"first")
                moving = asyncio.create_task(pump(pipe.read_end, _RawWriter(dst_w)))
                # The splice thread moves what is there, then waits for more that never comes.
                assert await _read_some(dst_r) == b"first"
                moving.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await moving
                # The thread is gone: what is written now stays in the pipe for us to read.
                os.write(pipe.write_end, b"second")
                assert os.read(pipe.read_end, 100) == b"second"
            finally:
                os.close(dst_r)
                os.close(dst_w)

    run(go())


class _RawWriter:
    """A writer whose transport is a bare pipe descriptor (as a session's stdin pipe)."""

    def __init__(self, fd: int) -> None:
        self.transport = _Transport(fd)

    def write(self, data: bytes) -> None:
        os.write(self.transport.fd, data)

    async def drain(self) -> None:
        return None


class _Transport:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._limits = (0, 0)

    def get_extra_info(self, key: str) -> object:
        return os.fdopen(self.fd, "wb", closefd=False) if key == "pipe" else None

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._limits

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        self._limits = (low, high)


async def _read_some(fd: int) -> bytes:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)
    return os.read(fd, 100)
