"""``bench.lag_proxy`` relays ssh's bytes unchanged, each way later by its lag, to loopback only."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

PROXY = Path(__file__).parents[2] / "bench" / "lag_proxy.py"


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A loopback server that sends back what it reads, until EOF."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    server.close()
    thread.join(timeout=10)


def _proxy(host: str, port: int, lag: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "LAG_SECONDS": lag}
    argv = [sys.executable, str(PROXY), host, str(port)]
    return subprocess.Popen(
        argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def test_bytes_come_back_unchanged_and_a_round_trip_takes_the_lag_twice(echo_port):
    with _proxy("127.0.0.1", echo_port, "0.1") as proxy:
        sent = os.urandom(200_000)  # several chunks: their order is kept
        began = time.monotonic()
        # Written whole, then EOF, which is passed on: the server ends, and so does the proxy.
        got, _ = proxy.communicate(sent, timeout=30)
        took = time.monotonic() - began
        assert proxy.returncode == 0
    assert got == sent
    assert took >= 0.2  # 0.1 s there and 0.1 s back, at the least


def test_a_host_that_is_not_loopback_is_refused():
    with _proxy("192.0.2.1", 22, "0") as proxy:
        _, err = proxy.communicate(timeout=30)
    assert proxy.returncode == 1
    assert b"192.0.2.1 is not a loopback address" in err
