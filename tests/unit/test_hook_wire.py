"""The build-hook protocol over in-memory streams."""

from __future__ import annotations

import asyncio
import os

import pytest

from offload.errors import ProtocolError
from offload.hook.home import registration_text
from offload.hook.wire import (
    NOT_NIX_HINT,
    Accepted,
    HookIO,
    Reply,
    read_accepted,
    read_request,
    read_settings,
    verbosity,
    write_reply,
)
from offload.protocol.serve import PathInfo
from offload.protocol.wire import encode_int, encode_str, encode_strs

DRV = "/nix/store/" + "a" * 32 + "-hello.drv"
OUT = "/nix/store/" + "b" * 32 + "-hello"


def reader(data: bytes) -> asyncio.StreamReader:
    stream = asyncio.StreamReader()
    stream.feed_data(data)
    stream.feed_eof()
    return stream


def settings(pairs: dict[str, str]) -> bytes:
    body = b"".join(encode_int(1) + encode_str(k) + encode_str(v) for k, v in pairs.items())
    return body + encode_int(0)


def try_message(drv: str = DRV, willing: int = 1) -> bytes:
    return (
        encode_str("try")
        + encode_int(willing)
        + encode_str("x86_64-linux")
        + encode_str(drv)
        + encode_strs(["big-parallel", "kvm"])
    )


def test_preamble_then_requests_then_eof() -> None:
    async def go() -> None:
        data = settings({"builders": "@/etc/nix/machines", "new-setting": "x"}) + try_message()
        stream = reader(data)
        assert await read_settings(stream) == {
            "builders": "@/etc/nix/machines",
            "new-setting": "x",
        }
        request = await read_request(stream)
        assert request is not None
        assert (request.am_willing, request.drv_path) == (True, DRV)
        assert request.features == {"big-parallel", "kvm"}
        assert await read_request(stream) is None

    asyncio.run(go())


def test_accepted_inputs_and_outputs() -> None:
    async def go() -> Accepted:
        return await read_accepted(reader(encode_strs([OUT]) + encode_strs(["out", "dev"])))

    accepted = asyncio.run(go())
    assert accepted.inputs == (OUT,)
    assert accepted.wanted == ("out", "dev")


@pytest.mark.parametrize(
    "bad",
    [
        try_message(drv="/etc/passwd"),
        try_message(drv=OUT),  # a store path, not a derivation
        encode_str("build") + encode_int(1),
        encode_str("try") + encode_int(1),  # truncated
        encode_int(7),
    ],
)
def test_hostile_requests_are_protocol_errors(bad: bytes) -> None:
    # The first two are whole tries (UnusableRequest, a ProtocolError: declined by serve).
    async def go() -> None:
        await read_request(reader(bad))

    with pytest.raises(ProtocolError):
        asyncio.run(go())


def test_truncated_preamble_is_an_error() -> None:
    async def go() -> None:
        await read_settings(reader(settings({"a": "b"})[:-8]))

    with pytest.raises(ProtocolError):
        asyncio.run(go())


def test_a_fault_after_nix_s_first_setting_is_said_as_it_is() -> None:
    # A whole setting read is Nix's preamble: a fault after it was said as "stdin is not
    # Nix's build hook protocol: expected Nix's settings first", with the hint to set
    # build-hook, which was set, and the fault itself left unsaid.
    bad = settings({"builders": "@/etc/nix/machines"})[:-8] + encode_int(2)

    async def go() -> None:
        await read_settings(reader(bad))

    with pytest.raises(ProtocolError) as caught:
        asyncio.run(go())
    assert caught.value.message == "bad settings preamble marker 2"
    assert caught.value.hint != NOT_NIX_HINT


def test_settings_and_a_system_nix_keeps_as_bytes_are_read_as_they_came() -> None:
    # `--option netrc-file $'/tmp/x\xff'`: "a setting's value is not valid UTF-8", and the
    # whole nix-build failed before any reply; Nix's own hook keeps these strings as bytes.
    odd = encode_int(1) + encode_str("netrc-file") + encode_str(b"/tmp/x\xff") + encode_int(0)
    request = encode_str("try") + encode_int(1) + encode_str(b"x86\xff") + encode_str(DRV)
    request += encode_int(1) + encode_str(b"kvm\xfe")

    async def go() -> tuple[dict[str, str], object]:
        stream = reader(odd + request)
        return await read_settings(stream), await read_request(stream)

    read, tried = asyncio.run(go())
    assert read["netrc-file"].encode("utf-8", "surrogateescape") == b"/tmp/x\xff"
    assert tried is not None
    assert tried.system.encode("utf-8", "surrogateescape") == b"x86\xff"  # type: ignore[attr-defined]
    assert tried.features == {b"kvm\xfe".decode("utf-8", "surrogateescape")}  # type: ignore[attr-defined]


def test_verbosity_is_the_last_argument() -> None:
    assert verbosity(["offload-hook", "5"]) == 5
    assert verbosity(["offload-hook", "--extra", "4"]) == 4
    assert verbosity(["offload-hook"]) == 3


def test_accept_names_the_machine_on_the_next_line() -> None:
    read, write = os.pipe()
    io = HookIO.of_fds(err=write)
    write_reply(io, Reply.ACCEPT, "ssh://fast")
    write_reply(io, Reply.POSTPONE)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        assert pipe.read() == b"# accept\nssh://fast\n# postpone\n"


def test_registration_text_is_what_register_validity_reads() -> None:
    info = PathInfo(OUT, DRV, (OUT, DRV), 120, "sha256:" + "0" * 52)
    lines = registration_text([info]).splitlines()
    assert lines == [OUT, "sha256:" + "0" * 52, "120", DRV, "2", DRV, OUT]
