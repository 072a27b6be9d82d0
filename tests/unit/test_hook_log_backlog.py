"""A build's log that Nix does not read is held up to a bound, then left out and said.

Under the nix-daemon, a client that stops reading (a paused pager) stops the daemon's worker
reading the hook's log: the coordinator, serving every hook, held the whole build's log in
memory for it. A real pipe nobody reads, then read to its end."""

from __future__ import annotations

import asyncio
import fcntl
import os

from offload.hook.handover import _writer

LINE = b"x" * 1023 + b"\n"


def _read_all(fd: int) -> bytes:
    got = b""
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return got
        if not chunk:
            return got
        got += chunk


def test_a_log_nobody_reads_is_held_to_its_bound_then_said_left_out() -> None:
    async def main() -> bytes:
        read, write = os.pipe()
        fcntl.fcntl(read, fcntl.F_SETFL, os.O_NONBLOCK)
        sink, close = await _writer(write, cap=64 << 10)
        for _ in range(2000):  # 2 MiB, while nobody reads
            sink(LINE)
        got = _read_all(read)
        for _ in range(100):  # the loop writes what waited as the pipe empties
            await asyncio.sleep(0.01)
            got += _read_all(read)
        sink(b"the end\n")
        await close()
        got += _read_all(read)
        os.close(read)
        return got

    got = asyncio.run(main())
    kept = got.count(LINE)
    assert 64 <= kept <= 256  # the pipe's 64 KiB and the bound's, not 2 MiB
    lines = got.decode().splitlines()
    assert lines[-2] == (
        f"offload-hook: {(2000 - kept) * len(LINE)} bytes of log left out: Nix was not reading"
    )
    assert lines[-1] == "the end"
