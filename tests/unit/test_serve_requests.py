"""ServeClient against scripted server bytes, handshake and requests: the handshake, the query and
build requests byte for byte, reply parsing and replies that break the protocol (the remote's
own errors and closing: ``test_serve_errors``)."""

from __future__ import annotations

import pytest

from offload.errors import ProtocolError, RemoteError
from offload.protocol.serve import (
    CLIENT_VERSION,
    BuildOptions,
    BuildStatus,
    PathInfo,
    ServeClient,
    strip_ansi,
)
from offload.store.drv import Derivation, DerivationOutput
from tests.helpers.serve_wire import (
    HANDSHAKE_OUT,
    SERVER_HELLO,
    A,
    B,
    Writer,
    Z,
    connected,
    reader_with,
    run,
    s,
    strs,
    u64,
)


def test_handshake_bytes_and_version() -> None:
    async def go() -> None:
        w = Writer()
        client = ServeClient(reader_with(SERVER_HELLO), w)
        assert await client.handshake() == 0x207
        assert bytes(w.data) == HANDSHAKE_OUT
        assert (w.writes, w.drains) == (1, 1)
        assert CLIENT_VERSION == 0x207

    run(go())


def test_bad_magic_is_protocol_error() -> None:
    async def go() -> None:
        client = ServeClient(reader_with(u64(0x12345678) + u64(0x207)), Writer(), name="b1")
        with pytest.raises(ProtocolError, match=r"b1: bad server magic 0x12345678"):
            await client.handshake()

    run(go())


def test_a_greeting_of_text_is_said_to_be_the_builder_shell_s() -> None:
    # A ~/.bashrc that prints on the builder: its first bytes come where the magic should.
    async def go() -> None:
        client = ServeClient(reader_with(b"Welcome to b1\n"), Writer(), name="b1")
        with pytest.raises(ProtocolError) as raised:
            await client.handshake()
        assert raised.value.message == (
            "b1: the builder's shell printed 'Welcome '... where nix-store --serve answers "
            "(during the handshake)"
        )
        assert (raised.value.hint or "").startswith("make the builder user's shell start-up")

    run(go())


def test_wrong_major_version_is_protocol_error() -> None:
    async def go() -> None:
        client = ServeClient(reader_with(u64(0x5452EECB) + u64(0x107)), Writer())
        with pytest.raises(ProtocolError, match="unsupported serve protocol version 0x107"):
            await client.handshake()

    run(go())


def test_request_before_handshake_fails() -> None:
    async def go() -> None:
        client = ServeClient(reader_with(b""), Writer())
        drv = _drv()
        with pytest.raises(ProtocolError, match="before the handshake"):
            await client.build_derivation("/nix/store/x.drv", drv)

    run(go())


def test_query_before_handshake_fails_without_writing() -> None:
    async def go() -> None:
        w = Writer()
        client = ServeClient(reader_with(strs()), w)
        with pytest.raises(ProtocolError, match="QueryValidPaths before the handshake"):
            await client.query_valid_paths([A])
        assert w.data == b""

    run(go())


def test_write_to_dead_remote_is_remote_error() -> None:
    async def go() -> None:
        w = Writer(dead=True)
        stderr = reader_with(b"error: building paths is not allowed\n")
        client = ServeClient(reader_with(SERVER_HELLO), w, stderr=stderr, name="b1")
        client.server_version = 0x207
        with pytest.raises(RemoteError, match="b1: building paths is not allowed") as info:
            await client.build_derivation(DRV_PATH, _drv())
        assert info.value.hint is not None
        assert "--write" in info.value.hint
        assert isinstance(info.value.__cause__, BrokenPipeError)

    run(go())


def test_query_valid_paths_request_and_reply() -> None:
    async def go() -> None:
        client, w = await connected(strs(A))
        valid = await client.query_valid_paths([B, A, B], lock=True)
        assert valid == {A}
        # opcode 1, lock=1, substitute=0, the set sorted by base name with duplicates removed.
        expected = u64(1) + u64(1) + u64(0) + u64(2) + s(A) + s(B)
        assert bytes(w.data) == expected
        assert (w.writes, w.drains) == (1, 1)

    run(go())


def test_query_valid_paths_literal_bytes() -> None:
    async def go() -> None:
        client, w = await connected(u64(0))
        assert await client.query_valid_paths(["/x"], substitute=True) == set()
        assert bytes(w.data).hex() == (
            "0100000000000000"  # QueryValidPaths
            "0000000000000000"  # lock
            "0100000000000000"  # substitute
            "0100000000000000"  # one path
            "0200000000000000"  # of length 2
            "2f78000000000000"  # "/x" and six bytes of zero padding
        )

    run(go())


B_HASH = "sha256:" + "1" * 52


