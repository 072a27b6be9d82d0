"""The worker protocol's framing and records over in-memory streams (docs/worker-protocol.md).

A scripted daemon (bytes fed to a StreamReader) stands in for newer peers than the Nix 2.8
installed here (1.35 trust, 1.37 CPU times, 1.38 features); the integration tests speak to the
real 2.8 daemon. The fuzz test feeds the reply reader arbitrary bytes: it must end in a result
or one one-line ``ProtocolError``, with memory bounded by what it was fed.
"""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offload.errors import DaemonError, ProtocolError
from offload.protocol.records import BuildOptions, BuildResult, BuildStatus
from offload.protocol.wire import encode_int, encode_str, encode_strs
from offload.protocol.worker import BuildEvents, DaemonOptions, WorkerClient
from offload.protocol.worker.frames import Event, Result, read_frames
from offload.protocol.worker.records import (
    WORKER_MAGIC_1,
    WORKER_MAGIC_2,
    ActivityType,
    Frame,
    Op,
    ResultType,
    read_build_result,
)
from tests.helpers.worker_wire import Writer, error_frame, stream

T = TypeVar("T")
LAST = encode_int(Frame.LAST)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def start(act: int, kind: int, fields: bytes, text: str = "") -> bytes:
    out = encode_int(Frame.START_ACTIVITY) + encode_int(act) + encode_int(3) + encode_int(kind)
    return out + encode_str(text) + fields + encode_int(0)


def result(act: int, kind: int, text: str | bytes) -> bytes:
    return encode_int(Frame.RESULT) + encode_int(act) + encode_int(kind) + str_fields(text)


def str_fields(*texts: str | bytes) -> bytes:
    return encode_int(len(texts)) + b"".join(encode_int(1) + encode_str(t) for t in texts)


def frames(data: bytes, minor: int = 34) -> list[Event]:
    seen: list[Event] = []
    run(read_frames(stream(data), minor, seen.append, "peer"))
    return seen


# -- handshake ------------------------------------------------------------------------------


def test_handshake_with_a_1_38_daemon_reads_features_and_trust() -> None:
    reply = encode_int(WORKER_MAGIC_2) + encode_int(0x126)
    reply += encode_strs(["some-feature"]) + encode_str("2.24.0") + encode_int(1) + LAST
    reply += LAST  # SetOptions
    writer = Writer()
    client = WorkerClient(stream(reply), writer)
    assert run(client.handshake()) == 0x126
    assert client.features == {"some-feature"}
    assert client.daemon_nix_version == "2.24.0"
    assert client.trusted is True
    sent = bytes(writer.data)
    head = encode_int(WORKER_MAGIC_1) + encode_int(0x126) + encode_strs([])
    assert sent.startswith(head + encode_int(0) + encode_int(0))
    assert sent[len(head) + 16 :] == DaemonOptions().encode()


def test_handshake_with_a_2_8_daemon_negotiates_1_34() -> None:
    reply = encode_int(WORKER_MAGIC_2) + encode_int(0x122) + encode_str("2.8.0") + LAST + LAST
    client = WorkerClient(stream(reply), Writer())
    run(client.handshake())
    assert (client.minor, client.trusted, client.features) == (34, None, frozenset())


