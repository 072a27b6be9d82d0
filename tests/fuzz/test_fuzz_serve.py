"""The serve protocol's replies, and the remote's stderr, as a hostile or broken builder sends them.

Contract (``protocol``): each ``ServeClient`` request returns its result or raises a one-line
``ProtocolError`` (``RemoteError`` when the remote said why on stderr); the connection is then
unusable. No length or count read from the remote is trusted beyond the protocol's bounds
(64 MiB a string; a NAR's file contents stream in chunks), so memory follows what was sent,
never what was claimed. ``pump_lines`` hands on lines of at most 64 KiB; ``ErrorTail`` makes
one line of any stderr.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from offload.errors import ProtocolError
from offload.protocol.client import ServeClient
from offload.protocol.records import (
    SERVE_MAGIC_2,
    BuildResult,
    PathInfo,
    read_build_result,
    read_path_info,
)
from offload.protocol.stderr import ErrorTail, pump_lines, strip_ansi
from offload.protocol.wire import encode_int, encode_str, read_strs
from offload.store.drv import Derivation, DerivationOutput
from offload.store.nar import copy_nar
from tests.fuzz.support import (
    FUZZ,
    LIMIT,
    Endless,
    Stream,
    bounded_memory,
    drive,
    one_line,
    outcome,
)

HELLO = encode_int(SERVE_MAGIC_2) + encode_int(0x207)
DRV_PATH = "/nix/store/" + "a" * 32 + "-x.drv"
OUT = "/nix/store/" + "b" * 32 + "-x"
DRV = Derivation.create(
    outputs={"out": DerivationOutput(OUT, "", "")},
    input_drvs={},
    input_srcs=[],
    platform="x86_64-linux",
    builder="/bin/sh",
    args=[],
    env={"out": OUT},
)
NAR = b"".join(encode_str(t) for t in (b"nix-archive-1", b"(", b"type", b"regular", b"contents"))
# Plausible starts of each reply, so fuzzing reaches past the first field.
PREFIXES = [
    b"",
    encode_int(0),
    encode_int(1) + encode_str(OUT),
    encode_str(OUT) + encode_str("") + encode_int(0) + encode_int(0) + encode_int(8),
    encode_int(0) + encode_str("") + encode_int(1) + encode_int(0) + encode_int(0) + encode_int(0),
    encode_int(0) + encode_str("") + encode_int(0) * 4 + encode_int(1) + encode_str("x!out"),
    encode_str(json.dumps({"outPath": OUT})),
    NAR,
    encode_int(2**63),
    encode_int(LIMIT + 1),
]
replies = st.tuples(st.sampled_from(PREFIXES), st.binary(max_size=256)).map(b"".join)


class NullWriter:
    def write(self, data: bytes) -> None:
        pass

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        pass


async def _nar_producer(sink: object) -> None:
    await sink(b"\0" * 8)  # type: ignore[operator]


REQUESTS = {
    "valid": lambda c: c.query_valid_paths([OUT]),
    "infos": lambda c: c.query_path_infos([OUT]),
    "closure": lambda c: c.query_closure([OUT]),
    "dump": lambda c: c.dump_store_path(OUT, _discard),
    "import": lambda c: c.import_paths(_nar_producer),
    "add": lambda c: c.add_to_store_nar(PathInfo(OUT, None, (), 8, "sha256:x"), _nar_producer),
    "build": lambda c: c.build_derivation(DRV_PATH, DRV),
}


async def _discard(_: bytes) -> None:
    pass


async def _session(stream: Stream, request: str) -> object:
    client = ServeClient(stream, NullWriter(), name="fuzz")
    await client.handshake(sent=True)
    result = await REQUESTS[request](client)
    await client.close()
    return result


@FUZZ
@given(st.booleans(), st.sampled_from(sorted(REQUESTS)), replies)
def test_serve_replies(hello: bool, request: str, reply: bytes) -> None:
    stream = Stream((HELLO if hello else b"") + reply)
    result = outcome(lambda: drive(_session(stream, request)), ProtocolError)
    if request == "build" and not isinstance(result, ProtocolError):
        assert isinstance(result, BuildResult)


@FUZZ
@given(st.integers(0, 8), replies)
def test_build_result_and_path_info(minor: int, reply: bytes) -> None:
    outcome(lambda: drive(read_build_result(Stream(reply), DRV_PATH, minor)), ProtocolError)
    outcome(lambda: drive(read_path_info(Stream(reply), OUT, minor)), ProtocolError)


@FUZZ
@given(st.integers(0, 2**64 - 1), st.binary(max_size=512))
def test_hostile_counts_and_lengths_cost_only_what_arrives(count: int, body: bytes) -> None:
    # A list that claims `count` entries (of any claimed length) and then ends: the reader fails
    # at a bound or at the end, having held about what arrived, never what was claimed.
    data = encode_int(count) + body
    with bounded_memory(len(data)):
        result = outcome(lambda: drive(read_strs(Stream(data), "the list")), ProtocolError)
    if isinstance(result, list):
        assert len(result) == count


def test_a_file_of_a_hostile_length_streams_in_chunks() -> None:
    # 2^62 bytes of "contents": the NAR reader forwards chunks and never asks for more than one.
    pipe = Endless(NAR + encode_int(2**62), budget=8 << 20)
    chunks: list[int] = []

    async def sink(chunk: bytes) -> None:
        chunks.append(len(chunk))

    with pytest.raises(AssertionError, match="endless"):
        drive(copy_nar(pipe, sink))
    assert max(chunks) <= 1 << 16
    assert pipe.taken >= 7 << 20


@FUZZ
@given(st.lists(st.binary(max_size=40) | st.sampled_from([b"\n", b"\r\n", b"error: ", b"\x1b["])))
def test_stderr_lines(pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    lines: list[bytes] = []
    drive(pump_lines(Stream(data), lines.append))  # type: ignore[arg-type]
    assert b"\n".join(lines) == data.removesuffix(b"\n") or not data
    tail = ErrorTail()
    for line in lines:
        tail.feed(strip_ansi(line.decode(errors="replace").rstrip("\r")))
    error = tail.as_error("fuzz")
    if error is not None:
        one_line(error, ProtocolError)


def test_an_endless_stderr_line_is_handed_on_in_bounded_pieces() -> None:
    pipe = Endless(b"error: ", b"x" * 4096, budget=1 << 20)
    longest = 0

    def on_line(line: bytes) -> None:
        nonlocal longest
        longest = max(longest, len(line))

    with pytest.raises(AssertionError, match="endless"):
        drive(pump_lines(pipe, on_line))  # type: ignore[arg-type]
    assert 0 < longest <= 64 << 10
