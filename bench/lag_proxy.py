"""An ssh ProxyCommand that puts a builder further away: ``python -m bench.lag_proxy HOST PORT``.

It relays ssh's connection to HOST:PORT and holds every chunk ``$LAG_SECONDS`` (default 0.005)
before passing it on, each way, in order: a round trip costs twice that more, as to a builder
that far. The loopback fleet answers in microseconds, which hides what a run pays per round
trip to a real builder (``bench.ab_fixed --lag``). Only the bench uses it, on loopback.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable

__all__ = ["main"]

_CHUNK = 65536


async def _pump(
    read: Callable[[int], Awaitable[bytes]],
    write: Callable[[bytes], object],
    end: Callable[[], None],
    lag: float,
) -> None:
    """``read``'s bytes to ``write``, each chunk ``lag`` s after it came; ``end`` after EOF."""
    held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await held.get()
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if not data:
                end()
                return
            write(data)

    delivering = asyncio.get_running_loop().create_task(deliver())
    while True:
        data = await read(_CHUNK)
        held.put_nowait((time.monotonic() + lag, data))
        if not data:
            break
    await delivering


async def _relay(host: str, port: int, lag: float) -> None:
    remote_in, remote_out = await asyncio.open_connection(host, port)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(stdin), os.fdopen(0, "rb", buffering=0)
    )
    stdout = os.fdopen(1, "wb", buffering=0)
    await asyncio.gather(
        _pump(stdin.read, remote_out.write, remote_out.write_eof, lag),
        _pump(remote_in.read, stdout.write, stdout.close, lag),
    )


def main(argv: list[str]) -> int:
    host, port = argv
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"lag_proxy: {host} is not a loopback address", file=sys.stderr)
        return 1
    asyncio.run(_relay(host, int(port), float(os.environ.get("LAG_SECONDS", "0.005"))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
