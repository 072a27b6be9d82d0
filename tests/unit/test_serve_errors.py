"""ServeClient against scripted server bytes: what the remote said on stderr becomes the
error (its last words, the daemon's refusal of the ssh user with the fix), a stderr that never
ends is waited for a bounded time, and closing ends the session and its stderr."""

from __future__ import annotations

import asyncio

import pytest

from offload.errors import ProtocolError, RemoteError
from offload.protocol.stderr import ErrorTail
from tests.helpers.serve_wire import A, connected, reader_with, run, strs


def test_eof_with_stderr_error_is_remote_error() -> None:
    lines: list[str] = []
    path = "/nix/store/qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq-gone"
    err = f"\x1b[31;1merror:\x1b[0m path '\x1b[35;1m{path}\x1b[0m' is not valid\n"

    async def go() -> None:
        stderr = reader_with(b"some builder line\n" + err.encode())
        client, _ = await connected(b"", stderr=stderr, on_log=lines.append)
        with pytest.raises(RemoteError) as info:
            await client.dump_store_path(path, _discard)
        assert info.value.message == f"b1: path '{path}' is not valid"
        assert info.value.hint is not None
        assert "references" in info.value.hint
        assert isinstance(info.value.__cause__, ProtocolError)
        await client.close()

    run(go())
    assert lines[0] == "some builder line"
    assert "\x1b[31;1merror:" in lines[1]


def test_remote_error_waits_for_stderr_and_keeps_continuation_lines() -> None:
    # The error arrives on stderr only after stdout has ended; the client waits for it.
    async def go() -> None:
        stderr = asyncio.StreamReader()
        client, _ = await connected(b"", stderr=stderr)
        loop = asyncio.get_running_loop()
        err = b"\x1b[31;1merror:\x1b[0m hash mismatch importing path 'x';\n"
        err += b"  specified: 1\n  got:  2\n"
        loop.call_soon(stderr.feed_data, err)
        loop.call_soon(stderr.feed_eof)
        with pytest.raises(RemoteError) as info:
            await client.query_valid_paths([A])
        assert info.value.message == "b1: hash mismatch importing path 'x'; specified: 1 got: 2"
        assert info.value.hint is not None
        assert "narHash" in info.value.hint

    run(go())


def test_a_remote_error_with_blank_lines_is_one_line_single_spaced() -> None:
    # Nix quotes an HTTP error's response body after blank lines (its indent stripped): the
    # error line had two spaces at each ("('Bad Gateway')  response body:  <html>...").
    async def go() -> None:
        err = b"error: unable to download 'http://c/x.narinfo': HTTP error 502 ('Bad Gateway')\n"
        err += b"\n       response body:\n\n       <html>down</html>\n"
        client, _ = await connected(b"", stderr=reader_with(err))
        with pytest.raises(RemoteError) as info:
            await client.query_valid_paths([A])
        assert info.value.message == (
            "b1: unable to download 'http://c/x.narinfo': HTTP error 502 ('Bad Gateway')"
            " response body: <html>down</html>"
        )

    run(go())


def test_eof_without_stderr_end_is_bounded() -> None:
    # stderr never ends: after stderr_timeout the plain "closed the connection" error is raised.
    async def go() -> None:
        client, _ = await connected(b"", stderr=asyncio.StreamReader())
        with pytest.raises(ProtocolError, match="closed the connection during QueryClosure"):
            await client.query_closure([A])
        await client.close()

    run(go())


@pytest.mark.parametrize(
    "refusal",
    [
        "cannot add path '/nix/store/x' because it lacks a valid signature",  # Nix 2.8
        "cannot add path '/nix/store/x' because it lacks a signature by a trusted key",
        "you are not privileged to build input-addressed derivations",
    ],
)
def test_a_daemon_refusing_the_ssh_user_is_said_with_the_fix(refusal: str) -> None:
    # nix-store --serve --write as a user outside trusted-users stores through the daemon.
    async def go() -> None:
        client, _ = await connected(b"", stderr=reader_with(f"error: {refusal}\n".encode()))
        with pytest.raises(RemoteError) as info:
            await client.query_valid_paths([A])
        assert info.value.message.startswith("builder 'b1' does not trust the ssh user")
        assert refusal in info.value.message
        assert info.value.hint is not None
        assert "trusted-users in b1's nix.conf" in info.value.hint.replace("`", "")

    run(go())


