"""A session's first words (``links.base.first_words``, and ``_first_line`` around it): the
reply, or its first line that is not blank, never a wait for a newline a binary reply does not
have; what was read is kept for the failure when the read ends early."""

from __future__ import annotations

import asyncio

import pytest

from offload.transport.links.base import _first_line, first_words

REPLY = b"\xcb\xee\x52\x54\x00\x00\x00\x00"  # 8 bytes, as the serve program's magic is


def _stream(data: bytes, *, eof: bool) -> asyncio.StreamReader:
    stream = asyncio.StreamReader()
    stream.feed_data(data)
    if eof:
        stream.feed_eof()
    return stream


def _first(data: bytes) -> bytes:
    async def go() -> bytes:
        # No EOF: a read past what is there would wait.
        return await asyncio.wait_for(first_words(_stream(data, eof=False), REPLY, bytearray()), 2)

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("data", "first"),
    [
        (REPLY + b"\x05\x02\x00\x00", REPLY),
        (b"offload-serve-pid 123 load\n" + REPLY, b"offload-serve-pid 123 load\n"),
        # A start-up file's short line before the reply: it waited 27 s for a newline.
        (b"hi\n" + REPLY + b"\x05\x02\x00\x00", b"hi\n"),
        # Blank lines first are skipped (a review: cut at the newline, they failed the start),
        # long ones too (a second review).
        (b"\n\r\noffload-serve-pid 123\n", b"offload-serve-pid 123\n"),
        (b" " * 12 + b"\n\t\t\t\t\t\t\t\t\noffload-master-ready\n", b"offload-master-ready\n"),
        (b"\n" + REPLY, REPLY),
        (b"hello from bashrc\n" + REPLY, b"hello from bashrc\n"),
    ],
)
def test_the_first_words_are_the_reply_or_the_first_line_said(data: bytes, first: bytes) -> None:
    assert _first(data) == first


@pytest.mark.parametrize(
    ("data", "eof", "said", "failure"),
    [
        # Text with no newline before the reply: kept for the error (a review: it was lost,
        # and said as "no answer").
        (b"Welcome to host" + REPLY, False, b"Welcome", None),
        (b"\n\n\nbye\n", True, b"bye\n", None),
        # Blank lines, then the end: the session ended, it did not answer.
        (b"\n \n", True, b"", "(the session ended before it answered)"),
        (b"", False, b"", "(no answer within 0.2 s)"),
    ],
)
def test_what_was_read_is_kept_when_the_read_ends_early(
    data: bytes, eof: bool, said: bytes, failure: str | None
) -> None:
    async def go() -> tuple[bytes, str | None]:
        return await _first_line(_stream(data, eof=eof), 0.2, REPLY)

    head, why = asyncio.run(go())
    assert head.strip().startswith(said.strip())
    assert why == failure
