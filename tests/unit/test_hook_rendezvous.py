"""How a hook process finds its coordinator (``offload.hook.rendezvous``): one that takes no
connection, or takes it and says nothing, costs a hook ``GREETING_TIMEOUT`` and an error
naming it, never a wait for ever."""

from __future__ import annotations

import _socket
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.hook import rendezvous


@pytest.fixture
def listening(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A coordinator's socket that accepts nothing (its process stopped), with a backlog of 1."""
    monkeypatch.setattr(rendezvous, "GREETING_TIMEOUT", 0.3)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(tmp_path / "hook.sock"))
        server.listen(1)
        yield server


def test_a_connection_taken_and_never_greeted_is_given_up_naming_the_coordinator(
    tmp_path: Path, listening: socket.socket
) -> None:
    sock = rendezvous._connect(str(tmp_path / "hook.sock"))
    assert sock is not None
    try:
        with pytest.raises(OSError, match=r"did not answer within 0\.3 s") as raised:
            rendezvous.greeted(sock)
    finally:
        sock.close()
    assert f"pid {os.getpid()}" in str(raised.value)  # who listens there: the socket's peer
    assert "hook-coordinator.log" in str(raised.value)


def test_a_full_backlog_is_given_up_not_waited_on_for_ever(
    tmp_path: Path, listening: socket.socket
) -> None:
    # Hooks that gave up still fill a stopped coordinator's backlog (it accepts none): the
    # next hook's connect waited in the kernel for as long as it was stopped.
    path = str(tmp_path / "hook.sock")
    queued: list[_socket.socket] = []

    def fill() -> None:
        for _ in range(16):
            sock = rendezvous._connect(path)
            assert sock is not None
            queued.append(sock)

    try:
        with pytest.raises(OSError, match=r"took no connection within 0\.3 s"):
            fill()
        assert queued  # the backlog took some first
    finally:
        for sock in queued:
            sock.close()


def test_a_greeting_is_read_and_the_socket_left_blocking(tmp_path: Path) -> None:
    hook, coordinator = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with hook, coordinator:
        coordinator.sendall(rendezvous.GREETING)
        assert rendezvous.greeted(hook)
        assert hook.gettimeout() is None
        coordinator.close()
        assert not rendezvous.greeted(hook)  # closed: an idle coordinator's end, asked again


def test_the_protocol_is_in_the_socket_s_name(monkeypatch: pytest.MonkeyPatch) -> None:
    # A coordinator from before the greeting, in the same installation, would make every new
    # hook wait 10 s, and an old hook read the greeting as a refusal.
    before = rendezvous.socket_path("/var/lib/offload")
    monkeypatch.setattr(rendezvous, "_PROTOCOL", rendezvous._PROTOCOL + 1)
    assert rendezvous.socket_path("/var/lib/offload") != before