def test_later_error_block_wins_over_builder_error_line() -> None:
    async def go() -> None:
        stderr = reader_with(b"error: printed by a builder\nerror: the real one\n")
        client, _ = await connected(b"", stderr=stderr)
        with pytest.raises(RemoteError, match=r"b1: the real one$"):
            await client.query_valid_paths([A])

    run(go())


def test_broken_on_log_does_not_stop_stderr_draining() -> None:
    seen: list[str] = []

    def on_log(line: str) -> None:
        seen.append(line)
        raise RuntimeError(line)

    async def go() -> None:
        stderr = reader_with(b"one\ntwo\nerror: boom\n")
        client, _ = await connected(b"", stderr=stderr, on_log=on_log)
        with pytest.raises(RemoteError, match="b1: boom"):
            await client.query_valid_paths([A])

    run(go())
    assert seen == ["one", "two", "error: boom"]


async def _discard(chunk: bytes) -> None:
    pass


def test_close_closes_writer_and_finishes_stderr() -> None:
    lines: list[str] = []

    async def go() -> None:
        stderr = asyncio.StreamReader()
        client, w = await connected(strs(), stderr=stderr, on_log=lines.append)
        assert await client.query_valid_paths([A]) == set()
        stderr.feed_data(b"bye")
        stderr.feed_eof()
        await client.close()
        assert w.closed
        await client.close()
        with pytest.raises(ProtocolError, match="unusable"):
            await client.query_valid_paths([A])

    run(go())
    assert lines == ["bye"]


def test_a_long_log_after_an_error_line_is_not_held_nor_taken_for_the_end() -> None:
    # A build prints an "error:" line of its own (rustc, a test suite) and logs on: the tail
    # keeps the block's first lines, cut, never the whole log; and that block is not what
    # explains the session's end.
    tail = ErrorTail()
    tail.feed("error: cannot find value `x` in this scope" + " x" * 5000)
    for n in range(100_000):
        tail.feed(f"   = note: line {n}")
    assert len(tail.lines) == ErrorTail.MAX_LINES
    assert max(map(len, tail.lines)) == ErrorTail.MAX_LINE
    tail.feed("   Compiling crate2 v1.0")  # still indented: the block goes on, unheld
    assert tail.as_error("b1") is not None
    for n in range(3):
        tail.feed(f"Compiling crate{n} v1.0")
    assert tail.as_error("b1") is None
    assert len(tail.lines) == ErrorTail.MAX_LINES
    tail.feed("error: the last block wins")
    assert tail.lines == ["error: the last block wins"]


@pytest.mark.parametrize(
    ("last", "whose"),
    [
        ("Connection to 127.0.0.1 closed by remote host.", "ssh's word"),
        ("Shared connection to b1 closed.", "ssh's word"),
        ("building the thing...", "its last line"),
    ],
)
def test_ssh_s_own_word_on_the_end_is_not_called_the_builders(last: str, whose: str) -> None:
    # A killed builder's end read "(its last line: 'Connection to 127.0.0.1 closed by remote
    # host.')", ssh's words taken for the builder's (hook tester).
    async def go() -> None:
        client, _ = await connected(b"", stderr=reader_with(f"{last}\n".encode()))
        with pytest.raises(ProtocolError) as raised:
            await client.query_closure([A])
        assert raised.value.message.endswith(f" ({whose}: {last!r})")

    run(go())


def test_a_session_ending_after_a_builds_own_error_says_its_last_line() -> None:
    # cargo's "error: could not compile" and its log, then ssh's own last words: the end is
    # told by those, not by cargo's error, and as ssh's, not the builder's (hook tester).
    log = "error: could not compile `foo`\n" + "".join(f"Compiling c{n}\n" for n in range(60))
    log += "Timeout, server b1 not responding.\n"

    async def go() -> None:
        client, _ = await connected(b"", stderr=reader_with(log.encode()))
        with pytest.raises(ProtocolError) as raised:
            await client.query_closure([A])
        assert raised.value.message == (
            "b1 closed the connection during QueryClosure"
            " (ssh's word: 'Timeout, server b1 not responding.')"
        )

    run(go())