def test_a_query_that_substitutes_turns_the_daemon_s_substitutes_on_first() -> None:
    # builders-use-substitutes on an ssh-ng:// builder: SetOptions said useSubstitutes 0 and
    # QueryValidPaths substitute 1, which a daemon answers from its store alone (misc.cc).
    reply = encode_int(WORKER_MAGIC_2) + encode_int(0x126) + encode_strs([]) + encode_str("2.35")
    reply += encode_int(1) + LAST + LAST  # handshake, SetOptions
    reply += LAST  # the SetOptions that turns them on
    reply += LAST + encode_strs([])  # QueryValidPaths
    reply += LAST + encode_strs([])  # again: no SetOptions this time
    writer = Writer()
    client = WorkerClient(stream(reply), writer)
    run(client.handshake())
    handshake = len(writer.data)
    path = "/nix/store/" + "a" * 32 + "-x"
    run(client.query_valid_paths([path], substitute=True))
    query = encode_int(Op.QUERY_VALID_PATHS) + encode_strs([path]) + encode_int(1)
    on = DaemonOptions(use_substitutes=True).encode()
    assert bytes(writer.data[handshake:]) == on + query
    run(client.query_valid_paths([path], substitute=True))
    assert bytes(writer.data[handshake:]) == on + query + query


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (encode_int(0x12345), "bad daemon magic"),
        (encode_int(WORKER_MAGIC_2) + encode_int(0x115), "version 1.21"),
        (encode_int(WORKER_MAGIC_2) + encode_int(0x222), "version 2.34"),
        (encode_int(WORKER_MAGIC_2) + encode_int(0x126) + encode_int(1 << 40), "features"),
        (
            encode_int(WORKER_MAGIC_2) + encode_int(0x123) + encode_str("2.15") + encode_int(7),
            "trust",
        ),
        (encode_int(WORKER_MAGIC_2)[:5], "b1 closed the connection during "),
    ],
)
def test_bad_handshakes_are_protocol_errors(reply: bytes, message: str) -> None:
    client = WorkerClient(stream(reply), Writer(), name="b1")
    with pytest.raises(ProtocolError, match=message) as raised:
        run(client.handshake())
    assert raised.value.message.startswith(("b1: ", "b1 closed"))
    assert not client.usable


def test_a_startup_error_is_a_daemon_error() -> None:
    reply = encode_int(WORKER_MAGIC_2) + encode_int(0x122) + encode_str("2.8.0")
    reply += error_frame("\x1b[31;1merror:\x1b[0m cannot open\n  the store", ("while starting",))
    with pytest.raises(DaemonError) as raised:
        run(WorkerClient(stream(reply), Writer(), name="b1").handshake())
    assert raised.value.message == "b1: cannot open the store (while starting)"


# -- frames ---------------------------------------------------------------------------------


def test_frames_carry_log_lines_and_phases_of_build_activities() -> None:
    drv = "/nix/store/aaaa-x.drv"
    data = start(7, ActivityType.BUILD, str_fields(drv, "", "1", "1"), "building")
    data += result(7, ResultType.BUILD_LOG_LINE, "compiling")
    data += result(7, ResultType.SET_PHASE, "installPhase")
    data += encode_int(Frame.NEXT) + encode_str("a message\n")
    data += encode_int(Frame.STOP_ACTIVITY) + encode_int(7)
    data += result(7, ResultType.SET_PHASE, "after the stop") + LAST
    lines: list[str] = []
    phases: list[tuple[str, str]] = []
    events = BuildEvents(lines.append, lambda d, p: phases.append((d, p)))
    run(read_frames(stream(data), 34, events, "peer"))
    assert lines == ["compiling", "a message"]
    assert phases == [(drv, "installPhase"), ("", "after the stop")]


def test_a_build_printing_bytes_that_are_not_utf8_is_logged_not_a_broken_daemon() -> None:
    # A build's tools print Latin-1 (a compiler's message, a file name): the builder was said
    # down ("a string field is not valid UTF-8") and the build lost; ssh:// showed the line.
    data = result(7, ResultType.BUILD_LOG_LINE, b"caf\xe9") + encode_int(Frame.NEXT)
    data += encode_str(b"na\xefve\n") + LAST
    lines: list[str] = []
    run(read_frames(stream(data), 34, BuildEvents(lines.append, lambda d, p: None), "peer"))
    assert lines == ["caf\ufffd", "na\ufffdve"]
    old_error = encode_int(Frame.ERROR) + encode_str(b"error: caf\xe9 failed") + encode_int(1)
    with pytest.raises(DaemonError, match="peer: caf\ufffd failed"):
        frames(old_error, minor=25)


def test_a_failing_consumer_does_not_desynchronise() -> None:
    def broken(event: Event) -> None:
        raise RuntimeError(event)

    data = result(1, ResultType.PROGRESS, "x") + LAST + b"rest"
    reader = stream(data)
    run(read_frames(reader, 34, broken, "peer"))
    assert reader.rest() == b"rest"