def test_query_path_infos_parses_until_empty_string() -> None:
    nar_hash = "sha256:0gjxwr2i5rcs1wk9ghzm20ic8j8y3kxrcs49r8l51y5kn9r98l5g"
    reply = (
        s(A)
        + s("")  # no deriver
        + strs()
        + u64(128)  # downloadSize
        + u64(128)  # narSize
        + s(nar_hash)
        + s("text:sha256:1111")
        + strs()
        + s(B)
        + s("/nix/store/dddddddddddddddddddddddddddddddd-b.drv")
        + strs(A, B)
        + u64(4096)
        + u64(4096)
        + s(B_HASH)
        + s("")
        + strs("k:sig")
        + s("")
    )

    async def go() -> None:
        client, w = await connected(reply)
        infos = await client.query_path_infos([B, A, Z])
        assert bytes(w.data) == u64(2) + u64(3) + s(Z) + s(A) + s(B)
        assert infos[A] == PathInfo(A, None, (), 128, nar_hash, "text:sha256:1111", ())
        assert infos[B] == PathInfo(
            B,
            "/nix/store/dddddddddddddddddddddddddddddddd-b.drv",
            (A, B),
            4096,
            B_HASH,
            None,
            ("k:sig",),
        )
        assert set(infos) == {A, B}

    run(go())


def test_query_closure_request() -> None:
    async def go() -> None:
        client, w = await connected(strs(A, B))
        assert await client.query_closure([B], include_outputs=True) == {A, B}
        assert bytes(w.data) == u64(7) + u64(1) + strs(B)

    run(go())


def _drv(input_srcs: tuple[str, ...] = (A,)) -> Derivation:
    out = "/nix/store/cccccccccccccccccccccccccccccccc-c"
    return Derivation.create(
        outputs={"out": DerivationOutput(out, "", ""), "dev": DerivationOutput(B, "", "")},
        input_drvs={"/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-e.drv": ["out"]},
        input_srcs=input_srcs,
        platform="x86_64-linux",
        builder="/bin/sh",
        args=["-c", "echo hi > $out"],
        env={"out": out, "name": "c", "builder": "/bin/sh"},
    )


DRV_PATH = "/nix/store/ffffffffffffffffffffffffffffffff-c.drv"


def _expected_basic_drv(srcs: tuple[str, ...]) -> bytes:
    out = "/nix/store/cccccccccccccccccccccccccccccccc-c"
    return (
        u64(2)
        + s("dev")
        + s(B)
        + s("")
        + s("")
        + s("out")
        + s(out)
        + s("")
        + s("")
        + strs(*srcs)
        + s("x86_64-linux")
        + s("/bin/sh")
        + strs("-c", "echo hi > $out")
        + u64(3)
        + s("builder")
        + s("/bin/sh")
        + s("name")
        + s("c")
        + s("out")
        + s(out)
    )


def _result(status: int, msg: str, outputs: bytes = u64(0)) -> bytes:
    return u64(status) + s(msg) + u64(1) + u64(0) + u64(1700000000) + u64(1700000005) + outputs


def test_build_derivation_request_bytes() -> None:
    async def go() -> None:
        client, w = await connected(_result(3, "x"))
        await client.build_derivation(
            DRV_PATH, _drv(), input_srcs=[B, Z], options=BuildOptions(build_timeout=10)
        )
        options = u64(0) + u64(10) + u64(0) + u64(0) + u64(1) + u64(0)
        expected = u64(8) + s(DRV_PATH) + _expected_basic_drv((Z, B)) + options
        assert bytes(w.data) == expected
        assert (w.writes, w.drains) == (1, 1)

    run(go())


def test_build_options_follow_server_minor() -> None:
    # A 0x202 server reads maxSilentTime, buildTimeout and maxLogSize only (section 2.4).
    async def go() -> None:
        client, w = await connected(
            _result(0, "")[:16] + u64(0), hello=SERVER_HELLO[:8] + u64(0x202)
        )
        await client.build_derivation(
            DRV_PATH,
            _drv(),
            options=BuildOptions(max_silent_time=7, build_timeout=9, max_log_size=5),
        )
        assert bytes(w.data).endswith(_expected_basic_drv((A,)) + u64(7) + u64(9) + u64(5))

    run(go())


def test_failed_build_result_strips_ansi_and_keeps_stream_in_step() -> None:
    msg = "\x1b[0mbuilder for '\x1b[35;1m/nix/store/x-fail.drv\x1b[0m' failed with exit code 3"

    async def go() -> None:
        client, _ = await connected(_result(3, msg) + strs(A))
        result = await client.build_derivation(DRV_PATH, _drv())
        assert result.status is BuildStatus.PERMANENT_FAILURE
        assert not result.success
        assert result.error_msg == "builder for '/nix/store/x-fail.drv' failed with exit code 3"
        assert (result.times_built, result.is_non_deterministic) == (1, False)
        assert (result.start_time, result.stop_time) == (1700000000, 1700000005)
        assert result.built_outputs == {}
        # The empty builtOutputs map was consumed: the next reply parses.
        assert await client.query_valid_paths([A]) == {A}

    run(go())


