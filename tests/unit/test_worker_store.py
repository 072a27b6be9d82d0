"""WorkerClient as a ``StoreClient``: what the scheduler and hook use of it over ssh-ng://.

A scripted 2.8 daemon (its replies fed to a stream) answers; the requests the client wrote are
checked byte for byte where the order matters (pipelined path infos). The real daemon is in
tests/integration/test_worker_nix.py and test_ssh_ng.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from offload.errors import DaemonError
from offload.protocol.records import PathInfo
from offload.protocol.store import copy_paths
from offload.protocol.wire import encode_int, encode_str, encode_strs
from offload.protocol.worker import WorkerClient
from offload.protocol.worker.client import CLIENT_HELLO, SERVER_HELLO
from offload.protocol.worker.records import Frame, Op
from offload.transport.dialect import DAEMON, SERVE, daemon_program
from offload.transport.links.base import open_serve
from tests.helpers.worker_wire import Writer, error_frame, stream

T = TypeVar("T")
LAST = encode_int(Frame.LAST)
HELLO_28 = SERVER_HELLO + encode_int(0x122) + encode_str("2.8.0") + LAST + LAST
A = "/nix/store/" + "a" * 32 + "-a"
B = "/nix/store/" + "b" * 32 + "-b"
C = "/nix/store/" + "c" * 32 + "-c"
HASH = "sha256:" + "0" * 52


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def info_reply(refs: tuple[str, ...]) -> bytes:
    """QueryPathInfo's answer for a valid path (minor 34)."""
    out = LAST + encode_int(1) + encode_str("") + encode_str(HASH) + encode_strs(list(refs))
    return out + encode_int(0) + encode_int(8) + encode_int(0) + encode_strs([]) + encode_str("")


INVALID = LAST + encode_int(0)


def client_after_handshake(replies: bytes, *, sent: bool = False) -> tuple[WorkerClient, Writer]:
    writer = Writer()
    client = WorkerClient(stream(HELLO_28 + replies), writer, name="ng")
    run(client.handshake(sent=sent))
    return client, writer


def test_a_handshake_the_transport_began_does_not_send_the_hello_again() -> None:
    _, writer = client_after_handshake(b"", sent=True)
    assert not bytes(writer.data).startswith(CLIENT_HELLO)
    _, fresh = client_after_handshake(b"")
    assert bytes(fresh.data).startswith(CLIENT_HELLO)


def test_path_infos_are_asked_in_one_write_and_invalid_ones_left_out() -> None:
    client, writer = client_after_handshake(info_reply((B,)) + INVALID)
    start = len(writer.data)
    infos = run(client.query_path_infos([C, A]))
    assert set(infos) == {A}
    assert infos[A].references == (B,)
    asked = bytes(writer.data[start:])
    assert asked == encode_int(Op.QUERY_PATH_INFO) + encode_str(A) + encode_int(
        Op.QUERY_PATH_INFO
    ) + encode_str(C)


def test_a_refused_path_info_leaves_the_connection_in_step() -> None:
    replies = error_frame("path is not valid") + info_reply(()) + LAST + encode_strs([B])
    client, _ = client_after_handshake(replies)
    with pytest.raises(DaemonError, match="path is not valid"):
        run(client.query_path_infos([A, B]))
    assert client.usable
    assert run(client.query_valid_paths([B])) == {B}


def test_the_closure_follows_references_a_level_at_a_time() -> None:
    # A -> B -> C; C refers to itself, as many outputs do.
    replies = info_reply((A, B)) + info_reply((C,)) + info_reply((C,))
    client, _ = client_after_handshake(replies)
    assert run(client.query_closure([A])) == {A, B, C}


@pytest.mark.parametrize(
    "message",
    [
        "you are not privileged to build input-addressed derivations",
        "cannot add path '/nix/store/x' because it lacks a signature by a trusted key",
        "cannot add path '/nix/store/x' because it lacks a valid signature",  # Nix 2.8
    ],
)
def test_an_untrusted_user_is_told_so_with_the_fix(message: str) -> None:
    client, _ = client_after_handshake(error_frame(message))
    with pytest.raises(DaemonError) as caught:
        run(client.query_valid_paths([A]))
    assert "builder 'ng' does not trust the ssh user" in caught.value.message
    assert message in caught.value.message
    assert caught.value.hint is not None
    assert "trusted-users" in caught.value.hint
    assert caught.value.peer == "ng"


def test_other_daemon_errors_pass_unchanged() -> None:
    client, _ = client_after_handshake(error_frame("disk full"))
    with pytest.raises(DaemonError, match=r"disk full$") as caught:
        run(client.query_valid_paths([A]))
    assert caught.value.hint is None


