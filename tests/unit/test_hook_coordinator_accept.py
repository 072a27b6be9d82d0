"""The coordinator's accept loop outlives running out of descriptors.

One EMFILE from ``accept`` ended the loop for good: the socket still listened, so every later
hook connected and waited forever for its first byte. Run in a process of its own, whose limit
of open files is lowered to a few more than it holds; the hooks are real connections from
another process, each served (held open) a moment, as a build holds its hook's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from offload.hook.coordinator import Coordinator

_SCRIPT = """
import asyncio, os, resource, socket, subprocess, sys, types
from offload.hook.coordinator import Coordinator

path, hooks = sys.argv[1], 20
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
server.listen(64)
server.setblocking(False)
clients = subprocess.Popen([sys.executable, "-c", (
    "import socket, sys, time\\n"
    "held = []\\n"
    "for _ in range(%d):\\n"
    "    s = socket.socket(socket.AF_UNIX)\\n"
    "    s.connect(sys.argv[1])\\n"
    "    held.append(s)\\n"
    "for s in held:\\n"
    "    s.recv(1)\\n"  # until the coordinator has served it and let it go
) % hooks, path])
served = []

async def connection(conn):
    await asyncio.sleep(0.2)  # a build under way holds its hook's descriptor
    served.append(1)
    conn.close()

async def main():
    stub = types.SimpleNamespace(_served=set(), _connection=connection)
    stub._disarm_idle = lambda: None
    stub._done = stub._served.discard
    used = len(os.listdir("/proc/self/fd"))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (used + 6, hard))
    accepting = asyncio.create_task(Coordinator._accept(stub, server))
    while len(served) < hooks and not accepting.done():
        await asyncio.sleep(0.05)
    print(len(served), accepting.done())

asyncio.run(main())
clients.wait(timeout=30)
"""


def test_hooks_past_the_descriptor_limit_wait_and_are_served(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tmp_path / "s.sock")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["20", "False"]  # every hook served, the loop still on
    assert done.stderr.count("cannot take a hook now") >= 1  # said once per streak


def test_a_coordinator_that_ends_leaves_a_successors_pid_file(tmp_path: Path) -> None:
    # Its end (sessions closed, history written) can take seconds, and a successor started
    # meanwhile writes the same pid file: removing it hid the live coordinator.
    ending = Coordinator(tmp_path, tmp_path / "hook.sock", 0.0)
    ending.pid_file.write_text("999999999\n")  # the successor's
    ending._forget_pid()
    assert ending.pid_file.read_text() == "999999999\n"
    ending.pid_file.write_text(f"{os.getpid()}\n")  # its own
    ending._forget_pid()
    assert not ending.pid_file.exists()


def test_the_coordinator_gives_what_it_starts_the_hooks_own_pythonpath(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Started with the hook's whole sys.path as PYTHONPATH (nixpkgs' wrapper sets none): an
    # ssh ProxyCommand of another Python read this interpreter's standard library from it.
    from offload.hook.coordinator import _own_pythonpath
    from offload.hook.rendezvous import KEPT_PYTHONPATH

    monkeypatch.setenv("PYTHONPATH", "/nix/store/x-python3/lib/python3.11")
    monkeypatch.setenv(KEPT_PYTHONPATH, "")
    _own_pythonpath()
    assert "PYTHONPATH" not in os.environ
    assert KEPT_PYTHONPATH not in os.environ
    monkeypatch.setenv("PYTHONPATH", "/nix/store/x-python3/lib/python3.11")
    monkeypatch.setenv(KEPT_PYTHONPATH, "/home/me/lib")
    _own_pythonpath()
    assert os.environ["PYTHONPATH"] == "/home/me/lib"