def test_a_nix_2_3_server_sends_no_built_outputs_and_the_stream_stays_in_step() -> None:
    # Serve 0x205 is Nix 2.3 (Debian 11's 2.3.7): builtOutputs came with 2.4. Read anyway, the
    # client waited for them while the server waited for the next request, for ever.
    async def go() -> None:
        hello = SERVER_HELLO[:8] + u64(0x205)
        client, _ = await connected(_result(0, "", outputs=b"") + strs(B), hello=hello)
        result = await client.build_derivation(DRV_PATH, _drv())
        assert result.success
        assert result.built_outputs == {}
        assert await client.query_valid_paths([B]) == {B}

    run(go())


def test_built_outputs_read_from_a_2_4_server_on() -> None:
    # Nix 2.8 sends builtOutputs whatever the client's version (nix-protocols.md 2.6 bug);
    # every server from 0x206 (Nix 2.4) sends them to our 0x207.
    out = "cccccccccccccccccccccccccccccccc-c"
    realisation = (
        '{"dependentRealisations":{},"id":"sha256:316a!out","outPath":"' + out + '",'
        '"signatures":[]}'
    )
    outputs = u64(1) + s("sha256:316a!out") + s(realisation)

    async def go() -> None:
        hello = SERVER_HELLO[:8] + u64(0x206)
        client, _ = await connected(_result(0, "", outputs) + strs(B), hello=hello)
        result = await client.build_derivation(DRV_PATH, _drv())
        assert result.status is BuildStatus.BUILT
        assert result.success
        assert result.built_outputs == {"out": f"/nix/store/{out}"}
        assert await client.query_valid_paths([B]) == {B}

    run(go())


@pytest.mark.parametrize(
    ("status", "success"),
    [(0, True), (1, True), (2, True), (13, True), (3, False), (8, False), (14, False)],
)
def test_success_statuses(status: int, success: bool) -> None:
    async def go() -> None:
        client, _ = await connected(_result(status, ""))
        assert (await client.build_derivation(DRV_PATH, _drv())).success is success

    run(go())


def test_unknown_build_status_is_protocol_error() -> None:
    async def go() -> None:
        client, _ = await connected(_result(99, ""))
        with pytest.raises(ProtocolError, match="unknown build status 99"):
            await client.build_derivation(DRV_PATH, _drv())

    run(go())


def test_truncated_reply_is_protocol_error_naming_the_operation() -> None:
    async def go() -> None:
        client, _ = await connected(u64(2) + s(A) + b"\x05\x00")
        with pytest.raises(ProtocolError, match="b1 closed the connection during QueryValidPaths"):
            await client.query_valid_paths([A, B])
        with pytest.raises(ProtocolError, match="connection unusable"):
            await client.query_valid_paths([A])

    run(go())


def test_truncated_build_result_is_protocol_error() -> None:
    async def go() -> None:
        client, _ = await connected(_result(0, "")[:-8])
        with pytest.raises(ProtocolError, match="during BuildDerivation") as info:
            await client.build_derivation(DRV_PATH, _drv())
        assert not isinstance(info.value, RemoteError)

    run(go())


def test_non_zero_padding_is_protocol_error() -> None:
    async def go() -> None:
        client, _ = await connected(u64(1) + u64(2) + b"/x\x00\x00\x00\x00\x00\x01", eof=False)
        with pytest.raises(ProtocolError, match="b1: non-zero padding"):
            await client.query_valid_paths([A])

    run(go())


def test_strip_ansi() -> None:
    assert strip_ansi("\x1b[31;1merror:\x1b[0m x \x1b]8;;http://a\x07link\x1b]8;;\x07") == (
        "error: x link"
    )
    assert strip_ansi("plain [text]") == "plain [text]"
    # One rule with the log renderers': a title never ended ends with its line.
    assert strip_ansi("error: \x1b]0;title\nnext \x9b1mline") == "error: \nnext line"


def test_query_path_infos_refuses_an_answer_for_a_path_not_asked() -> None:
    # A builder that answers with another path (/etc/passwd) would have the hook, as root,
    # replace that file with its NAR (offload.hook.home uses each answer's own path).
    reply = s("/etc/passwd") + s("") + strs() + u64(8) + u64(8) + s("sha256:x") + s("")
    reply += strs() + s("")

    async def go() -> None:
        client, _ = await connected(reply)
        with pytest.raises(ProtocolError, match=r"'/etc/passwd'.*not asked"):
            await client.query_path_infos([A])

    run(go())
