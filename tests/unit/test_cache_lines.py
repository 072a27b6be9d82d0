"""Nix's lines read as blocks: an HTTP error on a cache's nix-cache-info may quote the
response body, and then only the block's end tells a retry (Nix 2.34.1 on) from a cache left
out. The texts are Nix 2.34.1's, as it prints them to a pipe (filetransfer.cc's
``FileTransferError`` and retry ``warn``, error.cc's ``showErrorInfo``)."""

from __future__ import annotations

from offload.build.caches import CacheFaults
from offload.cache_words import CacheLines
from offload.hook.remote import CachesHeard
from offload.ui.events import Event, MachineEvent

CACHE = "http://127.0.0.1:9"
BODY = [
    "<html>",
    "<head><title>502 Bad Gateway</title></head>",
    "<body>",
    "<center><h1>502 Bad Gateway</h1></center>",
    "<hr><center>nginx</center>",
    "</body>",
    "</html>",
]
# warn("%s; retrying in %d ms (attempt %d/%d)", exc.message(), ...): the message's lines as
# they are, "; retrying" after the body's last.
RETRY = [
    f"warning: unable to download '{CACHE}/nix-cache-info': HTTP error 502",
    "",
    "response body:",
    "",
    *BODY[:-1],
    f"{BODY[-1]}; retrying in 283 ms (attempt 1/5)",
]
# logWarning(e.info()): each line after the first indented as far as "warning: ", blank
# ones chomped.
LEFT_OUT = [
    f"warning: unable to download '{CACHE}/nix-cache-info': HTTP error 502",
    "",
    "         response body:",
    "",
    *(f"         {line}" for line in BODY),
]
WHY = "it cannot be reached (HTTP error 502)"
AFTER = "these 1 paths will be built:"


def _read(lines: list[str]) -> list[tuple[str, str]]:
    reader = CacheLines()
    told = [fault for line in lines for fault in reader.read(line)]
    end = reader.end()
    return [*told, *([end] if end is not None else [])]


def test_a_retry_that_quotes_a_response_body_is_no_cache_left_out() -> None:
    # Its first line is the one a cache left out says: only its last says it is a retry.
    assert _read([*RETRY, AFTER]) == []
    assert _read(RETRY) == []
    assert _read([*RETRY, *RETRY, *LEFT_OUT, AFTER]) == [(CACHE, WHY)]


def test_a_retry_from_an_offset_that_quotes_a_body_is_no_cache_left_out() -> None:
    last = f"{BODY[-1]}; retrying from offset 1024 in 517 ms (attempt 2/5)"
    assert _read([*RETRY[:-1], last, AFTER]) == []


def test_a_cache_left_out_that_quotes_a_response_body_is_told_once() -> None:
    assert _read([*LEFT_OUT, AFTER]) == [(CACHE, WHY)]
    assert _read(LEFT_OUT) == [(CACHE, WHY)]


def test_an_http_error_without_a_body_is_told_at_the_next_line_or_the_end() -> None:
    reader = CacheLines()
    assert reader.read(LEFT_OUT[0]) == []  # a body may follow
    assert reader.read(AFTER) == [(CACHE, WHY)]
    assert reader.end() is None
    assert reader.read(LEFT_OUT[0]) == []
    assert reader.end() == (CACHE, WHY)


def test_the_coloured_block_a_terminal_gets_is_read_the_same() -> None:
    yellow, normal = "\x1b[35;1m", "\x1b[0m"
    first = (
        f"{yellow}warning:{normal} unable to download '{yellow}{CACHE}/nix-cache-info{normal}': "
        f"HTTP error {yellow}502{normal}"
    )
    coloured = [
        first,
        *RETRY[1:4],
        f"{yellow}{BODY[0]}",
        *RETRY[5:-1],
        f"{BODY[-1]}{normal}; retrying in 283 ms (attempt 1/5)",
    ]
    assert _read([*coloured, AFTER]) == []


def test_offload_build_tells_no_cache_for_a_retry_with_a_body_and_one_for_it_left_out() -> None:
    told: list[Event] = []
    faults = CacheFaults(told.append)
    for line in [*RETRY, AFTER]:
        faults.heard("local", line)
    assert told == []
    for line in LEFT_OUT:
        faults.heard("local", line)
    assert [
        (e.machine, e.state, e.cache, e.message) for e in told if isinstance(e, MachineEvent)
    ] == [("local", "cache", CACHE, WHY)]


def test_offload_hook_says_no_cache_for_a_builder_s_retry_with_a_body() -> None:
    said: list[str] = []
    heard = CachesHeard(said.append, "fast")
    for line in [*RETRY, AFTER]:
        heard(line)
    heard.settle(None)
    assert said == []
    for line in LEFT_OUT:
        heard(line)
    heard.settle(None)
    assert len(said) == 1, said
    assert said[0].startswith(f"builder 'fast' left out binary cache '{CACHE}': {WHY};"), said
