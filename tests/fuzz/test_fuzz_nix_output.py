"""What Nix prints and offload reads: nix-instantiate / nix eval output, error text, log names,
the worker protocol's replies (a daemon's, for ssh-ng:// builders), and a builder's words for
a binary cache it left out.

Contracts: ``first_error_line`` makes one line of any stderr; ``_parse_instantiated`` and
``_parse_flake`` return roots or raise a one-line ``OffloadError`` (``StoreError`` for a word that
is not a store path); ``LogFile.parse`` returns a log or ``None``; the worker reply reader returns
a ``BuildResult`` or raises a one-line ``ProtocolError`` in memory bounded by what arrived;
``cache_fault`` returns nothing or a cache and why, each one line a terminal shows as it is.
"""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from offload.cache_words import cache_fault
from offload.errors import ProtocolError
from offload.logs import LogFile
from offload.nix import Source, _parse_flake, _parse_instantiated, first_error_line
from offload.protocol.records import BuildResult
from offload.protocol.wire import encode_int, encode_str
from offload.protocol.worker.frames import read_frames
from offload.protocol.worker.records import Frame, ResultType, read_build_result
from offload.ui.term import sanitize
from tests.fuzz.support import FUZZ, Stream, bounded_memory, drive, outcome

DRV = "/nix/store/" + "a" * 32 + "-hello-2.12.drv"
PIECES = [DRV, "!out", "!", "\n", " ", "\t", "\r", "error:", "\x1b[31;1m", "\x1b]8;;x\x07",
          "\udcff", "/nix/store/", "-", ".drv", "warning: ", "\x00", "\u2028", "\x85"]  # fmt: skip
outputs = st.lists(st.sampled_from(PIECES) | st.text(max_size=8), max_size=20).map("".join)


@FUZZ
@given(outputs)
def test_nix_stderr_first_line(stderr: str) -> None:
    line = first_error_line(stderr)
    assert line
    assert "\n" not in line
    assert "\r" not in line


@FUZZ
@given(outputs)
def test_instantiate_output(stdout: str) -> None:
    result = outcome(lambda: _parse_instantiated(stdout))
    if isinstance(result, list):
        assert all(drv.endswith(".drv") or drv for drv, _ in result)


flake_fields = st.dictionaries(
    st.sampled_from(["drvPath", "outputName"]), st.sampled_from([DRV, "out", 1, None])
)
flake_json = st.one_of(flake_fields.map(json.dumps), outputs)


@FUZZ
@given(flake_json)
def test_flake_eval_output(stdout: str) -> None:
    outcome(lambda: _parse_flake(stdout, Source("flake", ".#x")))


NAME_PIECES = ["@", ".drv", ".log", "-", "1", "%40", "%zz", "hello"]
names = st.lists(st.sampled_from(NAME_PIECES) | st.text(max_size=4), max_size=10)


@FUZZ
@given(names.map("".join))
def test_log_file_names(name: str) -> None:
    name = name.replace("/", "_").replace("\0", "_") or "x"
    log = LogFile.parse(Path("/logs") / name)
    if log is not None:
        assert log.serial >= 0


LAST = encode_int(Frame.LAST)
PREFIXES = [
    b"",
    LAST,
    encode_int(Frame.NEXT) + encode_str("hello"),
    encode_int(Frame.RESULT) + encode_int(1) + encode_int(ResultType.BUILD_LOG_LINE),
]


async def _reply(data: bytes) -> BuildResult:
    stream = Stream(data)
    await read_frames(stream, 37, lambda _: None, "fuzz")
    return await read_build_result(stream, DRV, 37)


@FUZZ
@given(st.sampled_from(PREFIXES), st.binary(max_size=512))
def test_worker_replies(prefix: bytes, tail: bytes) -> None:
    data = prefix + tail
    with bounded_memory(len(data)):
        outcome(lambda: drive(_reply(data)), ProtocolError)


def test_a_bare_error_line_above_a_trace_is_not_the_message() -> None:
    # Nix >= 2.13 prints "error:" alone, then the trace, then the message on its own "error:".
    stderr = (
        "error:\n"
        "       … while calling the 'derivationStrict' builtin\n"
        "\n"
        "       error: undefined variable 'q'\n"
    )
    assert first_error_line(stderr) == "undefined variable 'q'"
    assert first_error_line("error:\n") == "error:"


CACHE_PIECES = ["warning: ", "error: ", "unable to download '", "/nix-cache-info': ", "(7)",
                "cannot connect to '", "'nix-store --serve' protocol mismatch from '", ", got '",
                "AWS error fetching 'nix-cache-info': ", " (request id: ", ")", "'", "ssh://",
                "s3://b", "http://h", "; retrying in 5 ms", "\x1b]0;t\x07", "\r", "\t", "\x00",
                "disabling binary cache '", "' for 60 seconds", "binary cache '",
                "' does not appear to be a binary cache",
                "' is for Nix stores with prefix '"]  # fmt: skip
cache_lines = st.lists(st.sampled_from(CACHE_PIECES) | st.text(max_size=6), max_size=16).map(
    "".join
)


@FUZZ
@given(cache_lines, st.lists(st.sampled_from(["ssh://u@h", "s3://b", "ssh://h?x=1", ""])))
def test_cache_fault(line: str, substituters: list[str]) -> None:
    # A builder's line (builders-use-substitutes): nothing or one cache and why, each shown on
    # a terminal and in --json as one line without escape or control characters.
    fault = cache_fault(line, substituters)
    if fault is not None:
        for text in fault:
            assert text == sanitize(text)
            assert "\n" not in text