def test_copy_paths_into_a_daemon_goes_by_add_multiple_to_store() -> None:
    """The destination decides how paths travel: one AddMultipleToStore for the lot."""

    class Source:
        exporter = None  # a builder's session: its NARs come by NarFromPath

        async def dump_store_path(
            self, path: str, sink: Any, *, limit: int | None = None, said: Any = None
        ) -> int:
            assert limit == 8  # each held to its narSize
            await sink(path.encode()[-8:])
            return 8

    infos = [PathInfo(A, None, (), 8, HASH), PathInfo(B, None, (A,), 8, HASH)]
    # QueryValidPaths (neither there), then the upload's frames ending in LAST.
    client, writer = client_after_handshake(LAST + encode_strs([]) + LAST)
    start = len(writer.data)
    moved = run(copy_paths(Source(), client, infos))  # type: ignore[arg-type]
    assert moved == 16
    sent = bytes(writer.data[start:])
    add = encode_int(Op.ADD_MULTIPLE_TO_STORE)
    assert add in sent
    after = sent[sent.index(add) :]
    assert A.encode()[-8:] in after
    assert after.index(A.encode()[-8:]) < after.index(B.encode()[-8:])


def test_a_nar_size_of_0_is_unknown_and_holds_the_nar_to_no_size() -> None:
    # Nix's database says 0 for a path registered without a size: the NAR is whatever it is
    # (the importer counts it), not refused at its magic.
    limits: list[int | None] = []

    class Source:
        exporter = None

        async def dump_store_path(
            self, path: str, sink: Any, *, limit: int | None = None, said: Any = None
        ) -> int:
            limits.append(limit)
            await sink(path.encode()[-8:])
            return 8

    class Destination:
        async def add_paths(self, items: Any, *, exporter: Any = None) -> None:
            async def sink(chunk: bytes) -> None:
                del chunk

            for _, nar in items:
                await nar(sink)

    infos = [PathInfo(A, None, (), 0, HASH), PathInfo(B, None, (A,), 8, HASH)]
    run(copy_paths(Source(), Destination(), infos))  # type: ignore[arg-type]
    assert limits == [None, 8]


def test_the_daemon_program_is_what_nix_s_ssh_ng_store_runs() -> None:
    assert daemon_program({}) == ["nix-daemon", "--stdio"]
    params = {"remote-program": "/run/nix-daemon", "remote-store": "/tmp/s"}
    assert daemon_program(params) == ["/run/nix-daemon", "--stdio", "--store", "/tmp/s"]


class _Proc:
    """Just enough of a process for ``open_serve``: scripted stdout, stdin kept."""

    def __init__(self, stdout: bytes) -> None:
        self.stdout = asyncio.StreamReader()
        self.stdout.feed_data(stdout)
        self.stdout.feed_eof()
        self.stderr = asyncio.StreamReader()
        self.stderr.feed_eof()
        self.stdin = Writer()
        self.returncode = None


@pytest.mark.parametrize(
    ("stdout", "restricted", "pid"),
    [
        (SERVER_HELLO + encode_int(0x122), True, None),  # forced to `nix-daemon --stdio`
        (b"offload-serve-pid 42 4 - -\n" + SERVER_HELLO, False, 42),  # our wrapper ran
    ],
)
def test_a_daemon_session_tells_a_forced_key_by_its_first_bytes(
    stdout: bytes, restricted: bool, pid: int | None
) -> None:
    async def go() -> None:
        proc = _Proc(stdout)
        opening = await open_serve(proc, 5.0, DAEMON)  # type: ignore[arg-type]
        assert opening.failure is None
        assert (opening.restricted, opening.pid) == (restricted, pid)
        assert bytes(proc.stdin.data) == CLIENT_HELLO
        assert opening.dialect is DAEMON
        # What follows is the daemon's answer, whole.
        assert await opening.reader.readexactly(8) == SERVER_HELLO

    run(go())


def test_a_serve_reply_on_an_ssh_ng_session_is_a_failure_naming_the_daemon() -> None:
    async def go() -> None:
        opening = await open_serve(_Proc(SERVE.reply + b"\n"), 5.0, DAEMON)  # type: ignore[arg-type]
        assert opening.failure is not None
        assert "daemon program's reply" in opening.failure

    run(go())


def test_a_daemon_session_that_ends_mid_reply_is_said_closed_as_a_serve_one_is() -> None:
    # Was "ng: stream ended while reading a stderr frame tag (0 of 8 bytes) (during ...)": the
    # wire's words, said again under the machine's name ("ng: ng: ...") in the summary.
    from offload.errors import ProtocolError

    client, _ = client_after_handshake(b"")
    with pytest.raises(ProtocolError) as said:
        run(client.query_path_infos([A]))
    assert said.value.message == "ng closed the connection during QueryPathInfo of 1 paths"
    assert not client.usable
