"""A hook's handover to the coordinator, over a real Unix socket pair and real pipes."""

from __future__ import annotations

import asyncio
import json
import os
import select
import socket
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from offload.hook.client import (
    ANSWERED,
    ASKED,
    HELLO_MAGIC,
    REPLYING,
    SETTINGS,
    send_hello,
    served,
)
from offload.hook.handover import Hello, open_channels, parse_hello, receive_hello
from offload.hook.rendezvous import GREETING, socket_path


def _open_fds() -> set[str]:
    return {entry.name for entry in Path("/proc/self/fd").iterdir()}


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    hook, coordinator = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    coordinator.setblocking(False)
    with hook, coordinator:
        yield hook, coordinator


async def _receive(sock: socket.socket) -> Hello | None:
    return await receive_hello(sock)


def test_the_hello_carries_the_pipes_and_the_context(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    hook, coordinator = pair
    stdin_r, stdin_w = os.pipe()
    err_r, err_w = os.pipe()
    send_hello(hook, {0: stdin_r, 2: err_w}, ["offload-hook", "4"], {"HOME": "/h"}, 4242)
    hello = asyncio.run(_receive(coordinator))
    assert hello is not None
    assert (hello.argv, hello.env, hello.parent) == (["offload-hook", "4"], {"HOME": "/h"}, 4242)
    assert set(hello.fds) == {0, 2}
    # They are the same pipes: what goes into one end comes out of the other.
    os.write(stdin_w, b"settings")
    assert os.read(hello.fds[0], 8) == b"settings"
    os.write(hello.fds[2], b"# decline\n")
    assert os.read(err_r, 10) == b"# decline\n"
    for fd in (stdin_r, stdin_w, err_r, err_w, *hello.fds.values()):
        os.close(fd)


def test_a_hello_that_is_not_one_is_dropped_with_its_descriptors(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    hook, coordinator = pair
    r, w = os.pipe()
    before = _open_fds()
    rights = r.to_bytes(4, "little")
    hook.sendmsg([(10).to_bytes(4, "big")], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
    hook.sendall(b"not marsh!")
    assert asyncio.run(_receive(coordinator)) is None
    assert _open_fds() == before  # the descriptor that came with it was closed
    os.close(r)
    os.close(w)


def test_a_hello_cut_short_is_dropped(pair: tuple[socket.socket, socket.socket]) -> None:
    hook, coordinator = pair
    hook.sendall((1 << 20).to_bytes(4, "big") + b"abc")
    hook.shutdown(socket.SHUT_WR)
    assert asyncio.run(_receive(coordinator)) is None


def test_channels_flush_every_line_before_they_close() -> None:
    stdin_r, stdin_w = os.pipe()
    err_r, err_w = os.pipe()
    log_r, log_w = os.pipe()

    async def go() -> bytes:
        channels = await open_channels({0: stdin_r, 2: err_w, 4: log_w})
        os.write(stdin_w, b"try")
        os.close(stdin_w)
        data = await channels.reader.read()
        for _ in range(100):
            channels.io.err(b"@nix {}\n")
        channels.io.log(b"a log line\n")
        await channels.aclose()
        return data

    assert asyncio.run(go()) == b"try"
    with os.fdopen(err_r, "rb") as err, os.fdopen(log_r, "rb") as log:
        assert err.read() == b"@nix {}\n" * 100  # EOF: every copy of the write end is closed
        assert log.read() == b"a log line\n"


def test_a_long_state_directory_moves_the_socket_to_a_private_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert socket_path("/var/lib/offload").startswith("/var/lib/offload/hook-")
    long = Path(socket_path("/" + "x" * 120))
    assert len(bytes(long)) < 108
    assert long.parent == tmp_path / f"offload-hook-{os.getuid()}"
    assert long.parent.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize(
    "body",
    [
        b"[\xff\xff\xff\x7f",  # marshal: a list of 2^31 - 1 items in five bytes
        HELLO_MAGIC + b"\x001\x000,0\x000",  # one pipe named twice
        HELLO_MAGIC + b"\x001\x00\x009",  # nine arguments, none sent
        HELLO_MAGIC + b"\x00-1\x00\x000",
        HELLO_MAGIC + b"\x001\x00\x000\x00NOEQUALS",
    ],
    ids=["huge-list", "same-pipe", "argc", "parent", "env"],
)
def test_a_hostile_hello_is_refused_in_bounded_memory(body: bytes) -> None:
    received = [7, 8] if b"0,0" in body else []
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="hello"):
            parse_hello(body, received)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_a_coordinator_that_closes_with_us_in_its_backlog_is_asked_again(tmp_path: Path) -> None:
    # It idled out as we reached it: never took our pipes, so the hook tries again (it fell
    # back to deciding in its own process on the reset).
    path = str(tmp_path / "c.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listening:
        listening.bind(path)
        listening.listen(4)
        hook = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        hook.connect(path)
    with hook:  # the listener closed with the connection never accepted
        assert served(hook) is None


@pytest.fixture
def nix_stdin() -> Iterator[int]:
    """A pipe on our fd 0, as Nix gives a hook its requests: its write end."""
    read, write = os.pipe()
    saved = os.dup(0)
    os.dup2(read, 0)
    os.close(read)
    try:
        yield write
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(write)


def _gone_after(
    pair: tuple[socket.socket, socket.socket],
    sent: bytes,
    successor: Callable[[], socket.socket] | None = None,
) -> int | None:
    """What the hook returns when its coordinator sends ``sent`` and is gone."""
    hook, coordinator = pair
    coordinator.setblocking(True)
    coordinator.sendall(GREETING + sent)
    coordinator.shutdown(socket.SHUT_WR)  # gone without the exit code
    return served(hook, successor=successor)


# The socket's other end is this process: alive, and not a child of its own.
STOPPED = (
    "offload-hook: error: the coordinator stopped before the hook ended"
    f" (pid {os.getpid()}, its log: hook-coordinator.log in the state directory)"
)


@pytest.mark.usefixtures("nix_stdin")
def test_a_coordinator_gone_after_an_accept_fails_the_hook_with_one_json_line(
    pair: tuple[socket.socket, socket.socket], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _gone_after(pair, b"+wa") == 1  # taken, asked, and about to accept
    err = capsys.readouterr().err
    assert err.startswith("@nix ")  # after '# accept' Nix drops the hook's plain lines
    assert err.count("\n") == 1
    message = json.loads(err.removeprefix("@nix "))
    assert message["action"] == "msg"
    assert message["level"] == 0
    assert message["msg"] == STOPPED


@pytest.mark.parametrize("sent", [b"+", b"+w", b"+wnw", b"+wnwnw"])
@pytest.mark.usefixtures("nix_stdin")
def test_a_coordinator_gone_while_nix_waits_for_a_reply_is_answered_for(
    pair: tuple[socket.socket, socket.socket], capsys: pytest.CaptureFixture[str], sent: bytes
) -> None:
    # Nix waits for a reply (its first try comes with the settings): a hook that ended then
    # failed the whole nix-build. Postponed, Nix asks again, finds the hook gone, and shows
    # the line that follows as "build hook died unexpectedly: <it>" (raw: no JSON).
    assert _gone_after(pair, sent) == 1
    err = capsys.readouterr().err
    assert err == f"# postpone\n{STOPPED}\n"


def test_a_try_the_coordinator_never_read_is_answered_for(
    pair: tuple[socket.socket, socket.socket],
    capsys: pytest.CaptureFixture[str],
    nix_stdin: int,
) -> None:
    os.write(nix_stdin, b"\x03\x00\x00\x00\x00\x00\x00\x00try\x00\x00\x00\x00\x00")
    assert _gone_after(pair, b"+wn") == 1  # it answered the last one only
    assert capsys.readouterr().err.splitlines()[0] == "# postpone"


@pytest.mark.usefixtures("nix_stdin")
def test_a_coordinator_gone_between_requests_fails_the_hook_with_one_plain_line(
    pair: tuple[socket.socket, socket.socket], capsys: pytest.CaptureFixture[str]
) -> None:
    # Nix waits for nothing: it finds the hook gone as it writes the next try, and shows this
    # line after "build hook died unexpectedly: " (a JSON message there was shown raw).
    assert _gone_after(pair, b"+wnwn") == 1
    assert capsys.readouterr().err == f"{STOPPED}\n"


def test_an_accepted_build_s_exit_code_is_the_hook_s(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    hook, coordinator = pair
    coordinator.setblocking(True)
    coordinator.sendall(GREETING + b"+wnwa100\n")
    assert served(hook) == 100


@pytest.mark.parametrize("sent", [b"+w", b"+wnwn"])
def test_nix_s_next_try_finds_a_hook_whose_coordinator_died_gone_at_once(
    pair: tuple[socket.socket, socket.socket], nix_stdin: int, sent: bytes
) -> None:
    # Nix, having read the postpone (or between tries), may write its next try at once, while
    # the hook process is still ending: a write into an open pipe made Nix wait for a reply
    # and read EOF, which fails the nix-build; a broken pipe is a hook gone, which it survives.
    assert _gone_after(pair, sent) == 1  # this process stands for the hook, not yet ended
    pair[1].close()  # and the pipes it was handed, unread, with it
    with pytest.raises(BrokenPipeError):
        os.write(nix_stdin, b"\x03\x00\x00\x00\x00\x00\x00\x00try\x00\x00\x00\x00\x00")


TAKEN_OVER = (
    f"offload-hook: warning: the coordinator stopped (pid {os.getpid()}, its log:"
    " hook-coordinator.log in the state directory); a new one decides in its place\n"
)
SETTINGS_READ = b"S" * 24
TRY = b"T" * 16


def _forwarded(fd: int, size: int) -> bytes:
    """``size`` bytes the hook forwards into ``fd``; fewer if it forwards none for 10 s."""
    read = b""
    while len(read) < size and select.select([fd], [], [], 10)[0]:
        if not (chunk := os.read(fd, size - len(read))):
            break
        read += chunk
    return read


def _gone_after_reading(
    pair: tuple[socket.socket, socket.socket],
    nix_stdin: int,
    turns: tuple[bytes, ...],
    successor: Callable[[], socket.socket] | None = None,
    next_try: bytes = b"",
) -> int | None:
    """What the hook returns when Nix wrote the settings and a try (together, as it sends the
    first) and its coordinator took the pipes, read both from the one the hook forwards them
    into, told the settings' length and ``turns``, and is gone. With ``next_try``, Nix writes
    it once those turns are told (the last, a reply being written) and the coordinator tells
    the reply written and reads it before it goes."""
    hook, coordinator = pair
    said = SETTINGS_READ + TRY
    os.write(nix_stdin, said)
    read: list[bytes] = []

    def coordinate() -> None:
        coordinator.setblocking(True)
        coordinator.sendall(GREETING)
        coordinator.setblocking(False)
        hello = asyncio.run(_receive(coordinator))
        assert hello is not None
        try:
            coordinator.setblocking(True)
            coordinator.sendall(b"+")
            read.append(_forwarded(hello.fds[0], len(said)))
            coordinator.sendall(SETTINGS + len(SETTINGS_READ).to_bytes(4, "big"))
            coordinator.sendall(b"".join(turns))
            if next_try:
                os.write(nix_stdin, next_try)  # Nix read the reply, and asks again at once
                coordinator.sendall(ANSWERED)
                read.append(_forwarded(hello.fds[0], len(next_try)))
        finally:
            for fd in hello.fds.values():
                os.close(fd)
            coordinator.shutdown(socket.SHUT_WR)  # gone without the exit code

    thread = threading.Thread(target=coordinate)
    thread.start()
    try:
        return served(hook, successor=successor)
    finally:
        thread.join()
        assert read == [said, next_try] if next_try else [said]


@pytest.mark.parametrize(
    ("turns", "replay"),
    [((ASKED,), SETTINGS_READ + TRY), ((ASKED, REPLYING, ANSWERED), SETTINGS_READ)],
    ids=["nix-waits-for-a-reply", "between-tries"],
)
def test_a_coordinator_gone_before_an_accept_is_taken_over_with_what_nix_said(
    pair: tuple[socket.socket, socket.socket],
    capsys: pytest.CaptureFixture[str],
    nix_stdin: int,
    turns: tuple[bytes, ...],
    replay: bytes,
) -> None:
    # The new coordinator reads the settings, and the try Nix waits on (none once it was
    # answered), before Nix's pipe; it serves the rest, and its exit code is the hook's.
    new_hook, new_coordinator = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with new_coordinator:
        new_coordinator.sendall(GREETING + b"+0\n")
        assert _gone_after_reading(pair, nix_stdin, turns, successor=lambda: new_hook) == 0
        new_coordinator.setblocking(False)
        hello = asyncio.run(_receive(new_coordinator))
    assert hello is not None
    assert hello.replay == replay
    for fd in hello.fds.values():
        os.close(fd)
    assert capsys.readouterr().err == TAKEN_OVER


def test_a_coordinator_gone_while_writing_a_reply_is_not_taken_over(
    pair: tuple[socket.socket, socket.socket],
    capsys: pytest.CaptureFixture[str],
    nix_stdin: int,
) -> None:
    # Nix may have the reply: a new coordinator answering the try again would give Nix two
    # replies for one try, the second read as the next try's.
    def successor() -> socket.socket:
        raise AssertionError("taken over")

    assert _gone_after_reading(pair, nix_stdin, (ASKED, REPLYING), successor=successor) == 1
    assert capsys.readouterr().err == f"# postpone\n{STOPPED}\n"


def test_a_try_nix_sends_as_a_reply_is_told_written_is_kept_for_a_new_coordinator(
    pair: tuple[socket.socket, socket.socket],
    capsys: pytest.CaptureFixture[str],
    nix_stdin: int,
) -> None:
    # Nix may read a reply and send its next try before the hook process hears the reply was
    # written: that try is not the one answered, and a new coordinator must have it.
    new_hook, new_coordinator = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with new_coordinator:
        new_coordinator.sendall(GREETING + b"+0\n")
        turns = (ASKED, REPLYING)
        assert _gone_after_reading(pair, nix_stdin, turns, lambda: new_hook, b"N" * 20) == 0
        new_coordinator.setblocking(False)
        hello = asyncio.run(_receive(new_coordinator))
    assert hello is not None
    assert hello.replay == SETTINGS_READ + b"N" * 20
    for fd in hello.fds.values():
        os.close(fd)
    assert capsys.readouterr().err == TAKEN_OVER