def test_an_old_daemon_error_is_a_message_and_status() -> None:
    data = encode_int(Frame.ERROR) + encode_str("error: path is not valid") + encode_int(1)
    with pytest.raises(DaemonError, match="peer: path is not valid") as raised:
        frames(data, minor=25)
    assert raised.value.hint is not None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (encode_int(Frame.NEXT) + encode_int(5) + b"abc", "stream ended"),
        (encode_int(Frame.NEXT) + encode_int(1 << 40), "claims 1099511627776 bytes"),
        (encode_int(0xDEADBEEF), "unknown stderr frame 0xdeadbeef"),
        (encode_int(Frame.READ) + encode_int(100), "data transfer"),
        (encode_int(Frame.WRITE) + encode_str("x"), "data transfer"),
        (
            encode_int(Frame.RESULT) + encode_int(1) + encode_int(101) + encode_int(1 << 50),
            "fields",
        ),
        (
            encode_int(Frame.RESULT)
            + encode_int(1)
            + encode_int(101)
            + encode_int(1)
            + encode_int(9),
            "field type 9",
        ),
        (error_frame("x")[:-8] + encode_int(1 << 40), "traces"),
        (encode_int(Frame.ERROR) + encode_str("Oops"), "unknown error type"),
        (encode_int(Frame.NEXT)[:3], "stream ended"),
    ],
)
def test_broken_frames_are_protocol_errors(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as raised:
        frames(data)
    assert not isinstance(raised.value, DaemonError)


# -- records --------------------------------------------------------------------------------


def build_result_bytes(minor: int) -> bytes:
    out = encode_int(BuildStatus.BUILT) + encode_str("")
    if minor >= 29:
        out += encode_int(1) + encode_int(0) + encode_int(30) + encode_int(50)
    if minor >= 37:
        out += encode_int(1) + encode_int(500) + encode_int(0)
    realisation = json.dumps({"id": "sha256:00!out", "outPath": "b" * 32 + "-x"})
    return out + encode_int(1) + encode_str("sha256:00!out") + encode_str(realisation)


@pytest.mark.parametrize("minor", [34, 37])
def test_build_results_by_version(minor: int) -> None:
    reader = stream(build_result_bytes(minor))
    got = run(read_build_result(reader, "/nix/store/aaaa-x.drv", minor))
    assert got.built_outputs == {"out": "/nix/store/" + "b" * 32 + "-x"}
    assert (got.start_time, got.stop_time) == (30, 50)
    assert (got.cpu_user_us, got.cpu_system_us) == ((500, None) if minor == 37 else (None, None))
    assert reader.rest() == b""


def test_set_options_from_build_options() -> None:
    opts = DaemonOptions.from_build_options(BuildOptions(max_silent_time=9, build_timeout=60))
    encoded = opts.encode()
    assert encoded.startswith(encode_int(Op.SET_OPTIONS))
    assert encode_str("timeout") + encode_str("60") in encoded
    # Fields, then the overrides sorted by name as Nix's std::map writes them.
    assert encoded.index(b"enforce-determinism") < encoded.index(b"timeout")


# -- fuzzing --------------------------------------------------------------------------------

VALID_PREFIXES = [
    b"",
    LAST,
    result(1, ResultType.BUILD_LOG_LINE, "line") + LAST,
    encode_int(Frame.NEXT) + encode_str("hello"),
    error_frame("boom"),
]


async def read_reply(data: bytes) -> object:
    reader = stream(data)
    await read_frames(reader, 37, lambda _: None, "fuzz")
    return await read_build_result(reader, "/nix/store/aaaa-x.drv", 37)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(VALID_PREFIXES), st.binary(max_size=512))
def test_reply_reader_fuzz(prefix: bytes, tail: bytes) -> None:
    data = prefix + tail
    tracemalloc.start()
    try:
        outcome = run(read_reply(data))
    except ProtocolError as exc:
        outcome = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    if isinstance(outcome, ProtocolError):
        assert "\n" not in outcome.message
    else:
        assert isinstance(outcome, BuildResult)
    # Hostile length fields may claim terabytes; memory stays near what was fed. The bound
    # leaves room for what other threads of the test process allocate meanwhile (tracemalloc
    # counts them all: a peak of 1.9 MB once in CI, for 65 bytes that take 10 KB alone); a
    # reader that believed a claimed length would still pass it by orders of magnitude.
    assert peak < 16 * 1024 * 1024 + 64 * len(data)


def test_unrelated_result_types_are_ignored_by_build_events() -> None:
    lines: list[str] = []
    events = BuildEvents(lines.append)
    events(Result(1, ResultType.PROGRESS, (1, 2, 3)))
    events(Result(1, ResultType.BUILD_LOG_LINE, (5,)))
    assert lines == []
